"""Node building blocks: declared ports with capacity and overflow policy, counters, outputs.

A node is a plain object: ``process(port, msg)`` takes one decoded message that arrived on an input
port and returns the messages to send, as :class:`Out` values naming an output port. Tests call
``process`` directly; :mod:`mmstream.graph` wires the ports to sockets and runs each node in a
thread. Nodes never import zmq.
"""

import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from mmstream.codec import Decoded
from mmstream.messages import Event

Policy = Literal["latest", "fifo", "block"]


@dataclass(frozen=True)
class Port:
    """A declared port.

    ``policy`` says what happens when ``capacity`` messages are waiting: ``latest`` keeps the newest
    ``capacity`` messages *per stream* and drops the oldest (live path, counted); ``fifo`` drops the
    newest arrival (counted); ``block`` stops reading the socket so that ZeroMQ's high-water mark
    pushes back on the sender (lossless path).
    """

    name: str
    capacity: int = 4
    policy: Policy = "fifo"


@dataclass(frozen=True)
class Out:
    """A message to send on output port ``port``: header model plus its arrays in buffer order."""

    port: str
    header: object
    arrays: tuple[np.ndarray, ...] = ()


class PortQueue:
    """The waiting room of one input port, applying the port's policy; counts what it drops."""

    def __init__(self, port: Port):
        self.port = port
        self.dropped = 0
        self._by_key: OrderedDict[str, deque] = OrderedDict()
        self._fifo: deque = deque()

    def __len__(self) -> int:
        return len(self._fifo) + sum(len(q) for q in self._by_key.values())

    def full(self) -> bool:
        return self.port.policy == "block" and len(self._fifo) >= self.port.capacity

    def put(self, msg: Decoded) -> None:
        if self.port.policy == "latest":
            key = getattr(msg.header, "stream_id", None) or ""
            q = self._by_key.setdefault(key, deque())
            if len(q) >= self.port.capacity:
                q.popleft()
                self.dropped += 1
            q.append(msg)
        elif len(self._fifo) >= self.port.capacity and self.port.policy == "fifo":
            self.dropped += 1
        else:
            self._fifo.append(msg)

    def get(self) -> Decoded | None:
        """Next message: FIFO order, or round-robin over streams for ``latest`` (a stream whose queue
        empties is forgotten: the cost stays with the streams that have messages waiting)."""
        if self._fifo:
            return self._fifo.popleft()
        if not self._by_key:
            return None
        key, q = next(iter(self._by_key.items()))
        msg = q.popleft()
        if q:
            self._by_key.move_to_end(key)
        else:
            del self._by_key[key]
        return msg


FPS_WINDOW_S = 5.0  # the frame rate reported is over the frames of the last 5 s
FPS_MIN_SPAN_S = 1.0  # ... and over at least 1 s (two frames 20 ms apart are not 50 fps)


@dataclass
class Telemetry:
    """Rolling latency samples (seconds), arrival times (``time.monotonic()`` s) and frame counts
    per stream, for at most ``max_streams`` streams (a long-running service sees many stream ids
    come and go)."""

    window: int = 2048
    latency_s: dict[str, deque] = field(default_factory=dict)
    frames: Counter = field(default_factory=Counter)
    arrivals: dict[str, deque] = field(default_factory=dict)
    last_t: dict[str, float] = field(default_factory=dict)

    max_streams: int = 256  # beyond this a new stream takes the place of the one seen longest ago

    def add(self, stream_id: str, t_now: float, latency_s: float | None) -> None:
        if stream_id not in self.frames and len(self.frames) >= self.max_streams:
            old = min(self.last_t, key=self.last_t.get)
            for table in (self.frames, self.arrivals, self.last_t, self.latency_s):
                table.pop(old, None)
        self.frames[stream_id] += 1
        self.arrivals.setdefault(stream_id, deque(maxlen=self.window)).append(t_now)
        self.last_t[stream_id] = t_now
        if latency_s is not None:
            self.latency_s.setdefault(stream_id, deque(maxlen=self.window)).append(latency_s)

    def summary(self, now: float | None = None) -> dict:
        """Per stream: frames, the current fps, seconds since its last frame (``idle_s``) and
        latency percentiles (ms). The fps counts the frames of the last ``FPS_WINDOW_S`` seconds
        before ``now`` (default ``time.monotonic()``) over that time, or over the time since the
        oldest arrival held when that is shorter (a new stream; a stream faster than ``window``
        frames per window); None for the first ``FPS_MIN_SPAN_S`` of a stream, for a single frame
        and for a stream stopped or paused a whole window. A stream slower than one frame per
        window: its last interval."""
        out = {}
        now = time.monotonic() if now is None else now
        for sid, n in self.frames.items():
            times = self.arrivals[sid]
            start = max(now - FPS_WINDOW_S, times[0])
            in_window = sum(1 for t in times if t > start)  # intervals ending in (start, now]
            if now - start < FPS_MIN_SPAN_S or times[-1] < now - FPS_WINDOW_S or not in_window:
                fps = None
            elif len(times) >= 2 and times[-1] - times[-2] >= FPS_WINDOW_S:
                fps = 1.0 / (times[-1] - times[-2])
            else:
                fps = in_window / (now - start)
            lat = np.asarray(self.latency_s.get(sid, ()), dtype=np.float64)
            out[sid] = {
                "frames": n,
                "fps": fps,
                "idle_s": now - self.last_t[sid],
                "latency_p50_ms": float(np.percentile(lat, 50) * 1e3) if lat.size else None,
                "latency_p99_ms": float(np.percentile(lat, 99) * 1e3) if lat.size else None,
            }
        return out


class Node:
    """Base class: ports, counters (thread-safe), rejection events."""

    name: str = "node"
    inputs: tuple[Port, ...] = ()
    outputs: tuple[Port, ...] = ()

    def __init__(self, name: str | None = None):
        if name is not None:
            self.name = name
        self._lock = threading.Lock()
        self.counters: Counter = Counter()
        self.rejected: Counter = Counter()

    def process(self, port: str, msg: Decoded) -> list[Out]:
        raise NotImplementedError

    def tick(self, now: float) -> list[Out]:
        """Called by the runner after each poll (at least every ~50 ms, ``now`` = monotonic s), for
        periodic work such as flushing a file; returns messages to send."""
        return []

    def close(self) -> None:
        """Called once by the runner's thread when the graph stops (release files)."""

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counters[key] += n

    def reject(self, reason: str, message: str, stream_id: str | None = None, seq: int | None = None) -> Out:
        """Count a rejection and return the event announcing it (on the ``events`` port)."""
        with self._lock:
            self.rejected[reason] += 1
        return self.event("warning", reason, message, stream_id, seq)

    def event(self, level, reason: str, message: str, stream_id=None, seq=None) -> Out:
        return Out("events", Event(node=self.name, level=level, reason=reason, message=message[:2000],
                                   stream_id=stream_id, seq=seq, t_host_s=time.monotonic()))  # fmt: skip

    def status(self) -> dict:
        with self._lock:
            return {"counters": dict(self.counters), "rejected": dict(self.rejected)}
