"""Replay: stream a recorded session file back as a source, keeping what was recorded.

Each replayed frame carries its recorded ``seq``, ``t_device_s``, ``t_wall``, spacing and its source,
imaging settings, clinical context, transforms and annotations, so that record -> replay -> record
gives the same frames and metrics. The file is read a few frames at a time through
:class:`mmstream.recording.reader.SessionReader`: memory stays flat whatever the session length.

Modes: ``realtime`` (the recorded timing: frame *k* leaves at ``t0 + (t_host_s[k] - t_host_s[0]) /
speed``, ``t_host_s`` being the time the recording service received it, a clock common to all
streams), ``fast`` (as fast as the receiver takes frames; ZeroMQ back-pressure paces it) and ``step``
(one frame each time the caller asks: :meth:`Replayer.step`, or ``mmstream replay --mode step``).

Several streams are merged in recorded order. As a service source (``driver = "replay"``, options
``path``, ``stream``, ``mode``, ``speed``) one stream is replayed per source section; the section's
``fps`` is ignored, the timing comes from the file.
"""

import heapq
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import zmq
from pydantic import ValidationError

from mmstream.errors import ConfigError, InputError, ReadError
from mmstream.messages import Frame
from mmstream.recording.reader import SessionReader
from mmstream.source import FrameSender, SourceFrame
from mmstream.transport import Curve
from mmstream_drivers.health import SourceHealth

MODES = ("realtime", "fast", "step")
DELIVER_S = 60.0  # after the last frame, how long send() waits for the service to take the queued ones
READ_CHUNK_FRAMES = 16  # frames read from the file at once: memory ~ 16 frames, whatever the file size


@dataclass(frozen=True)
class ReplayFrame:
    """One recorded frame: its stream, the time the recording service received it (host monotonic
    seconds of the recording run; None if not recorded) and the frame as a driver sends it."""

    stream_id: str
    t_host_s: float | None
    frame: SourceFrame


def source_frame(h: Frame, image) -> SourceFrame:
    """The frame as a driver sends it again, with everything the recorded header ``h`` holds that
    a driver sets (the service sets the rest: ``t_host_s``, ``stamps``, a new ``session_id``)."""
    return SourceFrame(
        image=image, t_device_s=h.t_device_s, spacing_mm=h.spacing_mm, spacing_source=h.spacing_source,
        imaging=h.imaging, transforms=dict(h.transforms), annotations=dict(h.annotations),
        seq=h.seq, t_wall=h.t_wall, clinical=h.clinical,
    )  # fmt: skip


def stream_frames(reader: SessionReader, stream_id: str) -> Iterator[ReplayFrame]:
    """The recorded frames of one stream, read :data:`READ_CHUNK_FRAMES` at a time; ReadError
    (``damaged``) when the file cannot be read or a recorded header is not a valid frame header."""
    try:
        for h, image in reader.stream(stream_id).iter_frame_messages(chunk=READ_CHUNK_FRAMES):
            yield ReplayFrame(stream_id, h.t_host_s, source_frame(h, image))
    except (OSError, KeyError, ValidationError, UnicodeDecodeError) as exc:
        raise ReadError(f"{reader.path}: damaged frames of stream {stream_id!r}: {type(exc).__name__}: {str(exc)[:300]}",
                        reason="damaged") from None  # fmt: skip


def _keyed(frames: Iterator[ReplayFrame], rank: int):
    """(sort key, frame): recorded host time orders streams against each other, seq within one."""
    for f in frames:
        yield (f.t_host_s if f.t_host_s is not None else -math.inf, rank, f.frame.seq), f


