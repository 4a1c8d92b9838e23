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
    limit = 3 * 1024 * 1024  # ~11 frames of 512x512
    out = run_child("disk_full", tmp_path, limit)
    st = out["status"]
    assert st["state"] == "failed" and st["last_error"]["reason"] == "disk_full"
    assert out["recorder_counters"].get("error_disk_full") == 1
    assert out["live_metrics_after_failure"] >= 10  # the service kept analysing and publishing
    (path,) = out["files"]
    committed = out["committed_before_failure"]
    assert committed["frames"]["p1"] > 0
    if subprocess.run(["h5dump", "-H", path], capture_output=True).returncode != 0:
        subprocess.run(["h5clear", "-s", path], check=True, capture_output=True)  # writer died mid-write
    with SessionReader(path) as r:
        s = r.stream("p1")
        assert s.n_frames >= committed["frames"]["p1"] and s.n_metrics >= committed["metrics"]["p1"]
        seq = s.index()["seq"]
        assert np.all(np.diff(seq) >= 1) and [h.seq for h in s.frame_headers()] == seq.tolist()
        frames = s.frames()
        assert frames.shape[0] == s.n_frames and frames.std() > 0  # real sim pixels, not fill values
    dump = subprocess.run(["h5dump", "-H", path], capture_output=True, text=True)
    assert dump.returncode == 0, dump.stderr
    assert Path(path).stat().st_size <= limit


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
