"""The driver side of the wire: send a source's frames to a service's ingest endpoint.

Every driver (simulated probe, video grabber, OpenIGTLink, DICOM cine, MetaImage sequence, replay)
yields :class:`SourceFrame` objects; :func:`pump` paces them by their device clock (or sends them as
fast as the service's ingest rate limit lets them through) via a :class:`FrameSender`.
"""

import math
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from pydantic import ValidationError

from mmstream.codec import Limits, buffer_specs, encode
from mmstream.config import IngestSection
from mmstream.errors import InputError
from mmstream.messages import ClinicalContext, Frame, ImagingSettings
from mmstream.transport import Curve, TransportTimeout, make_socket


@dataclass(frozen=True)
class SourceFrame:
    """One frame as a driver produces it; ``image`` is (H, W) uint8. ``seq``, ``t_wall`` and
    ``clinical`` are left None by live sources (the sender numbers frames and uses its own context);
    a replayed frame sets them to keep the recorded values."""

    image: np.ndarray
    t_device_s: float | None = None
    spacing_mm: tuple[float, float] | None = None
    spacing_source: str = "unknown"
    imaging: ImagingSettings = ImagingSettings()
    transforms: dict[str, tuple[float, ...]] = field(default_factory=dict)
    annotations: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    seq: int | None = None
    t_wall: str | None = None
    clinical: ClinicalContext | None = None


class FrameSender:
    """Sends the frames of one stream (PUSH, connected to the service's ingest endpoint).

    ``seq`` counts from 0 and ``session_id`` is new for every sender, so a restarted driver is
    recognised as a new session rather than as sequence numbers going backwards. A frame that
    brings its own ``seq`` (a replayed one) not above the last one sent starts a new ``session_id``
    too: the recorded source restarted there. ``immediate``: queue frames only once connected, so
    that a send with no service there times out instead of queueing ``hwm`` frames that are lost;
    ``ctx``: a ZeroMQ context of the caller's (see :func:`mmstream.transport.make_socket`);
    ``max_frame_shape``: the largest (rows, cols) the service takes (its ``[ingest] max_frame_rows``,
    ``max_frame_cols``; default the default configuration's): a larger frame is refused here, where
    the source counts it, instead of being lost at the service's ingest.
    """

    def __init__(
        self,
        endpoint: str,
        stream_id: str,
        *,
        clinical: ClinicalContext = ClinicalContext(),
        curve: Curve | None = None,
        hwm: int = 64,
        immediate: bool = False,
        ctx=None,
        max_frame_shape: tuple[int, int] = Limits().max_frame_shape,
    ):
        self.stream_id = stream_id
        self.max_frame_shape = (int(max_frame_shape[0]), int(max_frame_shape[1]))
        self.session_id = f"{stream_id}-{uuid.uuid4().hex[:12]}"
        self.clinical = clinical
        self.seq = 0
        self.invalid_frames = 0  # frames :func:`pump` skipped because :meth:`send` refused them
        self.pace_jumps = 0  # times :func:`pump` did not wait for a frame time far ahead (MAX_PACE_WAIT_S)
        self._sock = make_socket("push", endpoint, bind=False, hwm=hwm, curve=curve, immediate=immediate, ctx=ctx)

    def send(self, frame: SourceFrame, timeout_ms: int | None = 5000) -> int:
        """Send one frame; returns its ``seq``. Blocks while the service's queue is full
        (TransportTimeout after ``timeout_ms``). InputError ``invalid_frame`` when the frame cannot
        be a Frame message (e.g. an empty or 16-bit image, too many fields), ``too_large`` when the
        image is larger than ``max_frame_shape``: nothing is sent."""
        image = np.ascontiguousarray(frame.image)
        if 0 in image.shape:  # the Frame model checks 2-D uint8; an empty image fails only at encoding
            raise InputError(f"{self.stream_id}: empty frame image {image.shape}", reason="invalid_frame")
        rows, cols = self.max_frame_shape
        if image.ndim == 2 and (image.shape[0] > rows or image.shape[1] > cols):  # the service's codec refuses it
            raise InputError(f"{self.stream_id}: frame {image.shape[0]}x{image.shape[1]} is larger than the service "
                             f"takes ({rows}x{cols}, [ingest] max_frame_rows/max_frame_cols)", reason="too_large")
        try:
            header = self._header(frame, image)
        except ValidationError as exc:
            raise InputError(f"{self.stream_id}: frame not sendable: {str(exc.errors()[0]['msg'])[:300]}",
                             reason="invalid_frame") from None  # fmt: skip
        self._sock.send(encode(header, [image]), timeout_ms=timeout_ms)
        self.seq = header.seq + 1
        return header.seq

    def _header(self, frame: SourceFrame, image: np.ndarray) -> Frame:
        if frame.seq is not None and frame.seq < self.seq:
            self.session_id = f"{self.stream_id}-{uuid.uuid4().hex[:12]}"
        return Frame(
            stream_id=self.stream_id,
            session_id=self.session_id,
            seq=self.seq if frame.seq is None else frame.seq,
            t_device_s=frame.t_device_s,
            t_wall=frame.t_wall,
            spacing_mm=frame.spacing_mm,
            spacing_source=frame.spacing_source if frame.spacing_mm is not None else "unknown",
            imaging=frame.imaging,
            clinical=self.clinical if frame.clinical is None else frame.clinical,
            transforms=frame.transforms,
            annotations=frame.annotations,
            metadata=frame.metadata,
            stamps={"sent": time.monotonic()},
            buffers=buffer_specs(image=image),
        )

    def close(self, linger_ms: int = 2000) -> None:
        """Close, first letting frames still queued reach the service (up to ``linger_ms``)."""
        self._sock.close(linger_ms)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


