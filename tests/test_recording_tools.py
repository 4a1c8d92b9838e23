"""mmstream inspect / export / report on real session files written by the real SessionWriter."""

import base64
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import cv2
import h5py
import numpy as np
import pytest
from recorded_sessions import N_FRAMES as N
from recorded_sessions import session  # noqa: F401 (fixture)
from recorded_sessions import write_session

from mmstream.cli import main
from mmstream.errors import ReadError
from mmstream.recording import export, inspect, report
from mmstream.recording.reader import SessionReader
from mmstream.recording import layout as L
from mmstream.recording.layout import LAYOUT_VERSION

def _cli(capsys, *argv):
    rc = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return rc, out, err


# ---- inspect -------------------------------------------------------------------------------------


def test_inspect_summary_matches_the_recorded_rows(session):
    s = inspect.summarize(session)
    assert s["closed"] and s["session_id"] == "test-session" and s["layout_version"] == LAYOUT_VERSION
    assert s["events"] == {"warning:seq_not_increasing": 1}
    with SessionReader(session) as r:
        for sid in ("probe0", "probe1"):
            st, idx, table = s["streams"][sid], r.stream(sid).index(), r.stream(sid).metrics_table()
            assert st["frames"] == N and st["metrics_rows"] == N
            assert (st["first_seq"], st["last_seq"]) == (0, N)  # seq 10 skipped
            assert st["dropped_frames"] == 1
            assert st["clock"] == "t_device_s"
            assert st["duration_s"] == pytest.approx(idx["t_device_s"][-1] - idx["t_device_s"][0])
            assert st["frame_rate_fps"] == pytest.approx((N - 1) / st["duration_s"])
            assert st["max_interval_ms"] == pytest.approx(2 * 1000 / 20.0)  # the gap: two frame periods
            assert st["spacing_mm"] == [[0.5, 0.4]]
            for col in ("echo_mean", "thickness_mm", "csa_area_mm2"):
                v = table[col][np.isfinite(table[col])]
                m = st["metrics"][col]
                assert m["n"] == v.size > 0
                assert m["mean"] == pytest.approx(v.mean()) and m["std"] == pytest.approx(v.std(ddof=1))
                assert (m["min"], m["max"]) == (pytest.approx(v.min()), pytest.approx(v.max()))
            assert st["metrics"]["thickness_mm"]["unit"] == "mm"


def test_inspect_cli_text_and_json(session, capsys):
    rc, out, _ = _cli(capsys, "inspect", session)
    assert rc == 0
    assert "stream probe0: 30 frames 96x128  seq 0..30" in out
    assert "dropped frames (seq gaps) 1" in out and "closed cleanly" in out
    assert re.search(r"thickness_mm\s+mm\s+30", out)
    assert "P-TEST" not in out  # the patient pseudonym is never printed
    rc, out, _ = _cli(capsys, "inspect", session, "--json")
    assert rc == 0 and json.loads(out)["streams"]["probe1"]["frames"] == N