def _parts_in_order(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """The files sorted by their ``part`` number, and every stream they hold (first seen first);
    InputError when they are parts of different recordings."""
    found = []
    for p in paths:
        with SessionReader(p) as r:
            found.append((*r.part, p, r.streams))
    if len({rid for _, rid, _, _ in found}) > 1:
        raise InputError(f"{', '.join(map(str, paths))}: parts of different recordings", reason="mixed_recordings")
    found.sort(key=lambda x: x[0])
    streams = list(dict.fromkeys(s for *_, ss in found for s in ss))
    return [p for _, _, p, _ in found], streams


class Replayer:
    """Replays the frames of ``streams`` (default: every stream) of the session file ``path`` (or
    of the parts ``[path, ...]`` of one recording, replayed in part order, one file open at a time).

    Iterate it for :class:`ReplayFrame` values (paced in ``realtime`` mode), call :meth:`step` for
    the next one, or :meth:`send` them to a service. ``speed`` scales realtime pacing (2 = twice as
    fast). ``stop`` (an Event) ends iteration early. Iterate and close from one thread.
    """

    def __init__(self, path, streams: list[str] | None = None, mode: str = "realtime", speed: float = 1.0,
                 stop: threading.Event | None = None):  # fmt: skip
        if mode not in MODES:
            raise InputError(f"replay mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not (speed > 0 and speed != float("inf")):
            raise InputError(f"replay speed must be a finite number > 0, got {speed}")
        self.paths, known = _parts_in_order([Path(p) for p in (path if isinstance(path, (list, tuple)) else [path])])
        self.mode, self.speed = mode, float(speed)
        self._stop = stop or threading.Event()
        self.streams = list(streams) if streams else known
        missing = [s for s in self.streams if s not in known]
        if missing:
            raise InputError(f"{self.paths[0]}: no stream {', '.join(missing)} (recorded: {', '.join(known) or 'none'})",
                             reason="unknown_stream")  # fmt: skip
        self._merged = self._merge()

    def _merge(self) -> Iterator[ReplayFrame]:
        for path in self.paths:
            with SessionReader(path) as reader:
                streams = [s for s in self.streams if s in reader.streams]
                for _, f in heapq.merge(*(_keyed(stream_frames(reader, s), i) for i, s in enumerate(streams))):
                    yield f

    def step(self) -> ReplayFrame | None:
        """The next frame, at once (no pacing); None at the end of the file."""
        return next(self._merged, None)

    def __iter__(self) -> Iterator[ReplayFrame]:
        t0_host = t0_rec = None
        for f in self._merged:
            if self._stop.is_set():
                return
            if self.mode == "realtime" and f.t_host_s is not None:
                if t0_host is None:
                    t0_host, t0_rec = time.monotonic(), f.t_host_s
                delay = t0_host + (f.t_host_s - t0_rec) / self.speed - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
            yield f

    def send(self, endpoint: str, *, curve: Curve | None = None, advance: Callable[[], bool] | None = None,
             on_frame: Callable[[ReplayFrame], None] | None = None) -> int:  # fmt: skip
        """Send every frame to a service's ingest endpoint (one sender per stream, recorded ``seq``
        kept; a new ``session_id`` per replay). In ``step`` mode ``advance()`` is called before each
        frame and returning False stops. Returns the number of frames sent."""
        if self.mode == "step" and advance is None:
            raise InputError("step mode needs an advance() callback (e.g. a key press)")
        senders: dict[str, FrameSender] = {}
        # a context of its own: term() below returns once every frame has left (or DELIVER_S passed);
        # inproc endpoints live in the process-wide one, whose sockets stay with the process
        ctx = None if endpoint.startswith("inproc://") else zmq.Context()
        n, finished = 0, False
        try:
            frames = iter(self.step, None) if self.mode == "step" else iter(self)
            while True:
                if self.mode == "step" and not advance():
                    break
                f = next(frames, None)
                if f is None:
                    break
                if f.stream_id not in senders:
                    # immediate: no frame queued for a service that is not there (a timeout, not "sent")
                    senders[f.stream_id] = FrameSender(endpoint, f.stream_id, curve=curve, immediate=True, ctx=ctx)
                senders[f.stream_id].send(f.frame)
                n += 1
                if on_frame is not None:
                    on_frame(f)
            finished = True
        finally:  # after an error or an interrupt, what is still queued is dropped at once
            for s in senders.values():
                s.close(linger_ms=int(DELIVER_S * 1000) if finished else 0)
            if ctx is not None:
                ctx.term()  # the frames still queued are delivered before returning: none lost when the process ends
        return n

    def close(self) -> None:
        self._stop.set()
        self._merged.close()  # closes the open part

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ReplaySource:
    """The ``replay`` driver (service source): frames of one stream of a session file.

    ``path`` is the session file, ``stream`` the stream to replay (required when the file holds
    several), ``mode`` ``realtime`` or ``fast``, ``speed`` the realtime time scale. ``fps`` is
    accepted for the driver interface and ignored: the timing comes from the file.
    """

    name = "replay"
    paces_itself = True  # the service's pump must not pace again by t_device_s

    def __init__(self, fps: float | None = None, *, path: str, stream: str | None = None, mode: str = "realtime",
                 speed: float = 1.0):  # fmt: skip
        if mode == "step":
            raise ConfigError("replay source: step mode needs an interactive caller (mmstream replay --mode step)")
        self._stop = threading.Event()
        self.health = SourceHealth(f"source-{self.name}")
        self._replayer = Replayer(path, [stream] if stream else None, mode=mode, speed=speed, stop=self._stop)
        if len(self._replayer.streams) != 1:
            self._replayer.close()
            raise ConfigError(f"replay source: {path} holds streams {', '.join(self._replayer.streams)}; "
                              "choose one with the 'stream' option")  # fmt: skip

    def source_frames(self) -> Iterator[SourceFrame]:
        try:
            for f in self._replayer:
                self.health.count("frames")
                yield f.frame
        except ReadError as exc:  # a damaged part of the file: said in the health, then the source stops
            self.health.error(exc.reason, str(exc))
            raise
        finally:
            self._replayer.close()

    def close(self) -> None:
        """Stop from another thread: the frames end at the next one (the file is closed by the
        thread iterating, as the Replayer requires)."""
        self._stop.set()


__all__ = ["MODES", "ReplayFrame", "Replayer", "ReplaySource"]
