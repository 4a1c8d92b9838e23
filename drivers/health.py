"""What every real source reports about itself: counters, events, and reconnect back-off.

A driver owns one :class:`SourceHealth`. It counts what happened (``frames``, ``dropped_frames``,
``reconnects``, one key per error reason) and turns each problem into an
:class:`~mmstream.messages.Event`; :class:`mmstream.service.Service` forwards those events to the
service's event stream (``sink``) and shows the counters in ``mmstream status`` under ``sources``.
"""

import threading
import time
from collections import Counter, deque

from mmstream.messages import Event

_EVENTS_KEPT = 64


class SourceHealth:
    """Thread-safe counters and events of one source.

    ``sink``, when set, is called with every :class:`~mmstream.messages.Event` (from the driver's
    thread). The same reason is announced at most once per ``min_event_interval_s``; the events
    held back are counted under ``events_suppressed``.
    """

    def __init__(self, node: str, min_event_interval_s: float = 1.0):
        self.node = node
        self.sink = None
        self.min_event_interval_s = min_event_interval_s
        self.counters: Counter = Counter()
        self.errors: Counter = Counter()
        self.events: deque = deque(maxlen=_EVENTS_KEPT)
        self._last_event_t: dict[str, float] = {}
        self._lock = threading.Lock()

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counters[key] += n

    def error(self, reason: str, message: str, level: str = "error") -> Event | None:
        """Count ``reason`` as an error and announce it (rate-limited); returns the event sent, if any."""
        with self._lock:
            self.errors[reason] += 1
        return self.event(level, reason, message)

    def event(self, level: str, reason: str, message: str) -> Event | None:
        """Announce something (rate-limited per reason); returns the event, or None when held back."""
        now = time.monotonic()
        with self._lock:
            last = self._last_event_t.get(reason)
            if last is not None and now - last < self.min_event_interval_s:
                self.counters["events_suppressed"] += 1
                return None
            self._last_event_t[reason] = now
            ev = Event(node=self.node, level=level, reason=reason, message=message[:2000], t_host_s=now)
            self.events.append(ev)
            sink = self.sink
        if sink is not None:
            sink(ev)
        return ev

    def status(self) -> dict:
        with self._lock:
            return {"counters": dict(self.counters), "errors": dict(self.errors)}


class Backoff:
    """Exponential reconnect delays: ``initial_s``, doubled after each failure, capped at ``max_s``;
    :meth:`reset` after a success."""

    def __init__(self, initial_s: float = 0.1, max_s: float = 5.0):
        if not (initial_s > 0 and max_s >= initial_s):
            raise ValueError(f"need 0 < initial_s <= max_s, got {initial_s}, {max_s}")
        self.initial_s = initial_s
        self.max_s = max_s
        self._next = initial_s

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * 2.0, self.max_s)
        return delay

    def reset(self) -> None:
        self._next = self.initial_s

    def wait(self, stop: threading.Event | None) -> bool:
        """Sleep the next delay; True when ``stop`` was set meanwhile (the caller should give up)."""
        delay = self.next_delay()
        if stop is None:
            time.sleep(delay)
            return False
        return stop.wait(delay)