def test_inspect_follow_reads_a_file_while_it_is_written(tmp_path):
    """A writer process appends and flushes; `inspect --follow` in another process sees each flush
    and stops when the writer closes the file."""
    path = tmp_path / "live.h5"
    writer = subprocess.Popen([sys.executable, "-c", _LIVE_WRITER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=os.path.dirname(__file__))  # fmt: skip
    try:
        assert writer.stdout.readline().strip() == "ready"
        follow = subprocess.Popen([sys.executable, "-m", "mmstream.cli", "inspect", str(path), "--follow", "--json",
                                   "--interval-s", "0.05"], stdout=subprocess.PIPE, text=True)  # fmt: skip
        seen = []
        for batch in range(3):
            writer.stdin.write("more\n")
            writer.stdin.flush()
            assert writer.stdout.readline().strip() == f"flushed {5 * (batch + 2)}"
            while True:  # follow prints only on change: read until it shows this flush
                s = json.loads(follow.stdout.readline())
                seen.append(s["streams"]["probe0"]["frames"])
                if seen[-1] == 5 * (batch + 2):
                    break
        writer.stdin.write("close\n")
        writer.stdin.flush()
        assert follow.wait(timeout=30) == 0
        last = json.loads(follow.stdout.read().splitlines()[-1])
        assert last["closed"] and last["streams"]["probe0"]["frames"] == 20
        assert seen == sorted(seen) and {10, 15, 20} <= set(seen)
    finally:
        writer.kill()
        writer.wait()


def _command(writer, line: str) -> str:
    writer.stdin.write(line + "\n")
    writer.stdin.flush()
    return writer.stdout.readline().strip()


def _live_writer(path):
    writer = subprocess.Popen([sys.executable, "-c", _LIVE_WRITER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=os.path.dirname(__file__))  # fmt: skip
    assert writer.stdout.readline().strip() == "ready"
    return writer


def test_a_flush_between_the_counts_of_one_update_is_not_reported_as_damage(tmp_path):
    """The writer commits right after the reader's refresh (`--follow` said "file damaged" in 165
    of 783 updates of a healthy live file): the readable and the committed counts of one update
    come from one snapshot of the commit record; the next update shows the new rows."""
    writer = _live_writer(tmp_path / "live.h5")
    try:
        with inspect.open_session(tmp_path / "live.h5") as r:
            s = inspect.Summarizer(r)
            refresh = r.refresh

            def refresh_then_the_writer_commits():
                refresh()
                assert _command(writer, "more") == "flushed 10" and _command(writer, "volume") == "volumes 1"

            r.refresh = refresh_then_the_writer_commits
            first = s.update()
            assert inspect.damage(first) == [] and first["streams"]["probe0"]["frames"] == 5 and first["volumes"] == []
            assert first["streams"]["probe0"]["frames_committed"] == 5 and first["volumes_committed"] == 0
            r.refresh = refresh
            second = s.update()
            assert inspect.damage(second) == [] and second["streams"]["probe0"]["frames"] == 10 and len(second["volumes"]) == 1
    finally:
        writer.kill()
        writer.wait()


def test_inspect_follow_reports_new_volumes(tmp_path):
    """Frames paused, volumes committed: each shows in an update (they were ignored, and
    --idle-timeout-s ended following while volumes kept coming)."""
    writer = _live_writer(tmp_path / "live.h5")
    seen = []

    def emit(summary):
        seen.append(len(summary["volumes"]))
        if seen[-1] < 3:
            assert _command(writer, "volume") == f"volumes {seen[-1] + 1}"
        elif not summary["closed"]:
            writer.stdin.write("close\n")
            writer.stdin.flush()

    try:
        last = inspect.follow(tmp_path / "live.h5", emit, interval_s=0.05, idle_timeout_s=10)
    finally:
        writer.kill()
        writer.wait()
    assert seen[:4] == [0, 1, 2, 3] and last["closed"] and len(last["volumes"]) == 3
    assert "volume v2 v1: CT 2x4x4 (k, j, i) int16  spacing 1 x 1 x 1 mm  64 bytes" in inspect.format_summary(last)


_LIVE_WRITER = """
import sys
from pathlib import Path
import numpy as np
from recorded_sessions import write_session, SPEC, frame_header
from mmstream.volumes.model import LoadedVolume
from mmstream_drivers.sim import SimProbe
w = write_session(Path(sys.argv[1]), 5, close=False)
probe = SimProbe(SPEC, fps=20.0, seed=3)
print("ready", flush=True)
seq, n_volumes = 5, 0
for line in sys.stdin:
    if line.strip() == "close":
        w.close()
        break
    if line.strip() == "volume":  # frames paused, a volume (2 x 4 x 4 int16, 64 bytes) committed
        v = LoadedVolume(np.full((2, 4, 4), n_volumes, np.int16), (1.0, 1.0, 1.0), (0, 0, 0), np.eye(3), modality="CT")
        w.add_volume(*v.to_message(f"v{n_volumes}"))
        n_volumes += 1
        w.flush()
        print(f"volumes {n_volumes}", flush=True)
        continue
    for _ in range(5):
        src = probe.frame(seq).to_source()
        w.add_frame(frame_header("probe0", src, seq, 100.0 + seq / 20.0), src.image)
        seq += 1
    w.flush()
    print(f"flushed {seq}", flush=True)
"""


# ---- export --------------------------------------------------------------------------------------


def test_export_metrics_csv_and_parquet_hold_every_row(session, tmp_path, capsys):
    import pyarrow.parquet as pq

    rc, out, _ = _cli(capsys, "export", session, "--out", tmp_path / "x", "--metrics-format", "csv,parquet")
    assert rc == 0 and "probe0_metrics.parquet" in out
    with SessionReader(session) as r:
        table = r.stream("probe0").metrics_table()
    with open(tmp_path / "x" / "probe0_metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == N and "json_offset" not in rows[0]
    assert [int(r["seq"]) for r in rows] == table["seq"].tolist()
    np.testing.assert_allclose([float(r["thickness_mm"]) for r in rows], table["thickness_mm"])
    assert {r["echo_region"] for r in rows} == {v.decode() for v in table["echo_region"]}
    pt = pq.read_table(tmp_path / "x" / "probe0_metrics.parquet")
    assert pt.num_rows == N
    np.testing.assert_allclose(pt.column("csa_area_mm2").to_numpy(), table["csa_area_mm2"])
    assert pt.schema.field("csa_area_mm2").metadata == {b"unit": b"mm^2"}
    assert pt.column("q_frozen").type == "bool"


def test_export_file_names_never_collide(tmp_path):
    path = tmp_path / "two.h5"
    write_session(path, 3, streams=("probe:1", "probe_1"))
    export.export_session(path, tmp_path / "x", metrics_formats=("csv",), frames="png")
    names = sorted(p.name for p in (tmp_path / "x").iterdir())
    assert names == ["probe%3A1_frames", "probe%3A1_metrics.csv", "probe_1_frames", "probe_1_metrics.csv"]
    assert all(len(list((tmp_path / "x" / d).glob("*.png"))) == 3 for d in ("probe%3A1_frames", "probe_1_frames"))


def test_export_unknown_spacing_is_null_not_a_number(tmp_path):
    import pyarrow.parquet as pq

    path = tmp_path / "nospacing.h5"
    write_session(path, 4, spacing=False)
    export.export_session(path, tmp_path / "x", metrics_formats=("csv", "parquet"))
    col = pq.read_table(tmp_path / "x" / "probe0_metrics.parquet").column("thickness_mm")
    assert col.null_count == 4
    with open(tmp_path / "x" / "probe0_metrics.csv", newline="") as fh:
        assert {r["thickness_mm"] for r in csv.DictReader(fh)} == {""}


def test_export_frames_png_lossless_and_video_readable(session, tmp_path):
    ticks = []

    class Bar:
        def update(self, n):
            ticks.append(n)

        def close(self):
            ticks.append("closed")

    res = export.export_session(session, tmp_path / "p", metrics_formats=(), frames="png", progress=lambda total: (ticks.append(total), Bar())[1])
    assert res.frames == {"probe0": N, "probe1": N}
    assert ticks[0] == 2 * N and sum(t for t in ticks[1:-1]) == 2 * N and ticks[-1] == "closed"
    with SessionReader(session) as r:
        frames, seqs = r.stream("probe1").frames(), r.stream("probe1").index()["seq"]
    files = sorted((tmp_path / "p" / "probe1_frames").iterdir())
    assert [int(f.stem) for f in files] == seqs.tolist()
    for f, img in zip(files, frames):
        np.testing.assert_array_equal(cv2.imread(str(f), cv2.IMREAD_UNCHANGED), img)
    export.export_session(session, tmp_path / "v", metrics_formats=(), frames="video")
    cap = cv2.VideoCapture(str(tmp_path / "v" / "probe1.avi"))
    got = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        got.append(img[..., 0])
    assert len(got) == N and got[0].shape == frames[0].shape
    assert np.mean([np.abs(a.astype(int) - b).mean() for a, b in zip(got, frames)]) < 4.0  # MJPG: lossy, close
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx((N - 1) / 1.5, rel=0.01)


def test_export_bad_arguments_and_unwritable_target(session, tmp_path, capsys):
    rc, _, err = _cli(capsys, "export", session, "--out", tmp_path, "--metrics-format", "csv,xlsx")
    assert rc == 1 and "unknown format xlsx" in err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, _, err = _cli(capsys, "export", session, "--out", blocker / "sub")
    assert rc == 1 and "unwritable" in err


def test_export_to_a_full_disk_is_a_clear_error(session, tmp_path):
    """Writes fail (EFBIG under a 4 kB file size limit, as ENOSPC would): exit 1, reason unwritable."""
    import resource

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # stays ignored across exec: write() fails instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    for fmt in ("csv", "parquet"):
        out = subprocess.run([sys.executable, "-m", "mmstream.cli", "export", str(session), "--out", str(tmp_path / fmt),
                              "--metrics-format", fmt], capture_output=True, text=True, timeout=60, preexec_fn=limit)  # fmt: skip
        assert out.returncode == 1, out.stderr
        assert f"{session}: unwritable: " in out.stderr and out.stderr.count("\n") == 1, out.stderr


# ---- report --------------------------------------------------------------------------------------


def test_report_is_one_self_contained_page(session, tmp_path, capsys):
    out = tmp_path / "r.html"
    rc, printed, _ = _cli(capsys, "report", session, "-o", out, "--thumbnails", "5")
    assert rc == 0 and printed.strip() == str(out)
    page = out.read_text()
    for title in ("Echogenicity", "Cross-sectional area", "Thickness"):
        assert page.count(title) == 2  # one plot panel per stream (named in its alt text)
    assert page.count("<td>thickness</td><td>mm</td><td>30</td>") == 2
    images = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(images) == 2 * (1 + 5)  # a plot and 5 thumbnails per stream
    for b64 in images:
        assert cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_UNCHANGED) is not None
    assert "seq 0 " in page and "seq 30 " in page  # first and last frame among the thumbnails
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "P-TEST" not in page  # no patient pseudonym in the report
    assert "tibialis_anterior" in page and "2 frame(s) missing" in page


def test_report_renders_in_headless_chromium(session, tmp_path):
    """Debian's chromium (tools/test.sh installs it) shows the page with its embedded images."""
    page, shot = tmp_path / "r.html", tmp_path / "r.png"
    report.build_report(session, page)
    subprocess.run([shutil.which("chromium") or "chromium", "--headless", "--no-sandbox", "--disable-gpu",
                    "--hide-scrollbars", "--window-size=1200,1800", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=90, check=True)  # fmt: skip
    img = cv2.imread(str(shot)).astype(int)
    assert np.abs(img[20, 20] - (0x57, 0x35, 0x1D)).max() <= 3  # the header band (#1d3557, BGR)

    def near(bgr):
        return int((np.abs(img - bgr).max(axis=2) <= 12).sum())

    blue = (img[..., 0] - img[..., 2] > 60) & (img[..., 0] > 100)
    assert blue.sum() > 1000  # plot lines and bands (#08519c, #9ecae1): the embedded plot PNG is drawn
    assert near((0x14, 0x0F, 0x0B)) > 1000  # thumbnail captions (#0b0f14) below drawn thumbnails


def test_binned_keeps_extremes_and_memory_is_bounded():
    b = report.Binned(0.0, 100.0, n_bins=10)
    t = np.linspace(0, 100, 100_001)
    v = np.zeros_like(t)
    v[5000] = 9.0  # a one-sample artefact survives the reduction as the bin's max
    b.add(t, v)
    b.add(np.array([np.nan, 3.0]), np.array([1.0, np.nan]))  # non-finite samples ignored
    tc, mean, lo, hi = b.result()
    assert tc.size == 10 and hi[0] == 9.0 and lo.max() == 0.0 and mean[0] == pytest.approx(9.0 / 10_001, rel=0.01)


# ---- bad input -----------------------------------------------------------------------------------


def _truncated(src, dst):
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 3])
    return dst


def _wrong_version(src, dst):
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        f["session"].attrs["layout_version"] = 99
    return dst


def _no_session(src, dst):
    with h5py.File(dst, "w") as f:
        f["x"] = np.arange(3)
    return dst


def _text(src, dst):
    dst.write_text("seq,t\n1,2\n")
    return dst


def _no_events(src, dst):
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        del f["events"]
    return dst


@pytest.mark.parametrize(
    "make, reason",
    [(_text, "unreadable"), (_truncated, "truncated"), (_wrong_version, "layout_version"), (_no_session, "not_a_session"),
     (_no_events, "damaged")],
)
@pytest.mark.parametrize("command", ["inspect", "export", "report"])
def test_bad_files_give_one_clear_error_line(session, tmp_path, capsys, make, reason, command):
    bad = make(session, tmp_path / "bad.h5")
    extra = {"inspect": [], "export": ["--out", tmp_path / "o"], "report": ["-o", tmp_path / "r.html"]}[command]
    rc, out, err = _cli(capsys, command, bad, *extra)
    assert rc == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"mmstream {command}: error: {bad}: {reason}: ")
    assert not (tmp_path / "r.html").exists()


