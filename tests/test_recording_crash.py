"""Crash safety: a recording process killed with SIGKILL at random moments leaves files that open
(h5py directly; the HDF5 1.10 command-line tools after ``h5clear -s --increment=0``, see
docs/recording.md) and hold every frame, metric and event committed before the kill, with
consistent indices."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from recording_crash_child import SHAPES, pixels

from mmstream.recording.reader import SessionReader

CHILD = Path(__file__).with_name("recording_crash_child.py")
KILLS = 20
PARALLEL = 4


def check_file(path: Path, reported: dict) -> None:
    """Everything ``reported`` as committed is in the file, bit for bit, in order."""
    with SessionReader(path) as r:
        assert not r.summary()["closed"]
        for sid in SHAPES:
            s = r.stream(sid)
            n = s.n_frames
            assert n >= reported["frames"][sid] and s.n_metrics >= reported["metrics"][sid]
            seq = s.index()["seq"]
            assert np.array_equal(seq, np.arange(n)) and s.dropped_frames == 0
            for rows, frames in s.iter_frames(chunk=64):
                for q, img in zip(rows["seq"], frames):
                    assert np.array_equal(img, pixels(sid, int(q))), f"{path.name} {sid} frame {q}"
            assert [h.seq for h in s.frame_headers()] == seq.tolist()
            t = s.metrics_table()
            assert np.array_equal(t["seq"], np.arange(len(t))) and np.array_equal(t["echo_mean"], t["seq"])
            assert [m.parent[1] for m, _ in s.metrics_messages()] == t["seq"].tolist()
        events = r.events()
        assert len(events) >= reported["events"] and [e.seq for e in events] == list(range(0, 10 * len(events), 10))


def check_prefix_of(copy: Path, path: Path) -> None:
    """``h5clear -s`` alone (no ``--increment``) truncates a file to the end of allocation its
    superblock stores, which a killed writer may have left short: rows past it are lost. The reader
    must still open the copy and give, without error, a prefix of what the crashed file holds."""
    shutil.copy(path, copy)
    subprocess.run(["h5clear", "-s", str(copy)], check=True, capture_output=True)
    with SessionReader(copy) as r, SessionReader(path) as full:
        for sid in SHAPES:
            s, f = r.stream(sid), full.stream(sid)
            assert s.n_frames <= f.n_frames and s.n_metrics <= f.n_metrics
            assert np.array_equal(s.index()["seq"], np.arange(s.n_frames))
            assert np.array_equal(s.frames(), f.frames(0, s.n_frames))
            assert s.metrics_table().tobytes() == f.metrics_table(0, s.n_metrics).tobytes()  # NaN: bitwise
        assert [e.seq for e in r.events()] == [e.seq for e in full.events()][: len(r.events())]


def _kill_one_child(d: Path, rng: random.Random) -> dict:
    """Start a recording child in ``d``, wait for its first flush, SIGKILL it after a random delay;
    returns its last report line."""
    report = d / "report.jsonl"
    proc = subprocess.Popen([sys.executable, str(CHILD), str(d), str(report)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (report.exists() and report.stat().st_size) and time.monotonic() < deadline:  # first flush done
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.4))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return json.loads(report.read_text().splitlines()[-1])


def test_sigkill_at_random_moments_loses_nothing_committed(tmp_path):
    rng = random.Random(20261127)
    t0 = time.monotonic()
    dirs = [tmp_path / f"run{k}" for k in range(KILLS)]
    for d in dirs:
        d.mkdir()
    with ThreadPoolExecutor(PARALLEL) as pool:  # children overlap their start-up
        reports = list(pool.map(lambda d: _kill_one_child(d, random.Random(rng.random())), dirs))
    for d, reported in zip(dirs, reports):
        path = Path(reported["path"])
        assert path.parent == d and len(list(d.glob("*.h5"))) == 1
        check_file(path, reported)
        dump = subprocess.run(["h5dump", "-H", str(path)], capture_output=True, text=True)
        if dump.returncode != 0:  # flags of a writer that died: the HDF5 recovery step, then h5dump
            copy = d / "cleared.h5"
            shutil.copy(path, copy)
            subprocess.run(["h5clear", "-s", "--increment=0", str(copy)], check=True, capture_output=True)
            dump = subprocess.run(["h5dump", "-H", str(copy)], capture_output=True, text=True)
            check_file(copy, reported)
            check_prefix_of(d / "cleared_status_only.h5", path)
        assert dump.returncode == 0 and 'DATASET "frames"' in dump.stdout, dump.stderr
    print(f"{KILLS} kills checked in {time.monotonic() - t0:.1f} s")


def test_rows_past_a_short_end_of_allocation_are_left_out_not_raised(tmp_path):
    """A killed writer can leave the superblock's end of allocation short of rows already on disk;
    `h5clear -s` then truncates the file there. The reader opens such a file and reports only rows
    it can read (here the index and JSON chunks, rewritten at the end, are cut: none), where reading
    the index used to raise "addr overflow"; the stored value restored, every row is back."""
    import h5py
    from hdf5_superblock import set_stored_eoa
    from recording_crash_child import messages

    from mmstream.recording.writer import SessionWriter

    p = tmp_path / "live.h5"
    w = SessionWriter(p, {}, {"a": SHAPES["a"]}, fsync=False)
    for seq in range(40):
        for _, msg in messages(seq):
            if msg.header.msg_type == "frame" and msg.header.stream_id == "a":
                w.add_frame(msg.header, msg.arrays["image"])
    w.flush()
    crashed = tmp_path / "crashed.h5"
    shutil.copy(p, crashed)  # the writer still open: the file as a kill leaves it
    w.close()
    with h5py.File(crashed, "r", swmr=True) as f:
        frames = next(iter(f["streams"].values()))["frames"]
        last_chunk = max(frames.id.get_chunk_info(i).byte_offset for i in range(frames.id.get_num_chunks()))
    short = tmp_path / "short.h5"
    shutil.copy(crashed, short)
    set_stored_eoa(short, last_chunk)
    subprocess.run(["h5clear", "-s", str(short)], check=True, capture_output=True)
    assert short.stat().st_size == last_chunk  # HDF5 cut the file at the stored end
    with SessionReader(short) as r:
        s = r.stream("a")
        assert not r.summary()["closed"] and s.n_frames == 0 and len(s.index()) == 0 and s.frames().shape[0] == 0
    subprocess.run(["h5clear", "-s", "--increment=0", str(crashed)], check=True, capture_output=True)
    with SessionReader(crashed) as r:
        s = r.stream("a")
        assert s.n_frames == 40 and [int(q) for q in s.index()["seq"]] == list(range(40))
        assert all(np.array_equal(img, pixels("a", q)) for q, img in enumerate(s.frames()))


@pytest.mark.parametrize("content_from", ["truncated", "garbage_tail"])
def test_damaged_files_are_refused_with_a_clear_error(tmp_path, content_from):
    """A file cut short (copied mid-write, disk error) is a ReadError, not a crash."""
    from mmstream.errors import ReadError
    from mmstream.recording.writer import SessionWriter

    p = tmp_path / "s.h5"
    w = SessionWriter(p, {}, {"a": (64, 48)}, fsync=False)
    for seq in range(20):
        from recording_crash_child import messages

        for port, msg in messages(seq):
            if msg.header.msg_type == "frame" and msg.header.stream_id == "a":
                w.add_frame(msg.header, msg.arrays["image"])
    w.close()
    data = p.read_bytes()
    bad = tmp_path / "bad.h5"
    bad.write_bytes(data[: len(data) // 3] if content_from == "truncated" else data[:2048] + os.urandom(len(data) - 2048))
    try:
        with SessionReader(bad) as r:
            r.stream("a").frames()
    except ReadError as exc:
        assert exc.reason in ("unreadable", "not_a_session", "truncated")
    except OSError:
        pytest.fail("a damaged file must give ReadError")
