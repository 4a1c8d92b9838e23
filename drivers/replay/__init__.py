"""Replay: stream a recorded session file back as a source, keeping what was recorded.

Each replayed frame carries its recorded ``seq``, ``t_device_s``, ``t_wall``, spacing and its source,
imaging settings, clinical context, transforms and annotations, so that record -> replay -> record
gives the same frames and metrics. The file is read a few frames at a time through
:class:`mmstream.recording.reader.SessionReader`: memory stays flat whatever the session length.

Modes: ``realtime`` (the recorded timing: frame *k* leaves at ``t0 + (t_host_s[k] - t_host_s[0]) /
speed``, ``t_host_s`` being the time the recording service received it, a clock common to all
streams), ``fast`` (as fast as the receiver takes frames; ZeroMQ back-pressure paces it) and ``step``
(one frame each time the caller asks: :meth:`Replayer.step`, or ``mmstream replay --mode step``).

Several streams, and the parts of one recording, are merged in recorded order (``t_host_s``: a
stream that waited for a new part has frames there older than the last ones of the others in the
part before). Whatever the mode, no stream is sent faster than ``max_fps`` frames/s (the receiving
service's per-stream ingest limit, which refuses, loses, frames beyond it). As a service source
(``driver = "replay"``, options
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
from mmstream.source import DEFAULT_MAX_FPS, FrameSender, SourceFrame
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


def _first_key(reader: SessionReader, stream_id: str) -> float | None:
    """The merge key's time of the stream's first frame in the file (None: no frame)."""
    st = reader.stream(stream_id)
    if st.n_frames == 0:
        return None
    t = float(st.index(0, 1)["t_host_s"][0])
    return -math.inf if math.isnan(t) else t


def _parts_in_order(paths: list[Path]) -> tuple[list[tuple[Path, dict[str, float]]], list[str]]:
    """The files sorted by their ``part`` number, each with the time of its streams' first frames,
    and every stream they hold (first seen first); InputError when they are parts of different
    recordings."""
    found = []
    for p in paths:
        with SessionReader(p) as r:
            firsts = {s: t for s in r.streams if (t := _first_key(r, s)) is not None}
            found.append((*r.part, p, r.streams, firsts))
    if len({rid for _, rid, *_ in found}) > 1:
        raise InputError(f"{', '.join(map(str, paths))}: parts of different recordings", reason="mixed_recordings")
    found.sort(key=lambda x: x[0])
    streams = list(dict.fromkeys(s for _, _, _, ss, _ in found for s in ss))
    return [(p, firsts) for _, _, p, _, firsts in found], streams


class Replayer:
    """Replays the frames of ``streams`` (default: every stream) of the session file ``path`` (or
    of the parts ``[path, ...]`` of one recording, merged in recorded order: a part is opened when
    its first frame is due and closed after its last, so only parts overlapping in time are open).

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
        parts, known = _parts_in_order([Path(p) for p in (path if isinstance(path, (list, tuple)) else [path])])
        self.paths = [p for p, _ in parts]
        self.mode, self.speed = mode, float(speed)
        self._stop = stop or threading.Event()
        self.streams = list(streams) if streams else known
        missing = [s for s in self.streams if s not in known]
        if missing:
            raise InputError(f"{self.paths[0]}: no stream {', '.join(missing)} (recorded: {', '.join(known) or 'none'})",
                             reason="unknown_stream")  # fmt: skip
        rank = {s: i for i, s in enumerate(self.streams)}
        starts = ((min(t for s, t in firsts.items() if s in rank), k, p) for k, (p, firsts) in enumerate(parts)
                  if any(s in rank for s in firsts))  # fmt: skip
        self._merged = self._merge(sorted(starts), rank)

    @staticmethod
    def _part_frames(path: Path, rank: dict[str, int]):
        """(key, frame) of the part's frames of the replayed streams, in key order."""
        with SessionReader(path) as reader:
            yield from heapq.merge(*(_keyed(stream_frames(reader, s), rank[s]) for s in reader.streams if s in rank))

    def _merge(self, starts: list[tuple[float, int, Path]], rank: dict[str, int]) -> Iterator[ReplayFrame]:
        """k-way merge over the parts (``starts``: (first frame's time, part index, path), sorted)."""
        todo, heap = list(reversed(starts)), []  # heap: (key, part index, frame, the part's frames)
        try:
            while todo or heap:
                while todo and (not heap or todo[-1][0] <= heap[0][0][0]):  # the part's first frame is due: open it
                    _, k, path = todo.pop()
                    frames = self._part_frames(path, rank)
                    if (first := next(frames, None)) is not None:
                        heapq.heappush(heap, (first[0], k, first[1], frames))
                _, k, f, frames = heap[0]
                if (nxt := next(frames, None)) is None:
                    heapq.heappop(heap)
                else:
                    heapq.heapreplace(heap, (nxt[0], k, nxt[1], frames))
                yield f
        finally:
            for *_, frames in heap:
                frames.close()

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
             on_frame: Callable[[ReplayFrame], None] | None = None,
             max_fps: float = DEFAULT_MAX_FPS) -> int:  # fmt: skip
        """Send every frame to a service's ingest endpoint (one sender per stream, recorded ``seq``
        kept; a new ``session_id`` per replay). In ``step`` mode ``advance()`` is called before each
        frame and returning False stops. Each stream's frames are due at least ``1 / max_fps`` apart
        (the service's ``[ingest] max_fps_per_stream``: a frame sent faster is refused there, lost).
        Returns the number of frames sent."""
        if self.mode == "step" and advance is None:
            raise InputError("step mode needs an advance() callback (e.g. a key press)")
        if not (max_fps > 0 and math.isfinite(max_fps)):
            raise InputError(f"replay max_fps must be a finite number > 0, got {max_fps}")
        due: dict[str, float] = {}  # stream -> when its next frame may leave (by deadline: no oversleep adds up)
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
                now = time.monotonic()
                wait = due.get(f.stream_id, now) - now
                if wait > 0 and self._stop.wait(wait):
                    break
                due[f.stream_id] = now + max(wait, 0.0) + 1.0 / max_fps
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
