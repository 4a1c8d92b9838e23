"""Where volume sources send what they produce: volumes to the service's ingest endpoint (PUSH,
topic ``volume.<volume_id>``), events to the service's event bus (or, standalone, the log).

Sources (the SCP's association threads, the watch-folder thread) call :meth:`Outlet.volume` and
:meth:`Outlet.event` from any thread; one sender thread owns the ZeroMQ sockets. Volumes are not
dropped: they are sent over completed connections only, retried while the service does not take them
(``send_retries``), and the queue (``queue_volumes``) pushes back on the sources; only at
:meth:`Outlet.stop`, after its deadline, is what is left counted (``volumes_unsent_at_stop``) and
dropped (the DICOM files stay on disk). Events are best-effort (``events_dropped``).
"""

import json
import logging
import queue
import threading
import time
from collections import Counter, deque

from mmstream.codec import encode
from mmstream.messages import Event
from mmstream.transport import TransportTimeout, make_socket

from .model import LoadedVolume

log = logging.getLogger("mmstream.volumes")
_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class Outlet:
    """Sends volumes and events from a background thread; ``counters`` for status."""

    def __init__(self, ingest_endpoint: str, events_endpoint: str | None = None, *, node: str = "volumes",
                 queue_volumes: int = 16):  # fmt: skip
        self.node = node
        self.counters: Counter = Counter()
        self.rejected: Counter = Counter()
        self._lock = threading.Lock()
        self._q: queue.Queue = queue.Queue(maxsize=queue_volumes)  # volumes: lossless, pushes back
        self._events: deque = deque()  # events: bounded below, oldest dropped (counted)
        self.max_events = 1024
        self._endpoints = (ingest_endpoint, events_endpoint)
        self._stop = threading.Event()
        self._stop_deadline = float("inf")
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"mmstream-{node}-outlet", daemon=True)

    def start(self) -> "Outlet":
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counters[key] += n

    def volume(self, vol: LoadedVolume, volume_id: str | None = None) -> str:
        """Queue a volume for sending; returns its volume id. Blocks while the queue is full."""
        header, voxels = vol.to_message(volume_id)
        self._q.put((header.volume_id, header, voxels))
        return header.volume_id

    def event(self, level: str, reason: str, message: str, *, reject: bool = False) -> None:
        """Announce something (``reject`` also counts it under ``rejected[reason]``)."""
        with self._lock:
            (self.rejected if reject else self.counters)[reason] += 1
        ev = Event(node=self.node, level=level, reason=reason, message=message[:2000], t_host_s=time.monotonic())
        with self._lock:
            if len(self._events) >= self.max_events:
                self._events.popleft()
                self.counters["events_dropped"] += 1
            self._events.append(ev)

    def status(self) -> dict:
        with self._lock:
            return {"counters": dict(self.counters), "rejected": dict(self.rejected), "queued_volumes": self._q.qsize()}

    def _run(self) -> None:
        ingest, events = self._endpoints
        vol_sock = ev_sock = None
        try:
            vol_sock = make_socket("push", ingest, bind=False, hwm=4, immediate=True)
            ev_sock = make_socket("push", events, bind=False, hwm=256) if events else None
        except BaseException as exc:
            if vol_sock is not None:
                vol_sock.close()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while not (self._stop.is_set() and self._q.empty() and not self._events):
                self._send_events(ev_sock)
                try:
                    _, header, arr = self._q.get(timeout=0.05)
                except queue.Empty:
                    continue
                parts = encode(header, [arr])
                while True:
                    if self._stop_deadline < time.monotonic():
                        self.count("volumes_unsent_at_stop")
                        break
                    try:
                        vol_sock.send(parts, timeout_ms=500)
                        self.count("volumes_sent")
                        break
                    except TransportTimeout:
                        self.count("send_retries")
        finally:
            for s in (vol_sock, ev_sock):
                if s is not None:
                    s.close(linger_ms=2000)

    def _send_events(self, sock) -> None:
        while True:
            with self._lock:
                if not self._events:
                    return
                ev = self._events.popleft()
            if sock is not None:
                if not sock.try_send(encode(ev)):
                    self.count("events_dropped")
            else:
                log.log(_LEVELS[ev.level], json.dumps({"node": ev.node, "reason": ev.reason, "message": ev.message}))

    def stop(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (retrying for up to ``timeout_s``), then close."""
        self._stop_deadline = time.monotonic() + timeout_s
        self._stop.set()
        self._thread.join(timeout_s + 3)