def test_missing_file_and_directory(tmp_path, capsys):
    rc, _, err = _cli(capsys, "inspect", tmp_path / "nope.h5")
    assert rc == 1 and ": not_found: " in err
    rc, _, err = _cli(capsys, "report", tmp_path)
    assert rc == 1 and "is a directory" in err


def test_file_of_a_killed_writer_shows_what_was_flushed(tmp_path, capsys):
    path = tmp_path / "killed.h5"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(__file__))  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "flushed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        proc.kill()
    s = inspect.summarize(path)
    assert not s["closed"] and s["stop_wall"] is None
    assert s["streams"]["probe0"]["frames"] == 12 and s["streams"]["probe0"]["metrics_rows"] == 12
    rc, out, _ = _cli(capsys, "report", path, "-o", tmp_path / "k.html")
    assert rc == 0 and "was not closed cleanly" in (tmp_path / "k.html").read_text()
    rc, out, _ = _cli(capsys, "inspect", path)
    assert rc == 0 and "not closed (writer stopped)" in out
    res = export.export_session(path, tmp_path / "x", metrics_formats=("csv",), frames="png")
    assert res.rows == {"probe0": 12} and res.frames == {"probe0": 12}


_KILLED_WRITER = """
import sys, time
from pathlib import Path
from recorded_sessions import write_session, SPEC, frame_header
from mmstream_drivers.sim import SimProbe
w = write_session(Path(sys.argv[1]), 12, close=False)
probe = SimProbe(SPEC, fps=20.0, seed=3)
for seq in range(12, 15):  # written but never flushed: not committed, must not show
    src = probe.frame(seq).to_source()
    w.add_frame(frame_header("probe0", src, seq, 100.0 + seq / 20.0), src.image)
print("flushed", flush=True)
time.sleep(60)
"""


