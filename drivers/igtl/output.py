"""OpenIGTLink output of the live metrics, for 3D Slicer (OpenIGTLinkIF as client) or any pyigtl client.

:class:`IgtlMetricsOutput` is a graph node on the service's ``bus`` (every metrics message and
event the publisher sends). For each metrics message it sends, to every connected client:

* a STRING message, device ``string_device``: compact JSON ``{"stream_id", "seq", "t_device_s",
  "spacing_mm", "echo_mean", "echo_std", "csa_area_px", "csa_area_mm2", "csa_perimeter_mm",
  "csa_confidence", "thickness_px", "thickness_mm", "thickness_confidence", "quality": {...}}``
  (null where unknown);
* a POINT message, device ``point_device``, when the CSA centroid and the spacing are known (the
  metrics' ``spacing_mm``: null when unknown or refused by the analysis, as 150 mm per pixel): one
  point named after the stream, group ``csa_centroid``, at ``(col * col_mm, row * row_mm, 0)`` --
  the centroid in the image's own millimetre frame (i = column, j = row; origin at pixel (0, 0)),
  i.e. where it lies on an IMAGE sent with an IJK-to-world of ``diag(col_mm, row_mm, 1)``.

Events go out as STRING messages on ``event_device`` (``"<level> <node> <reason>: <message>"``,
non-ASCII characters escaped), except this node's own (about its clients: other clients' addresses,
and each refused client would otherwise refresh every idle one).
The server (:class:`IgtlServer`) accepts up to ``max_clients``; a client that reads too slowly
loses its oldest messages (``client_queue_messages`` each, counted ``dropped_messages``). What
clients send is read and checked (:mod:`~mmstream_drivers.igtl.wire`): garbage closes that client
only (counted ``garbage``, event), well-framed messages are counted and ignored.

A slot is kept by a client that shows life: a client with messages waiting that takes none of
their bytes for ``client_idle_s`` (it does not read; its socket's buffers are kept small so that
shows within seconds) is disconnected (``clients_stalled``, event ``igtl_client_stalled``), and
when every slot is taken a new client takes the place of the one that showed no life (no byte
taken or sent) for longest, if that is ``client_idle_s`` or more (``clients_evicted``, event
``igtl_client_evicted``); otherwise it is refused (``igtl_too_many_clients``). TCP keepalive
(probes after ``KEEPALIVE_IDLE_S``) ends connections of a host that is gone.
"""

import json
import selectors
import socket
import threading
import time
from collections import deque

from pyigtl.messages import PointMessage, StringMessage

from mmstream.codec import Decoded
from mmstream.errors import ConfigError, ProtocolError
from mmstream.nodes.base import Node, Out, Port
from mmstream_drivers.igtl.wire import HEADER_BYTES, check_body, parse_header

_MAX_CLIENT_BODY = 1 << 20  # clients have no business sending us more than 1 MiB at once

ACCEPT_PAUSE_S = 1.0  # after a failed accept (out of descriptors): seconds before listening again
CLIENT_IDLE_S = 10.0  # a client taking no byte for this long: disconnected if messages wait for it, else evictable
CLIENT_SNDBUF_BYTES = 64 * 1024  # per client socket: a client that does not read shows within seconds
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_PROBES = 10, 5, 3  # a vanished host: dropped after ~25 s


class _Client:
    def __init__(self, sock: socket.socket, peer: str, queue_len: int, now: float):
        self.sock = sock
        self.peer = peer
        self.queue_len = queue_len
        self.t_alive = now  # connected, or last byte taken from us or sent to us
        self.out: deque[memoryview] = deque()  # whole messages waiting
        self.current: memoryview | None = None  # the rest of the message being sent (never dropped)
        self.inbuf = bytearray()
        self.need: dict | None = None  # header fields while waiting for a body


