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
    """Logs each event at its level; at most one line per (node, reason) every ``interval_s``, the
    lines held back meanwhile counted in the next one (a flood of rejected frames is one line per
    interval, not one per frame)."""

    name = "event_log"
    inputs = (Port("bus", capacity=1024, policy="fifo"),)
    outputs = ()

    def __init__(self, interval_s: float = 5.0, name: str | None = None):
        super().__init__(name)
        self.interval_s = interval_s
        self._last: dict[tuple[str, str], tuple[float, int]] = {}  # (node, reason) -> (time logged, held back since)

    def process(self, port: str, msg) -> list:
        h = msg.header
        if not isinstance(h, Event):
            return []
        key, now = (h.node, h.reason), time.monotonic()
        t_last, held = self._last.get(key, (float("-inf"), 0))
        if now - t_last < self.interval_s:
            self._last[key] = (t_last, held + 1)
            self.count("held_back")
            return []
        self._last[key] = (now, 0)
        where = f" [{h.stream_id}{'' if h.seq is None else f' seq {h.seq}'}]" if h.stream_id else ""
        more = f" (+{held} more in the last {now - t_last:.0f} s)" if held else ""
        log.log(LEVELS[h.level], "%s %s%s: %s%s", h.node, h.reason, where, h.message, more)
        self.count("logged")
        return []


def attach_event_log(graph) -> EventLog:
    """Subscribe an EventLog to the graph's bus (events only)."""
    from mmstream.graph import SocketSpec

    node = EventLog()
    graph.attach(node, {"bus": SocketSpec("sub", graph.internal["bus"], bind=False, subscribe=("event.",))}, {})
    return node