def _junk_index_chunk(path, k: int) -> None:
    with h5py.File(path, "r") as f:
        off = f["streams/probe0/index"].id.get_chunk_info(k).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(off)
        fh.write(os.urandom(512))


def test_damaged_chunks_are_a_read_error_or_counted_as_unreadable(session, tmp_path):
    """A closed file whose index chunk holding the last rows was overwritten with junk: inspect says
    the committed frames cannot be read (the file's rows are checked whatever its summary says);
    junk in an earlier chunk, met while reading: a ReadError ``damaged``."""
    bad = tmp_path / "damaged.h5"
    shutil.copy(session, bad)
    _junk_index_chunk(bad, 0)
    s = inspect.summarize(bad)
    assert s["closed"] and (s["streams"]["probe0"]["frames"], s["streams"]["probe0"]["frames_committed"]) == (0, N)
    assert f"{N} frames committed, 0 readable (file damaged" in inspect.format_summary(s)
    long = tmp_path / "long.h5"
    write_session(long, n_frames=L.TABLE_CHUNK_ROWS + 4)  # two index chunks
    _junk_index_chunk(long, 0)
    with pytest.raises(ReadError) as ei:
        inspect.summarize(long)
    assert ei.value.reason == "damaged"


def test_report_of_a_file_with_damaged_headers_is_a_read_error(session, tmp_path, capsys):
    bad = tmp_path / "bad.h5"
    shutil.copy(session, bad)
    with h5py.File(bad, "r+") as f:
        heap = f["streams/probe1/json"]
        heap[:] = np.frombuffer(b"\xff" * len(heap), np.uint8)  # not UTF-8
    rc, _, err = _cli(capsys, "report", bad, "-o", tmp_path / "r.html")
    assert rc == 1 and f"{bad}: damaged: " in err and not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("attr, value", [("streams_json", "{not json"), ("config_json", "{not json"), ("config_json", 7)])
