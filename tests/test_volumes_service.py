"""Volume sources inside the service and on the command line: an SCP and a watch folder configured
in ``[volumes]`` push ``volume`` messages through ingest onto the internal tap (topic
``volume.<id>``); their events reach the metrics endpoint; ``mmstream volumes load|send|scp``."""

import json
import re
import signal
import subprocess

import numpy as np
import pytest
from test_cli_service import RANDOM_PORTS, mmstream_exe
from test_graph import wait_for
from test_volumes_scp import storescu
from volume_makers import make_series, write_nifti1

from mmstream.cli import main
from mmstream.codec import decode
from mmstream.config import ServiceConfig, load_config
from mmstream.graph import Graph
from mmstream.service import Service
from mmstream.transport import make_socket

pytestmark = pytest.mark.timeout(120)
NO_WEB = {"web": {"enabled": False}} if "web" in ServiceConfig.model_fields else {}


def _config(tmp_path, **volumes):
    eps = {k: "tcp://127.0.0.1:*" for k in ("ingest", "metrics", "control")}
    return load_config(None, endpoints=eps, volumes=volumes, **NO_WEB)


def test_service_scp_and_watch_publish_volumes_on_the_tap(tmp_path):
    (tmp_path / "in").mkdir()
    cfg = _config(tmp_path, scp={"enabled": True, "port": 0, "store_dir": str(tmp_path / "store"), "max_associations": 3},
                  watch={"enabled": True, "folder": str(tmp_path / "in"), "poll_s": 0.05, "stable_polls": 1},
                  deid={"enabled": True, "mapping_db": str(tmp_path / "ids.sqlite")})  # fmt: skip
    with Service(cfg) as svc:
        tap = make_socket("sub", svc.graph.internal["frames"], bind=False, subscribe=("volume.",))
        events = make_socket("sub", svc.graph.endpoints["metrics"], bind=False, subscribe=("event.volumes",))
        try:
            truth = make_series(tmp_path / "series", n=3)
            assert wait_for(lambda: storescu(svc.volumes.scp.port, truth["paths"]).returncode == 0, 10, "storescu")
            msg = decode(tap.recv(timeout_ms=10000))
            assert msg.topic.startswith("volume.") and msg.header.series_uid == truth["series_uid"]
            np.testing.assert_allclose(msg.arrays["voxels"], truth["voxels"])
            assert msg.header.clinical.patient_id.startswith("P")
            write_nifti1(tmp_path / "in" / "w.nii", np.zeros((2, 3, 4), np.int16), np.diag([1.0, 1, 1, 1]))
            msg = decode(tap.recv(timeout_ms=10000))
            assert msg.header.source == "nifti:ras2lps" and msg.arrays["voxels"].shape == (4, 3, 2)
            ev = decode(events.recv(timeout_ms=10000)).header
            assert ev.node == "volumes" and ev.reason == "volume_assembled"
            st = svc.graph.status()
            assert st["nodes"]["ingest"]["counters"]["volumes_accepted"] == 2
            assert wait_for(lambda: svc.graph.status()["volumes"]["counters"]["volumes_sent"] == 2, 5, "counted")
            assert st["volumes"]["scp"]["port"] == svc.volumes.scp.port
            assert svc.volumes.scp.settings.max_associations == 3  # [volumes.scp] max_associations reaches the SCP
        finally:
            tap.close()
            events.close()


@pytest.mark.parametrize("volumes, fragment", [
    ({"scp": {"enabled": True, "host": "0.0.0.0"}}, "allowed_calling_aets"),
    ({"scp": {"ae_title": "A" * 17}}, "volumes.scp.ae_title"),
    ({"scp": {"ae_title": "BAD\\AE"}}, "volumes.scp.ae_title"),
    ({"scp": {"port": 70000}}, "volumes.scp.port"),
    ({"scp": {"allowed_calling_aets": ["OK", ""]}}, "volumes.scp.allowed_calling_aets"),
    ({"scp": {"max_object_mb": -1}}, "volumes.scp.max_object_mb"),
    ({"scp": {"max_associations": 0}}, "volumes.scp.max_associations"),
    ({"scp": {"max_associations": 65}}, "volumes.scp.max_associations"),
    ({"watch": {"stable_polls": 0}}, "volumes.watch.stable_polls"),
    ({"deid": {"prefix": "1; DROP TABLE"}}, "volumes.deid.prefix"),
    ({"max_voxels": 2**40}, "volumes.max_voxels"),
    ({"scp": {"unknown_key": 1}}, "volumes.scp.unknown_key"),
])  # fmt: skip
def test_volumes_config_refuses_bad_values(tmp_path, volumes, fragment):
    from mmstream.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(fragment)):
        _config(tmp_path, **volumes)


def test_a_missing_watch_folder_is_refused_not_created(tmp_path):
    """A share not mounted yet, or a typo: the service does not start watching a new local folder."""
    from mmstream.errors import ConfigError

    cfg = _config(tmp_path, watch={"enabled": True, "folder": str(tmp_path / "share" / "in")})
    with pytest.raises(ConfigError, match="is not an existing directory"):
        Service(cfg).start()
    assert not (tmp_path / "share").exists()


def test_volumes_config_accepts_an_open_scp_with_allow_list(tmp_path):
    cfg = _config(tmp_path, scp={"enabled": True, "host": "0.0.0.0", "allowed_calling_aets": ["SCANNER"]})
    assert cfg.volumes.scp.allowed_calling_aets == ("SCANNER",)


