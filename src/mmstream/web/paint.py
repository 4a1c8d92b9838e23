"""The paint window of one page: the frames sent to it and not yet reported painted.

The server sends a page a new frame only while fewer than ``window`` frames of its window are
unreported; ``ack_timeout_s`` after the last frame sent without a report it opens a new window (a
hidden tab paints nothing). A ``painted`` report is matched to a frame sent to this page, once per
sending: a report of a frame of the window frees a place in it; a report of an earlier unreported
frame (the window moved on) is still the page's paint of that frame. The last :data:`SENT_MEMORY`
unreported frames are remembered; a report of an older one (a tab hidden for minutes reports its
queued paints when shown again) is ignored. Any other report (a frame never sent to the page, or
one reported already) is refused by the server.
"""

from collections import OrderedDict

SENT_MEMORY = 128  # unreported frames remembered per page (a hidden tab gets one per ack timeout)


class PaintWindow:
    """Frames are keyed by ``(stream_id, seq)``."""

    def __init__(self, window: int, ack_timeout_s: float):
        self.size, self.ack_timeout_s = window, ack_timeout_s
        self.window: set[tuple[str, int]] = set()
        self.t_sent = 0.0  # time.monotonic() of the last frame sent
        self._unreported: OrderedDict[tuple[str, int], int] = OrderedDict()  # -> times sent, oldest first
        self._forgotten: dict[str, int] = {}  # stream -> highest seq dropped from the memory unreported

    def may_send(self, now: float) -> bool:
        return len(self.window) < self.size or now - self.t_sent >= self.ack_timeout_s

    def sent(self, key: tuple[str, int], now: float) -> None:
        if len(self.window) >= self.size:  # the ack timeout passed: a new window (the others stay reportable)
            self.window.clear()
        self.window.add(key)
        self.t_sent = now
        self._unreported[key] = self._unreported.pop(key, 0) + 1
        while len(self._unreported) > SENT_MEMORY:
            old, _ = self._unreported.popitem(last=False)
            self._forgotten[old[0]] = max(old[1], self._forgotten.get(old[0], -1))
            self.window.discard(old)

    def restart(self) -> None:
        """Another stream is shown: a new window (reports of the old stream's frames still match)."""
        self.window.clear()

    def report(self, key: tuple[str, int]) -> str:
        """Match a paint report: ``window`` (a place freed), ``late`` (sent before the window moved
        on), ``forgotten`` (older than the memory: ignore it) or ``unknown`` (never sent to this
        page, or reported already: refuse it)."""
        n = self._unreported.get(key)
        if n is None:
            return "forgotten" if key[1] <= self._forgotten.get(key[0], -1) else "unknown"
        if n > 1:
            self._unreported[key] = n - 1
        else:
            del self._unreported[key]
        if key in self.window:
            self.window.discard(key)
            return "window"
        return "late"
