"""Recording faults: disk full (RLIMIT_FSIZE), permission denied (as user nobody), missing
directory: a clear error (event, status, reply), the live path keeps running, and everything
flushed before the fault stays readable."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from mmstream.recording.reader import SessionReader

CHILD = Path(__file__).with_name("recording_fault_child.py")


def run_child(*args, timeout=180):
    proc = subprocess.run([sys.executable, str(CHILD), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_disk_full_stops_recording_cleanly_and_keeps_live_path_and_data(tmp_path):
    limit = 24 * 1024 * 1024  # room for a few flushes of 512x512 frames beyond the 16 MB reserve
    out = run_child("disk_full", tmp_path, limit)
    st = out["status"]
    assert st["state"] == "failed" and st["last_error"]["reason"] == "disk_full"
    assert "room left" in st["last_error"]["message"]
    assert out["recorder_counters"].get("error_disk_full") == 1
    assert out["live_metrics_after_failure"] >= 10  # the service kept analysing and publishing
    (path,) = out["files"]
    committed = out["committed_before_failure"]
    with SessionReader(path) as r:  # foreseen: closed cleanly, the unflushed frames counted as lost
        summ = r.summary()
        assert summ["closed"] and summ["lost_frames"] > 0
        s = r.stream("p1")
        assert s.n_frames == summ["n_frames"] >= committed["frames"]["p1"] > 0
        assert s.n_metrics >= committed["metrics"]["p1"]
        assert [h.seq for h in s.frame_headers()] == s.index()["seq"].tolist()
        assert s.frames().std() > 0  # real sim pixels, not fill values
    assert subprocess.run(["h5dump", "-H", path], capture_output=True).returncode == 0
    assert Path(path).stat().st_size <= limit


@pytest.mark.parametrize("mode", ["write_error", "close_error"])
@pytest.mark.parametrize("extra_bytes", [0, 9970, 21934, 27916])
def test_write_error_mid_flush_fences_the_file_and_keeps_what_was_committed(tmp_path, mode, extra_bytes):
    """The limit decides which write of the flush fails (pixels, rows, heap, arrays), in a timer
    flush or in the final flush of stop_recording. Whatever it is, the process lives on and the
    file holds exactly the rows committed before, each complete: a table whose new extent reached
    the disk without its rows (read as zero rows: seq 0, no header) is not counted; with HDF5 2.0
    that happened for most limits before the summaries became the commit record."""
    from mmstream.errors import ReadError
    from mmstream.recording.inspect import summarize

    limit = 2 * 1024 * 1024 + extra_bytes
    out = run_child(mode, tmp_path, limit)  # returncode 0: no crash at the failure or at exit
    st = out["status"]
    assert st["state"] == "failed" and st["last_error"]["reason"] == "disk_full"  # EFBIG
    assert ["error", "recording_disk_full"] in out["events"]
    (path,) = out["files"]
    committed = out["committed_before_failure"]
    assert committed["frames"]["a"] > 0
    try:  # HDF5 wrote the failed flush's metadata: the file may claim more bytes than it has
        SessionReader(path).close()
    except ReadError as exc:
        assert exc.reason == "truncated" and "h5clear -s --increment=0" in str(exc)
    if subprocess.run(["h5dump", "-H", path], capture_output=True).returncode != 0:
        subprocess.run(["h5clear", "-s", "--increment=0", path], check=True, capture_output=True)  # writer died
    from recording_crash_child import SHAPES, pixels

    with SessionReader(path) as r:
        assert not r.summary()["closed"] and len(r.events()) == committed["events"]
        for sid in SHAPES:
            s = r.stream(sid)
            assert s.n_frames == committed["frames"][sid] and s.n_metrics == committed["metrics"][sid]
            assert [h.seq for h in s.frame_headers()] == list(range(s.n_frames))
            for rows, frames in s.iter_frames():
                for q, img in zip(rows["seq"], frames):
                    assert np.array_equal(img, pixels(sid, int(q)))
    assert summarize(path)["events"] == {"info:tick": committed["events"]}  # no zero rows counted
    assert subprocess.run(["h5dump", "-H", path], capture_output=True).returncode == 0


def test_a_file_part_that_cannot_be_written_ends_the_recording_and_the_process_lives_on(tmp_path):
    """Creating a part fails on a write (file size limits below its size, room check defeated):
    each recording ends once with disk_full and leaves no file, a recording afterwards is written
    whole, and the process exits cleanly. Written by HDF5, a failed write left dataset handles HDF5
    could not free, and the process died of SIGSEGV when HDF5 freed them (at exit)."""
    out = run_child("create_error", tmp_path, timeout=60)  # returncode 0: no crash at exit
    for failed in out["failed"]:
        st = failed["status"]
        assert st["state"] == "failed" and st["last_error"]["reason"] == "disk_full" and st["files"] == []
        assert ".h5'" in st["last_error"]["message"]  # names the file (a failed write names none)
        assert [e for e in failed["events"] if e[0] == "error"] == [["error", "recording_disk_full"]]
    st = out["after"]["status"]
    assert st["state"] == "idle" and st["last_error"] is None and st["frames"] == 20
    (path,) = st["files"]
    assert [p.name for p in tmp_path.iterdir()] == [Path(path).name]  # the failed parts were removed
    with SessionReader(path) as r:
        assert r.summary()["closed"] and r.stream("a").n_frames == r.stream("b").n_frames == 10


def test_no_room_for_the_final_flush_closes_the_file_cleanly_and_counts_the_loss(tmp_path, monkeypatch):
    """Foreseen disk full at stop_recording: the recording ends ``failed`` with the file closed
    cleanly and the unflushed frames counted as lost; later messages are not errors."""
    import time

    import mmstream.recording.writer as writer
    from mmstream.config import RecorderSection
    from mmstream.recording.recorder import Recorder
    from recording_crash_child import messages

    rec = Recorder(RecorderSection(directory=tmp_path, discover_s=5.0), "full", expected_streams=("a", "b"))
    rec.start_recording()
    for seq in range(30):
        for port, msg in messages(seq):
            rec.process(port, msg)
        if seq == 19:
            rec.tick(time.monotonic() + 3600)
    monkeypatch.setattr(writer, "room_bytes", lambda path: 1000)
    st = rec.stop_recording()
    assert st["state"] == "failed" and st["last_error"]["reason"] == "disk_full" and st["frames"] == 40
    assert [o.header.reason for o in rec.process(*next(messages(30)))] == ["recording_disk_full"]  # queued at stop
    assert rec.process(*next(messages(31))) == [] and rec.recording_status()["state"] == "failed"
    with SessionReader(st["files"][0]) as r:
        summ = r.summary()
        assert summ["closed"] and summ["lost_frames"] == 20 and r.stream("a").n_frames == 20


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to user nobody")
def test_permission_denied_at_arm_and_at_file_creation():
    base = Path(tempfile.mkdtemp(prefix="mmstream-perm-"))  # pytest's tmp_path is private to root
    try:
        os.chmod(base, 0o755)
        if any(not (p.stat().st_mode & 0o001) for p in base.parents):
            pytest.skip(f"{base.parent} is not traversable by other users")
        not_mine, mine = base / "root_only", base / "nobody"
        not_mine.mkdir(mode=0o755)
        mine.mkdir()
        os.chown(mine, 65534, 65534)
        out = run_child("permission", not_mine, mine)
        assert out["arm_error"] == "permission_denied"
        st = out["open_status"]
        assert st["state"] == "failed" and st["last_error"]["reason"] == "permission_denied"
        assert ["error", "recording_permission_denied"] in out["events"]
        assert not list(mine.iterdir()) and not list(not_mine.iterdir())
    finally:
        shutil.rmtree(base, ignore_errors=True)
