"""The driver side of the wire: send a source's frames to a service's ingest endpoint.

Every driver (simulated probe, video grabber, OpenIGTLink, DICOM cine, MetaImage sequence, replay)
yields :class:`SourceFrame` objects; :func:`pump` paces them by their device clock (or sends them as
fast as the service takes them) through a :class:`FrameSender`.
"""

import math
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from pydantic import ValidationError

from mmstream.codec import buffer_specs, encode
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
    ``ctx``: a ZeroMQ context of the caller's (see :func:`mmstream.transport.make_socket`).
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
    ):
        self.stream_id = stream_id
        self.session_id = f"{stream_id}-{uuid.uuid4().hex[:12]}"
        self.clinical = clinical
        self.seq = 0
        self.invalid_frames = 0  # frames :func:`pump` skipped because :meth:`send` refused them
        self.pace_jumps = 0  # times :func:`pump` did not wait for a frame time far ahead (MAX_PACE_WAIT_S)
        self._sock = make_socket("push", endpoint, bind=False, hwm=hwm, curve=curve, immediate=immediate, ctx=ctx)

    def send(self, frame: SourceFrame, timeout_ms: int | None = 5000) -> int:
        """Send one frame; returns its ``seq``. Blocks while the service's queue is full
        (TransportTimeout after ``timeout_ms``). InputError ``invalid_frame`` when the frame cannot
        be a Frame message (e.g. an empty or 16-bit image, too many fields): nothing is sent."""
        image = np.ascontiguousarray(frame.image)
        if 0 in image.shape:  # the Frame model checks 2-D uint8; an empty image fails only at encoding
            raise InputError(f"{self.stream_id}: empty frame image {image.shape}", reason="invalid_frame")
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


def pump(
    frames: Iterable[SourceFrame],
    sender: FrameSender,
    *,
    realtime: bool = True,
    stop: threading.Event | None = None,
    patient: bool = False,
) -> int:
    """Send ``frames`` until exhausted or ``stop`` is set; returns the count.

    With ``realtime``, frame *k* leaves at ``t0 + (t_device_s[k] - t_device_s[0])`` on the host's
    monotonic clock (a late frame is sent at once; lateness does not accumulate). A wait of more
    than ``MAX_PACE_WAIT_S`` (a file's timestamps jumping ahead) is not waited: the frame is sent
    at once and the pacing starts again from it, counted in ``sender.pace_jumps``. A send that finds
    the service's queue full raises TransportTimeout after the sender's timeout, unless ``patient``
    (with ``stop``): then it is retried until it goes, looking at ``stop`` every
    ``PATIENT_SLICE_MS`` (a service analysing every frame pushes back for as long as its analysis is
    behind). A frame the sender refuses (``invalid_frame``) is skipped and counted in
    ``sender.invalid_frames``: one bad frame never ends a live source.
    """
    n = 0
    t0_host = t0_dev = None
    for fr in frames:
        if stop is not None and stop.is_set():
            break
        if realtime and fr.t_device_s is not None:
            if t0_host is None:
                t0_host, t0_dev = time.monotonic(), fr.t_device_s
            delay = t0_host + (fr.t_device_s - t0_dev) - time.monotonic()
            if delay > MAX_PACE_WAIT_S or not math.isfinite(delay):
                t0_host, t0_dev, delay = time.monotonic(), fr.t_device_s, 0.0
                sender.pace_jumps += 1
            if delay > 0:
                if stop is not None:
                    if stop.wait(delay):
                        break
                else:
                    time.sleep(delay)
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