class IgtlServer:
    """A small OpenIGTLink server: broadcast packed messages, read and check what clients send.

    ``on_event(level, reason, message)`` and ``count(key)`` report to the owner (called from the
    server thread).
    """

    def __init__(self, host: str, port: int, *, max_clients: int, queue_len: int, on_event, count,
                 idle_s: float = CLIENT_IDLE_S):  # fmt: skip
        self._listen = socket.create_server((host, port), reuse_port=False)
        self._listen.setblocking(False)
        self.address = self._listen.getsockname()[:2]
        self.max_clients = max_clients
        self.queue_len = queue_len
        self.idle_s = idle_s
        self._on_event, self._count = on_event, count
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._listen, selectors.EVENT_READ, "listen")
        self._accept_paused_until: float | None = None  # after a failed accept (EMFILE): not listening until then
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._clients: dict[int, _Client] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="igtl-output", daemon=True)

    @property
    def n_clients(self) -> int:
        with self._lock:
            return len(self._clients)

    def start(self) -> "IgtlServer":
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and close every socket (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        try:
            self._wake_w.send(b"x")
        except BlockingIOError:
            pass  # a wake-up is already pending
        if self._thread.is_alive():
            self._thread.join(5.0)
        for c in list(self._clients.values()):
            c.sock.close()
        for s in (self._listen, self._wake_r, self._wake_w):
            s.close()
        self._sel.close()

    def broadcast(self, packed: bytes) -> None:
        """Queue one packed message for every client (thread-safe)."""
        view = memoryview(packed)
        with self._lock:
            for c in self._clients.values():
                if len(c.out) >= c.queue_len:
                    c.out.popleft()  # the oldest not yet started: the byte stream stays whole
                    self._count("dropped_messages")
                c.out.append(view)
            if not self._clients:
                return
        try:
            self._wake_w.send(b"x")
        except BlockingIOError:
            pass  # a wake-up is already pending

    # -- server thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._accept_paused_until is not None and time.monotonic() >= self._accept_paused_until:
                self._accept_paused_until = None
                self._sel.register(self._listen, selectors.EVENT_READ, "listen")
            with self._lock:
                for c in self._clients.values():
                    writing = c.out or c.current is not None
                    self._sel.modify(c.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0), c)
            for key, mask in self._sel.select(timeout=min(0.5, self.idle_s / 4)):
                if key.data == "listen":
                    self._accept()
                elif key.data == "wake":
                    self._wake_r.recv(4096)
                else:
                    if mask & selectors.EVENT_READ and not self._read(key.data):
                        continue
                    if mask & selectors.EVENT_WRITE:
                        self._write(key.data)
            self._drop_stalled(time.monotonic())

    def _drop_stalled(self, now: float) -> None:
        """Disconnect the clients with messages waiting that took no byte for ``idle_s``."""
        with self._lock:
            stalled = [c for c in self._clients.values()
                       if (c.out or c.current is not None) and now - c.t_alive >= self.idle_s]  # fmt: skip
        for c in stalled:
            self._count("clients_stalled")
            self._on_event("warning", "igtl_client_stalled", f"OpenIGTLink client {c.peer} took no data for "
                           f"{now - c.t_alive:.0f} s: disconnected")  # fmt: skip
            self._drop(c)

    def _evictable(self, now: float) -> "_Client | None":
        """The client that showed no life for longest, if that is ``idle_s`` or more."""
        with self._lock:
            c = min(self._clients.values(), key=lambda c: c.t_alive, default=None)
        return c if c is not None and now - c.t_alive >= self.idle_s else None

    def _accept(self) -> None:
        try:
            sock, addr = self._listen.accept()
        except BlockingIOError:
            return
        except OSError as exc:  # e.g. EMFILE: out of descriptors. Say so, stop listening for a second, keep serving
            self._count("accept_failed")
            self._on_event("error", "igtl_accept_failed", f"OpenIGTLink output cannot accept a client: {exc.strerror or exc}")
            self._sel.unregister(self._listen)  # the pending connection would make select() return at once
            self._accept_paused_until = time.monotonic() + ACCEPT_PAUSE_S
            return
        now = time.monotonic()
        if self.n_clients >= self.max_clients:
            idle = self._evictable(now)
            if idle is None:
                self._count("refused_clients")
                self._on_event("warning", "igtl_too_many_clients",
                               f"OpenIGTLink client refused: {self.max_clients} connected, none idle")
                sock.close()
                return
            self._count("clients_evicted")
            self._on_event("info", "igtl_client_evicted", f"OpenIGTLink client {idle.peer} idle for "
                           f"{now - idle.t_alive:.0f} s: disconnected for a new client")  # fmt: skip
            self._drop(idle)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CLIENT_SNDBUF_BYTES)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for opt, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE_S), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
                           ("TCP_KEEPCNT", KEEPALIVE_PROBES)):  # fmt: skip
            if hasattr(socket, opt):  # Linux; elsewhere the system's keepalive timing
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)
        c = _Client(sock, f"{addr[0]}:{addr[1]}", self.queue_len, now)
        with self._lock:
            self._clients[sock.fileno()] = c
        self._sel.register(sock, selectors.EVENT_READ, c)
        self._count("clients_connected")

    def _drop(self, c: _Client) -> None:
        with self._lock:
            self._clients.pop(c.sock.fileno(), None)
        self._sel.unregister(c.sock)
        c.sock.close()

    def _read(self, c: _Client) -> bool:
        try:
            data = c.sock.recv(65536)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            self._count("clients_disconnected")
            self._drop(c)
            return False
        c.t_alive = time.monotonic()
        c.inbuf += data
        try:
            self._parse(c)
        except ProtocolError as exc:
            self._count("garbage")
            self._on_event("warning", exc.reason, f"OpenIGTLink client {c.peer} sent garbage, disconnected: {exc}")
            self._drop(c)
            return False
        return True

    def _parse(self, c: _Client) -> None:
        while True:
            if c.need is None:
                if len(c.inbuf) < HEADER_BYTES:
                    return
                c.need = parse_header(bytes(c.inbuf[:HEADER_BYTES]), _MAX_CLIENT_BODY)
                del c.inbuf[:HEADER_BYTES]
            if len(c.inbuf) < c.need["body_size"]:
                return
            body = bytes(c.inbuf[: c.need["body_size"]])
            del c.inbuf[: c.need["body_size"]]
            check_body(c.need, body)
            self._count("client_messages")
            c.need = None

    def _write(self, c: _Client) -> None:
        while True:
            if c.current is None:
                with self._lock:
                    if not c.out:
                        return
                    c.current = c.out.popleft()
            try:
                n = c.sock.send(c.current)
            except BlockingIOError:
                return
            except OSError:
                self._count("clients_disconnected")
                self._drop(c)
                return
            if n:
                c.t_alive = time.monotonic()
            c.current = c.current[n:] if n < len(c.current) else None
            if c.current is not None:
                return  # the socket is full; wait for the next EVENT_WRITE


