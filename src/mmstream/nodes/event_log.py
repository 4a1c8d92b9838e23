"""Event log: the service's events on its console (the ``mmstream.events`` logger, stderr of
``mmstream serve`` and ``demo``), so a failing source, a stopped recording or rejected frames show
where the operator looks, not only in ``mmstream status``."""

import logging
import time

from mmstream.messages import Event
from mmstream.nodes.base import Node, Port

log = logging.getLogger("mmstream.events")
LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class EventLog(Node):
    """Logs each event at its level; at most one line per (node, reason, stream) every
    ``interval_s``; the lines held back meanwhile are counted in a line of their own once the
    interval is over (a flood of rejected frames is a line or two per interval, not one per frame;
    a second source failing like the first is not lost)."""

    name = "event_log"
    inputs = (Port("bus", capacity=1024, policy="fifo"),)
    outputs = ()

    def __init__(self, interval_s: float = 5.0, name: str | None = None):
        super().__init__(name)
        self.interval_s = interval_s
        # (node, reason, stream) -> [time logged, events held back since, the last of them]
        self._last: dict[tuple[str, str, str | None], list] = {}

    def process(self, port: str, msg) -> list:
        h = msg.header
        if not isinstance(h, Event):
            return []
        key, now = (h.node, h.reason, h.stream_id), time.monotonic()
        entry = self._last.get(key)
        if entry is not None and now - entry[0] < self.interval_s:
            entry[1] += 1
            entry[2] = h
            self.count("held_back")
            return []
        self._last[key] = [now, 0, None]
        self._log(h, "")
        return []

    def tick(self, now: float) -> list:
        self._report_held(now, final=False)
        return []

    def close(self) -> None:
        self._report_held(time.monotonic(), final=True)  # the service stops: nothing held back is lost

    def _report_held(self, now: float, final: bool) -> None:
        for key, entry in list(self._last.items()):
            if now - entry[0] < self.interval_s and not final:
                continue
            if entry[1]:  # held back: say how many, with the last one's text
                self._log(entry[2], f" ({entry[1]} like this in the last {now - entry[0]:.0f} s)")
            del self._last[key]  # quiet for a whole interval: forgotten (the table stays small)

    def _log(self, h: Event, more: str) -> None:
        where = f" [{h.stream_id}{'' if h.seq is None else f' seq {h.seq}'}]" if h.stream_id else ""
        log.log(LEVELS[h.level], "%s %s%s: %s%s", h.node, h.reason, where, h.message, more)
        self.count("logged")


def attach_event_log(graph) -> EventLog:
    """Subscribe an EventLog to the graph's bus (events only)."""
    from mmstream.graph import SocketSpec

    node = EventLog()
    graph.attach(node, {"bus": SocketSpec("sub", graph.internal["bus"], bind=False, subscribe=("event.",))}, {})
    return node
