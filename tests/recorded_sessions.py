"""Session files for the recording tools' tests, written by the real SessionWriter from simulated
frames and their real analysis (no hand-made HDF5)."""

import time
from pathlib import Path

import numpy as np
import pytest

from mmstream.analysis import analyze_frame
from mmstream.codec import buffer_specs
from mmstream.messages import ClinicalContext, Event, Frame
from mmstream.nodes.analyzer import metrics_message
from mmstream.recording.writer import SessionWriter
from mmstream_drivers.sim import SceneSpec, SimProbe

SPEC = SceneSpec(shape=(96, 128), spacing_mm=(0.5, 0.4))
CLINICAL = ClinicalContext(patient_id="P-TEST", site="tibialis_anterior", side="left", plane="transverse")
N_FRAMES, GAP_SEQ = 30, 10  # the `session` fixture: frames per stream, the seq that is missing


def frame_header(stream_id: str, src, seq: int, t_host_s: float, clinical=CLINICAL, spacing=True) -> Frame:
    """The wire header ingest would have forwarded for a sim frame (``src``: a SourceFrame)."""
    return Frame(
        stream_id=stream_id, session_id=f"{stream_id}-s", seq=seq, t_device_s=src.t_device_s, t_host_s=t_host_s,
        t_wall=f"2026-11-27T01:00:{seq % 60:02d}.000000+00:00",
        spacing_mm=src.spacing_mm if spacing else None, spacing_source=src.spacing_source if spacing else "unknown",
        imaging=src.imaging, clinical=clinical, annotations=src.annotations, stamps={"ingest": t_host_s},
        buffers=buffer_specs(image=src.image),
    )  # fmt: skip


def write_session(path: Path, n_frames: int = 30, streams=("probe0",), gap_at: int | None = None, close: bool = True,
                  fps: float = 20.0, spacing: bool = True, part: int = 0, first_seq: int = 0) -> SessionWriter:  # fmt: skip
    """A session of ``n_frames`` analysed sim frames per stream (``gap_at``: that seq is skipped, a
    recorded drop), numbered from ``first_seq``, as part ``part`` of recording ``r1``. Returns the
    writer (closed when ``close``; else flushed and left open)."""
    probe = SimProbe(SPEC, fps=fps, seed=3)
    seed_rc = probe.frame(0).truth.nerve_center_rc
    w = SessionWriter(path, {"session_id": "test-session", "software_version": "test", "config_json": "{}",
                             "start_wall": "2026-11-27T01:00:00+00:00", "recording_id": "r1", "part": part,
                             "start_t_host_s": 100.0},
                      {s: SPEC.shape for s in streams}, fsync=False)  # fmt: skip
    prev = {s: None for s in streams}
    for i in range(n_frames):
        seq = first_seq + (i + 1 if gap_at is not None and i >= gap_at else i)
        src = probe.frame(seq).to_source()
        for k, sid in enumerate(streams):
            h = frame_header(sid, src, seq, 100.0 + seq / fps + k * 1e-3, spacing=spacing)
            w.add_frame(h, src.image)
            res = analyze_frame(src.image, h.spacing_mm, seed=seed_rc if prev[sid] is None else None, previous=prev[sid])
            prev[sid] = res
            mh, arrays = metrics_message(h, res, {"ingest": h.t_host_s, "analyzed": h.t_host_s + 0.002})
            w.add_metrics(mh, dict(zip([b.name for b in mh.buffers], arrays)))
    w.add_event(Event(node="ingest", level="warning", reason="seq_not_increasing", message="test", t_host_s=time.monotonic()))
    w.flush()
    if close:
        w.close()
    return w


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """A closed session file: streams probe0 and probe1, N_FRAMES frames each, seq GAP_SEQ missing."""
    path = tmp_path_factory.mktemp("session") / "session.h5"
    write_session(path, N_FRAMES, streams=("probe0", "probe1"), gap_at=GAP_SEQ)
    return path


def write_sparse_session(path: Path, n_frames: int, shape=(512, 512), fps: float = 60.0) -> None:
    """A one-stream (``big``) session of ``n_frames`` frames whose pixel chunks are left unallocated
    (sparse: they read as zeros) beside a real index and real headers: a 30-minute session's worth
    of frames in a file of a few tens of megabytes."""
    from mmstream.recording import layout as L

    f = L.create_session_file(path, {"session_id": "big", "software_version": "test"}, {"big": shape})
    try:
        g = f["streams/big"]
        g["frames"].resize((n_frames, *shape))
        src = SimProbe(SPEC, fps=fps, seed=1).frame(0).to_source()
        bufs = buffer_specs(image=np.zeros(shape, np.uint8))
        dtype = L.dtype_of(L.FRAME_INDEX)
        for start in range(0, n_frames, 8192):  # bounded memory while writing too
            blobs, rows, off = [], [], len(g["json"])
            for i in range(start, min(start + 8192, n_frames)):
                h = frame_header("big", src, i, 10.0 + i / fps).model_copy(update={"t_device_s": i / fps, "buffers": bufs})
                b = h.model_dump_json().encode()
                rows.append(L.row_of(L.FRAME_INDEX, h, json_offset=off, json_n_bytes=len(b)))
                blobs.append(b)
                off += len(b)
            heap = np.frombuffer(b"".join(blobs), np.uint8)
            n_heap, n_idx = len(g["json"]), len(g["index"])
            g["json"].resize((n_heap + heap.size,))
            g["json"][n_heap:] = heap
            g["index"].resize((n_idx + len(rows),))
            g["index"][n_idx:] = np.array(rows, dtype=dtype)
        g["summary"][0] = (n_frames, 0, 0, 0, n_frames - 1)  # committed, as the writer records it
    finally:
        f.close()