def metrics_record(h) -> dict:
    """The JSON record of one metrics message (see the module docstring)."""
    e, c, t, q = h.echogenicity, h.csa, h.thickness, h.quality
    return {
        "stream_id": h.stream_id,
        "seq": h.parent[1],
        "t_device_s": h.t_device_s,
        "spacing_mm": h.spacing_mm,
        "echo_mean": None if e is None else e.mean,
        "echo_std": None if e is None else e.std,
        "csa_area_px": None if c is None else c.area_px,
        "csa_area_mm2": None if c is None else c.area_mm2,
        "csa_perimeter_mm": None if c is None else c.perimeter_mm,
        "csa_confidence": None if c is None else c.confidence,
        "thickness_px": None if t is None else t.thickness_px,
        "thickness_mm": None if t is None else t.thickness_mm,
        "thickness_confidence": None if t is None else t.confidence,
        "quality": None if q is None else q.model_dump(mode="json"),
    }


class IgtlMetricsOutput(Node):
    """Graph node: metrics and events from the bus -> OpenIGTLink clients (see module docstring).

    :meth:`start` binds the server (the service calls it once the graph runs); the graph's runner
    calls :meth:`close` when it stops and :meth:`tick` every ~50 ms, which sends the server's events.
    """

    name = "igtl-output"
    inputs = (Port("bus", capacity=64, policy="latest"),)  # newest per stream: a live display
    outputs = (Port("events"),)

    def __init__(self, host: str = "127.0.0.1", port: int = 18945, *, string_device: str = "mmstream_metrics",
                 point_device: str = "mmstream_csa", event_device: str = "mmstream_event", max_clients: int = 8,
                 client_queue_messages: int = 64, client_idle_s: float = CLIENT_IDLE_S):
        super().__init__()
        self.devices = {"string": string_device, "point": point_device, "event": event_device}
        self._pending: deque[Out] = deque(maxlen=256)
        self._server_args = dict(host=host, port=port, max_clients=max_clients, queue_len=client_queue_messages,
                                 idle_s=client_idle_s)  # fmt: skip
        self.server: IgtlServer | None = None

    def start(self) -> "IgtlMetricsOutput":
        """Bind and serve; ConfigError when the address cannot be bound."""
        try:
            self.server = IgtlServer(**self._server_args, on_event=self._server_event, count=self.count).start()
        except OSError as exc:
            a = self._server_args
            raise ConfigError(f"igtl_output: cannot listen on {a['host']}:{a['port']} ({exc})") from exc
        return self

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    def tick(self, now: float) -> list[Out]:
        """Events of the server thread (garbage from a client, refused clients) since the last tick."""
        out = []
        while self._pending:
            out.append(self._pending.popleft())
        return out

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` actually bound (port 0 in the config = a free port)."""
        return self.server.address

    def _server_event(self, level: str, reason: str, message: str) -> None:
        with self._lock:
            self.rejected[reason] += 1
        self._pending.append(self.event(level, reason, message))

    def process(self, port: str, msg: Decoded) -> list[Out]:
        h = msg.header
        if h.msg_type == "metrics":
            self._send(StringMessage(json.dumps(metrics_record(h), separators=(",", ":")),
                                     device_name=self.devices["string"]))
            c = h.csa
            if c is not None and h.spacing_mm is not None:
                (row, col), (row_mm, col_mm) = c.centroid_rc, h.spacing_mm
                self._send(PointMessage(positions=[col * col_mm, row * row_mm, 0.0], names=h.stream_id[:64],
                                        groups="csa_centroid", device_name=self.devices["point"]))
            self.count("metrics_sent")
        elif h.msg_type == "event" and h.node != self.name:  # its own, about its clients, are not theirs to see
            text = f"{h.level} {h.node} {h.reason}: {h.message}".encode("ascii", "backslashreplace").decode("ascii")
            self._send(StringMessage(text, device_name=self.devices["event"]))
            self.count("events_sent")
        return []

    def _send(self, message) -> None:
        if self.server is not None:
            self.server.broadcast(message.pack())
