"""`mmstream sources list|probe`: the drivers as a user checks them before serving."""

import json
import re

import pytest

from mmstream.cli import main
from mmstream.cli_sources import option_value
from source_helpers import us_region, write_cine
from test_sources_files import _corrupt_rle_cine


def test_list_names_every_frame_source(capsys):
    assert main(["sources", "list"]) == 0
    assert {"video", "igtl", "dicom", "mha", "sim"} <= set(capsys.readouterr().out.split())


def test_probe_prints_frames_then_counters(tmp_path, capsys):
    path = tmp_path / "cine.dcm"
    write_cine(path, n=4, regions=[us_region(5, 10, 35, 40, 0.02)])
    assert main(["sources", "probe", "dicom", "-o", f"path={path}", "-o", "realtime=false", "--frames", "2"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["frame"] for x in lines[:2]] == [0, 1] and lines[2] == {"frames": 2, "counters": {"frames": 2}, "errors": {}}
    assert lines[0]["shape"] == [30, 30] and lines[0]["spacing_mm"] == pytest.approx([0.2, 0.2])
    assert lines[0]["spacing_source"] == "dicom_us_regions" and lines[1]["t_device_s"] == pytest.approx(0.025)


def test_probe_of_every_kind_of_driver_ends_cleanly(tmp_path):
    """A driver without close() (sim), one that must stop from another thread (replay, realtime),
    and one holding a device (video: OpenCV aborted the process when its capture was still open at
    exit): each probe prints its frames and exits 0, promptly, in a process of its own."""
    import subprocess
    import sys

    from recorded_sessions import write_session
    from test_sources_video import write_video

    write_session(tmp_path / "s.h5", n_frames=50)
    write_video(tmp_path / "v.avi", n=6)
    for argv in (["sim"], ["replay", "-o", f"path={tmp_path / 's.h5'}"], ["video", "-o", f"url={tmp_path / 'v.avi'}"]):
        proc = subprocess.run([sys.executable, "-m", "mmstream.cli", "sources", "probe", *argv, "--frames", "1"],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert proc.returncode == 0 and proc.stderr == "", (argv, proc.stderr)
        frame, summary = map(json.loads, proc.stdout.splitlines())
        assert frame["frame"] == 0 and summary["frames"] == 1


@pytest.mark.parametrize(("argv", "reason"), [
    (["mha", "-o", "path=/nonexistent.mha"], "not_found"),
    (["video", "-o", "url=/nonexistent.avi", "-o", "live=true", "--timeout-s", "0.5"], "no_frames"),
    (["dicom", "-o", "pth=/x.dcm"], "config"),  # misspelt option
    (["dicom", "-o", "path=/x.dcm", "-o", "realtime=maybe"], "config"),  # not a boolean
    (["dicom", "-o", "path=/x.dcm", "-o", 'spacing_row_mm="0.1"'], "config"),  # text for a number (or None)
    (["nosuchdriver"], "config"),
    (["video", "-o", "device"], "invalid"),  # not key=value
])  # fmt: skip
def test_probe_failures_are_one_line_and_status_1(argv, reason, capsys):
    assert main(["sources", "probe", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"mmstream sources: error: {reason}:") and err.count("\n") == 1


def test_option_values_read_as_toml():
    assert option_value("3") == 3 and option_value("0.5") == 0.5 and option_value("true") is True
    assert option_value('"a b"') == "a b" and option_value("/data/x.dcm") == "/data/x.dcm"


def test_a_driver_that_cannot_be_imported_is_a_config_error(monkeypatch):
    """A driver installed but broken (a dependency missing) is refused by name, not an ImportError
    out of config validate or serve."""
    import mmstream_drivers
    from mmstream.errors import ConfigError

    def broken(name):
        raise ImportError("No module named 'cv2'")

    monkeypatch.setattr(mmstream_drivers, "load", broken)
    with pytest.raises(ConfigError, match="driver 'video' cannot be loaded: ImportError: No module named 'cv2'"):
        mmstream_drivers.check_source("video", "grabber", {})


def test_plain_status_shows_each_sources_health(tmp_path, capsys):
    """An OpenIGTLink source whose server refuses it was visible only with --json; the text output
    now has a line per source: frames and error counters (and a failed source's reason)."""
    import socket

    from mmstream.config import load_config
    from mmstream.service import Service
    from source_helpers import wait_for
    from test_graph import RANDOM_TCP

    closed = socket.socket()  # bound, not listening: connections to it are refused
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    sources = [{"driver": "igtl", "stream_id": "plus", "options": {"port": port, "backoff_initial_s": 0.01,
                                                                    "backoff_max_s": 0.05}},
               {"driver": "dicom", "stream_id": "cine", "options": {"path": str(tmp_path / "rle.dcm")}},
               {"driver": "mha", "stream_id": "gone", "options": {"path": str(tmp_path / "gone.mha")}}]  # fmt: skip
    _corrupt_rle_cine(tmp_path / "rle.dcm")  # fails at its frame 2
    try:
        with Service(load_config(None, endpoints=RANDOM_TCP, web={"enabled": False}, sources=sources)) as svc:
            wait_for(lambda: svc.graph.status()["sources"].get("plus", {}).get("errors", {}).get("connect_failed", 0) >= 2
                     and {"gone", "cine"} <= set(svc.source_errors), what="failed connects and failed sources")  # fmt: skip
            assert main(["status", "--control", svc.graph.endpoints["control"]]) == 0
    finally:
        closed.close()
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("source ")]
    assert len(lines) == 3, lines
    assert re.fullmatch(r"source cine: FAILED: ReadError: .*cannot decode frame 2.* \(2 frames, errors: corrupt=1\)",
                        lines[0]), lines[0]  # fmt: skip
    assert re.fullmatch(r"source gone: FAILED: ReadError: <file \w+>: no such file", lines[1]), lines[1]
    assert re.fullmatch(r"source plus: 0 frames, errors: connect_failed=\d+", lines[2]), lines[2]
