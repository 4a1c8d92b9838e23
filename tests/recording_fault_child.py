"""Child process of the recording fault tests; prints one JSON line with what it observed.

    python recording_fault_child.py disk_full DIRECTORY LIMIT_BYTES
        The service (sim source, recorder enabled) under RLIMIT_FSIZE: the recording stops with
        ``disk_full`` before a write fails; the live metrics must keep coming afterwards.
    python recording_fault_child.py write_error DIRECTORY LIMIT_BYTES
        The recorder alone, its room check defeated: an HDF5 write fails (EFBIG) mid-flush.
    python recording_fault_child.py close_error DIRECTORY LIMIT_BYTES
        The same, the failing write inside ``stop_recording()``.
    python recording_fault_child.py create_error DIRECTORY
        The recorder alone, its room check defeated, under file size limits below the size of a
        new file part: creating the part fails; then a recording with the limit lifted.
    python recording_fault_child.py permission DIR_NOT_MINE DIR_MINE
        Runs as user nobody: arming in a directory it cannot write, then a directory that becomes
        unwritable before the file is created.
"""

import json
import os
import resource
import signal
import sys
import time

import numpy as np
from test_graph import wait_for


def disk_full(directory: str, limit_bytes: str) -> dict:
    from mmstream.config import load_config
    from mmstream.service import Service

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes beyond the limit fail with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit_bytes), int(limit_bytes)))
    tcp = "tcp://127.0.0.1:*"
    cfg = load_config(None, endpoints={"ingest": tcp, "metrics": tcp, "control": tcp}, web={"enabled": False},
                      sources=[{"driver": "sim", "stream_id": "p1", "fps": 30}],
                      recorder={"enabled": True, "directory": directory, "flush_interval_s": 0.1})  # fmt: skip
    with Service(cfg) as svc:
        rec = svc.recorder
        committed = {}

        def failed():
            st = rec.recording_status()
            if st["committed"]:
                committed.update(json.loads(json.dumps(st["committed"])))
            return st if st["state"] == "failed" else None

        st = wait_for(failed, timeout_s=60, what="recording failure")
        published = svc.graph.publisher.status()["counters"].get("metrics", 0)
        wait_for(lambda: svc.graph.publisher.status()["counters"].get("metrics", 0) >= published + 10, timeout_s=60,
                 what="live metrics after the failure")
        return {"status": st, "committed_before_failure": committed, "files": st["files"],
                "live_metrics_after_failure": svc.graph.publisher.status()["counters"]["metrics"] - published,
                "recorder_counters": dict(svc.graph.status()["nodes"]["recorder"]["counters"])}  # fmt: skip


def _recorder_past_its_room_check(directory: str, limit_bytes: str, name: str):
    """A Recorder of streams a and b under RLIMIT_FSIZE ``limit_bytes``, its room check defeated so
    that an HDF5 write really fails (EFBIG)."""
    import mmstream.recording.writer as writer
    from mmstream.config import RecorderSection
    from mmstream.recording.recorder import Recorder

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit_bytes), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    writer.room_bytes = lambda path: 2**62
    rec = Recorder(RecorderSection(directory=directory, discover_s=5.0), name, expected_streams=("a", "b"))
    rec.start_recording()
    return rec


def _outcome(st: dict, committed: dict, events: list) -> dict:
    return {"status": st, "committed_before_failure": committed, "files": st["files"],
            "events": [[o.header.level, o.header.reason] for o in events]}  # fmt: skip


def write_error(directory: str, limit_bytes: str) -> dict:
    """As disk_full, without the service and with the room check defeated: the write fails inside
    a timer flush."""
    from recording_crash_child import messages

    rec = _recorder_past_its_room_check(directory, limit_bytes, "werr")
    committed, events = {}, []
    for seq in range(100000):
        for port, msg in messages(seq):
            events += rec.process(port, msg)
        if seq % 5 == 4:
            events += rec.tick(time.monotonic() + 3600)  # flush now
        st = rec.recording_status()
        if st["state"] != "recording":
            break
        committed = json.loads(json.dumps(st["committed"]))
    return _outcome(st, committed, events)


def close_error(directory: str, limit_bytes: str) -> dict:
    """As write_error, but the failing write is the final flush of ``stop_recording()`` (it used to
    close the file normally after the failed write, and the process died of SIGSEGV later)."""
    from recording_crash_child import messages

    rec = _recorder_past_its_room_check(directory, limit_bytes, "cerr")
    committed, events, seq = {}, [], 0
    while True:  # flush every 5 frames until the file is near the limit
        for port, msg in messages(seq):
            events += rec.process(port, msg)
        seq += 1
        if seq % 5 == 0:
            if os.path.getsize(rec.recording_status()["path"]) > int(limit_bytes) - 60_000:
                break
            events += rec.tick(time.monotonic() + 3600)
            committed = json.loads(json.dumps(rec.recording_status()["committed"]))
    for _ in range(40):  # more than the room left
        for port, msg in messages(seq):
            events += rec.process(port, msg)
        seq += 1
    st = rec.stop_recording()
    events += rec.process(*next(messages(seq)))  # also hands out the events stop_recording queued
    return _outcome(st, committed, events)


def create_error(directory: str) -> dict:
    """Recordings whose first file part (streams a and b, 26 kB) cannot be written, each limit
    failing at another write of it, then one recording with the limit lifted (the process used to
    die of SIGSEGV at exit, or when it closed a file later)."""
    from recording_crash_child import messages

    def record(rec) -> tuple[dict, list]:
        events = []
        for seq in range(10):
            for port, msg in messages(seq):
                events += rec.process(port, msg)
            events += rec.tick(time.monotonic() + 3600)  # flush now
        st = rec.stop_recording()
        return st, events + rec.process(*next(messages(10)))  # also the events stop_recording queued

    failed = []
    for limit in (1_000, 4_000, 6_000, 12_000, 20_000):
        st, events = record(_recorder_past_its_room_check(directory, str(limit), f"create{limit}"))
        failed.append(_outcome(st, {}, events))
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    st, events = record(_recorder_past_its_room_check(directory, str(hard), "lifted"))
    return {"failed": failed, "after": _outcome(st, {}, events)}


def permission(not_mine: str, mine: str) -> dict:
    from mmstream.codec import Decoded, buffer_specs, topic_for
    from mmstream.config import RecorderSection
    from mmstream.errors import RecordingError
    from mmstream.messages import Frame
    from mmstream.recording.recorder import Recorder

    os.setgid(65534)
    os.setuid(65534)  # nobody: root would be allowed everything
    out = {}
    rec = Recorder(RecorderSection(directory=not_mine), "perm")
    try:
        rec.start_recording()
    except RecordingError as exc:
        out["arm_error"] = exc.reason
    rec = Recorder(RecorderSection(directory=mine, discover_s=0.0), "perm")
    rec.start_recording()
    os.chmod(mine, 0o500)  # becomes unwritable before the first frame creates the file
    img = np.zeros((64, 64), np.uint8)
    h = Frame(stream_id="p1", session_id="x", seq=0, buffers=buffer_specs(image=img))
    events = rec.process("frames", Decoded(topic_for(h), h, {"image": img}))
    out["open_status"] = rec.recording_status()
    out["events"] = [[o.header.level, o.header.reason] for o in events]
    return out


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    modes = {"disk_full": disk_full, "write_error": write_error, "close_error": close_error,
             "create_error": create_error, "permission": permission}  # fmt: skip
    print(json.dumps(modes[mode](*args)), flush=True)