def test_session_attributes_that_are_not_json_are_damage(session, tmp_path, capsys, attr, value):
    """inspect and report need the decoded attributes: one 'damaged' line naming the attribute;
    export and replay do not read them and still give every row and frame."""
    bad = tmp_path / "bad.h5"
    shutil.copy(session, bad)
    with h5py.File(bad, "r+") as f:
        f["session"].attrs[attr] = value
    for command, extra in (("inspect", []), ("report", ["-o", tmp_path / "r.html"])):
        rc, out, err = _cli(capsys, command, bad, *extra)
        assert rc == 1 and out == "" and err.count("\n") == 1
        assert err.startswith(f"mmstream {command}: error: {bad}: damaged: /session attribute {attr} is not JSON text: ")
    assert not (tmp_path / "r.html").exists()
    rc, _, err = _cli(capsys, "export", bad, "--out", tmp_path / "o")
    with open(tmp_path / "o" / "probe0_metrics.csv", newline="") as fh:
        assert rc == 0 and err == "" and len(list(csv.DictReader(fh))) == N
    from mmstream_drivers.replay import Replayer

    with Replayer(bad, ["probe0"], mode="fast") as rp:
        assert len(list(rp)) == N


def test_a_session_without_frames(tmp_path, capsys):
    path = tmp_path / "empty.h5"
    write_session(path, 0)
    rc, out, _ = _cli(capsys, "inspect", path)
    assert rc == 0 and "stream probe0: 0 frames 96x128  seq -" in out and "metric " not in out
    res = export.export_session(path, tmp_path / "x", metrics_formats=("csv",), frames="video")
    assert res.frames == {"probe0": 0} and [f.name for f in res.files] == ["probe0_metrics.csv"]
    assert (tmp_path / "x" / "probe0_metrics.csv").read_text().startswith("seq,t_device_s,")
    report.build_report(path, tmp_path / "r.html")
    assert "Stream probe0" in (tmp_path / "r.html").read_text()


