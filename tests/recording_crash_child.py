"""Child process of the crash-safety test: the Recorder node records two synthetic streams (pixels,
metrics and events derived from ``seq``) as fast as it can, flushing every 20 ms, and after each
flush appends what is committed to REPORT as one JSON line. The parent kills it with SIGKILL.

    python recording_crash_child.py DIRECTORY REPORT
"""

import json
import os
import sys
import time

import numpy as np

from mmstream.codec import Decoded, buffer_specs, topic_for
from mmstream.config import RecorderSection
from mmstream.messages import EchoSummary, Event, Frame, Metrics
from mmstream.recording.recorder import Recorder

SHAPES = {"a": (64, 48), "b": (72, 40)}


def pixels(stream_id: str, seq: int) -> np.ndarray:
    """The image of frame ``seq``: every pixel is a function of (stream, seq, position)."""
    rows, cols = SHAPES[stream_id]
    return ((np.arange(rows * cols, dtype=np.int64).reshape(rows, cols) + 7 * seq + len(stream_id)) % 251).astype(np.uint8)


def messages(seq: int):
    for sid in SHAPES:
        img = pixels(sid, seq)
        h = Frame(stream_id=sid, session_id="crash", seq=seq, t_device_s=seq / 60, t_host_s=time.monotonic(),
                  buffers=buffer_specs(image=img))  # fmt: skip
        yield "frames", Decoded(topic_for(h), h, {"image": img})
        m = Metrics(stream_id=sid, session_id="crash", parent=(sid, seq), t_device_s=seq / 60,
                    echogenicity=EchoSummary(region="frame", mean=float(seq), std=1.0, n_px=img.size))  # fmt: skip
        yield "bus", Decoded(topic_for(m), m, {})
    if seq % 10 == 0:
        e = Event(node="ingest", level="info", reason="tick", message=f"seq {seq}", seq=seq, t_host_s=time.monotonic())
        yield "bus", Decoded(topic_for(e), e, {})


def main(directory: str, report: str) -> None:
    rec = Recorder(RecorderSection(directory=directory, flush_interval_s=0.02, discover_s=2.0), "crash",
                   expected_streams=tuple(SHAPES))  # fmt: skip
    rec.start_recording()
    fd = os.open(report, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    last = None
    for seq in range(10**9):
        for port, msg in messages(seq):
            rec.process(port, msg)
        rec.tick(time.monotonic())
        st = rec.recording_status()
        if st["state"] != "recording":
            raise SystemExit(f"recorder stopped: {st}")
        if st["committed"] != last:  # a flush happened: report it (after it completed)
            last = json.loads(json.dumps(st["committed"]))
            os.write(fd, (json.dumps({"path": st["path"], **last}) + "\n").encode())


if __name__ == "__main__":
    main(*sys.argv[1:3])