PATIENT_SLICE_MS = 200
MAX_PACE_WAIT_S = 60.0  # a longer wait for the next frame's time is a jump in the file's timestamps, not pacing
DEFAULT_MAX_FPS = IngestSection.model_fields["max_fps_per_stream"].default  # the service's ingest rate limit


def pump(
    frames: Iterable[SourceFrame],
    sender: FrameSender,
    *,
    realtime: bool = True,
    stop: threading.Event | None = None,
    patient: bool = False,
    max_fps: float | None = DEFAULT_MAX_FPS,
) -> int:
    """Send ``frames`` until exhausted or ``stop`` is set; returns the count.

    With ``realtime``, frame *k* leaves at ``t0 + (t_device_s[k] - t_device_s[0])`` on the host's
    monotonic clock (a late frame is sent at once; lateness does not accumulate). A frame whose
    device time is before the previous frame's (a clock or a file's timestamps starting again), or
    would mean waiting more than ``MAX_PACE_WAIT_S`` (timestamps jumping ahead), is sent at once and
    the pacing starts again from it, counted in ``sender.pace_jumps``. Whether paced or not
    (``realtime`` false: as fast as possible), each frame is due at least ``1 / max_fps`` after the
    previous one was due (a deadline: the sleep's overshoot does not add up; a late frame gives no
    credit for a burst): ``max_fps`` is the service's per-stream ingest rate limit (``[ingest]
    max_fps_per_stream``, default the default configuration's), and a frame sent faster would be
    refused there (``rate_limited``) and lost; None sends without that bound. A send that finds
    the service's queue full raises TransportTimeout after the sender's timeout, unless ``patient``
    (with ``stop``): then it is retried until it goes, looking at ``stop`` every
    ``PATIENT_SLICE_MS`` (a service analysing every frame pushes back for as long as its analysis is
    behind). A frame the sender refuses (``invalid_frame``, ``too_large``) is skipped and counted in
    ``sender.invalid_frames``: one bad frame never ends a live source.
    """
    min_gap_s = 1.0 / max_fps if max_fps else 0.0
    n = 0
    t0_host = t0_dev = last_dev = t_next = None
    for fr in frames:
        if stop is not None and stop.is_set():
            break
        now = time.monotonic()
        delay = 0.0 if t_next is None else t_next - now
        if realtime and fr.t_device_s is not None:
            if t0_host is None:
                t0_host, t0_dev = now, fr.t_device_s
            due = t0_host + (fr.t_device_s - t0_dev) - now
            if due > MAX_PACE_WAIT_S or not math.isfinite(due) or (last_dev is not None and fr.t_device_s < last_dev):
                t0_host, t0_dev, due = now, fr.t_device_s, 0.0
                sender.pace_jumps += 1
            last_dev = fr.t_device_s
            delay = max(delay, due)
        if delay > 0:
            if stop is not None:
                if stop.wait(delay):
                    break
            else:
                time.sleep(delay)
        # by deadline: the next frame is due min_gap_s after this one's due time (sleep overshoot does
        # not add up), never after a time already past (a late frame gives no credit for a burst)
        t_next = now + max(delay, 0.0) + min_gap_s
        while True:
            try:
                sender.send(fr, timeout_ms=PATIENT_SLICE_MS) if patient else sender.send(fr)
                n += 1
                break
            except TransportTimeout:
                if not patient or stop is None:
                    raise
                if stop.is_set():
                    return n
            except InputError:
                sender.invalid_frames += 1
                break
    return n