def test_cli_load_prints_geometry_and_fails_cleanly(tmp_path, capsys):
    sform = np.diag([-2.0, 2.0, 3.0, 1.0])
    write_nifti1(tmp_path / "a.nii", np.zeros((4, 5, 6), np.int16), sform)
    assert main(["volumes", "load", str(tmp_path / "a.nii")]) == 0
    geo = json.loads(capsys.readouterr().out)
    assert geo["shape_kji"] == [6, 5, 4] and geo["spacing_mm"] == [3.0, 2.0, 2.0]
    assert geo["direction_lps"] == [[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]]
    assert geo["source"] == "nifti:ras2lps" and "LPS" in geo["conversion"]
    (tmp_path / "bad.nrrd").write_bytes(b"NRRD0004\ngarbage\n\n")
    assert main(["volumes", "load", str(tmp_path / "bad.nrrd")]) == 1
    assert re.search(r"mmstream volumes load: error: .*bad\.nrrd: unreadable:", capsys.readouterr().err)
    (tmp_path / "notes.dcm").write_text("hello")  # a text file named .dcm; an empty one
    (tmp_path / "empty.dcm").write_bytes(b"")
    for name, reason in (("notes.dcm", "unknown_format"), ("empty.dcm", "empty_file")):
        assert main(["volumes", "load", str(tmp_path / name)]) == 1
        assert f"{name}: {reason}:" in capsys.readouterr().err
    make_series(tmp_path / "s", n=2)
    assert main(["volumes", "load", str(tmp_path / "s"), "--series-uid", "1.2.3"]) == 1
    assert "no DICOM series 1.2.3 (the folder holds 1: " in capsys.readouterr().err
    missing = tmp_path / "nonexist.nii"
    for cmd in ("load", "send"):  # the path once, first
        assert main(["volumes", cmd, str(missing)]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"mmstream volumes {cmd}: error: {missing}: not_found: ") and err.count(str(missing)) == 1, err


def test_cli_send_reaches_a_running_graph(tmp_path, capsys):
    graph = Graph(_config(tmp_path)).start()
    tap = make_socket("sub", graph.internal["frames"], bind=False, subscribe=("volume.",))
    try:
        truth = make_series(tmp_path / "s", n=2)
        assert main(["volumes", "send", str(tmp_path / "s"), "--endpoint", graph.endpoints["ingest"], "--volume-id", "mr-1"]) == 0
        assert json.loads(capsys.readouterr().out)["volume_id"] == "mr-1"
        msg = decode(tap.recv(timeout_ms=10000))
        assert msg.topic == "volume.mr-1"
        np.testing.assert_allclose(msg.arrays["voxels"], truth["voxels"])
    finally:
        tap.close()
        graph.stop()
    assert main(["volumes", "send", str(tmp_path / "s"), "--endpoint", "tcp://127.0.0.1:9", "--timeout-s", "0.5"]) == 1
    assert "no service took the volume" in capsys.readouterr().err


def test_cli_scp_runs_standalone_and_stops_on_sigterm(tmp_path):
    sink = make_socket("pull", "tcp://127.0.0.1:*", bind=True)
    cfg = tmp_path / "v.toml"
    cfg.write_text(RANDOM_PORTS.replace('ingest = "tcp://127.0.0.1:*"', f'ingest = "{sink.last_endpoint}"')
                   + f'\n[volumes.scp]\nenabled = true\nport = 0\nstore_dir = "{tmp_path / "store"}"\n')  # fmt: skip
    proc = subprocess.Popen([mmstream_exe(), "volumes", "scp", "--config", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        first = proc.stdout.readline()
        port = int(re.search(r"MMSTREAM@127\.0\.0\.1:(\d+)", first).group(1))
        truth = make_series(tmp_path / "s", n=2)
        assert storescu(port, truth["paths"]).returncode == 0
        msg = decode(sink.recv(timeout_ms=10000))
        np.testing.assert_allclose(msg.arrays["voxels"], truth["voxels"])
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        sink.close()
    assert proc.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["counters"]["instances_stored"] == 2


def test_benchmark_runs_and_writes_its_table(tmp_path):
    import sys
    from pathlib import Path

    tool = Path(__file__).resolve().parents[1] / "tools" / "bench_volumes.py"
    out = tmp_path / "b.json"
    r = subprocess.run([sys.executable, str(tool), "--slices", "3", "--size", "16", "--repeat", "1", "--json", str(out)],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())["results"]
    assert len(rows) == 4 and all(row["mmstream_ms"] > 0 and row["alternative_ms"] > 0 for row in rows)
    assert "ratio" in r.stdout


def test_outlet_holds_a_volume_until_the_service_comes_back(tmp_path):
    from mmstream.volumes import Outlet, load_volume

    probe = make_socket("pull", "tcp://127.0.0.1:*", bind=True)
    endpoint = probe.last_endpoint
    probe.close()  # the service is down
    make_series(tmp_path / "s", n=2)
    outlet = Outlet(endpoint).start()
    try:
        vid = outlet.volume(load_volume(tmp_path / "s"))
        assert wait_for(lambda: outlet.counters["send_retries"] >= 1, 10, "a retry while nobody listens")
        with make_socket("pull", endpoint, bind=True) as service:  # back on the same endpoint
            assert decode(service.recv(timeout_ms=10000)).header.volume_id == vid
        assert wait_for(lambda: outlet.counters["volumes_sent"] == 1, 5, "counted as sent")
    finally:
        outlet.stop()