_LAYOUT_3_ADDED = ["thickness_tracked", *(f"thickness_{line}_at_{a}" for line in ("superficial", "deep") for a in "rc")]
_LAYOUT_4_ADDED = ["active_fraction", "q_featureless"]


@pytest.mark.parametrize(("version", "missing"), [(2, _LAYOUT_3_ADDED + _LAYOUT_4_ADDED), (3, _LAYOUT_4_ADDED)])
def test_an_older_layout_reads_exports_and_reports_without_the_columns_added_since(tmp_path, version, missing):
    """Layouts 3 and 4 only added metrics columns (3: thickness_tracked and the thickness click
    points; 4: active_fraction and q_featureless): an older file, which lacks them, still
    inspects, exports and reports."""
    path = tmp_path / f"v{version}.h5"
    write_session(path, n_frames=6)
    with h5py.File(path, "r+") as f:
        f["session"].attrs["layout_version"] = version
        g = f["streams/probe0/metrics"]
        old, units = g["table"][...], json.loads(g["table"].attrs["units"])
        assert set(missing) <= set(old.dtype.names)
        keep = [n for n in old.dtype.names if n not in missing]
        rows = np.zeros(len(old), np.dtype([(n, old.dtype[n]) for n in keep]))
        for n in keep:
            rows[n] = old[n]
        del g["table"]
        g.create_dataset("table", data=rows, maxshape=(None,), chunks=(256,))
        g["table"].attrs["units"] = json.dumps({k: v for k, v in units.items() if k not in missing})
    summary = inspect.summarize(path)
    assert summary["layout_version"] == version and summary["streams"]["probe0"]["quality_flags"]["featureless"] == 0
    with SessionReader(path) as r:
        table = r.stream("probe0").metrics_table()
    assert len(table) == 6 and not set(missing) & set(table.dtype.names)
    export.export_session(path, tmp_path / "x", metrics_formats=("csv",))
    with open(tmp_path / "x" / "probe0_metrics.csv", newline="") as fh:
        header = next(csv.reader(fh))
    assert "thickness_mm" in header and not set(missing) & set(header)
    assert report.build_report(path, tmp_path / "r.html").stat().st_size > 0


def test_sizes_and_counts_read_as_a_person_writes_them():
    """999,999 bytes is 1.00 MB (it printed '1000.0 kB'); one lost volume is '1 volume' (it printed
    '1 volumes')."""
    assert [inspect._size(n) for n in (512, 1500, 99_949, 999_999, 12_345_678)] == [
        "512 bytes", "1.50 kB", "99.9 kB", "1.00 MB", "12.3 MB"]  # fmt: skip
    lost = {"streams": {"p": {"frames_committed": 1, "frames": 0, "metrics_committed": 2, "metrics_rows": 0}},
            "volumes_committed": 1, "volumes": [], "events_committed": 2, "events": {}}  # fmt: skip
    assert inspect.damage(lost) == [
        "stream p: 1 frame committed, 0 readable (file damaged: the rest is not in the file)",
        "stream p: 2 metrics rows committed, 0 readable (file damaged: the rest is not in the file)",
        "1 volume committed, 0 readable (file damaged)", "2 events committed, 0 readable (file damaged)"]  # fmt: skip
