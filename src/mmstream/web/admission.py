"""Admission of the live view's TCP connections: counted and bounded at accept, before a TLS or
HTTP byte is read, so idle or slow connects can neither use up the process's file descriptors nor
lock pages out.

A connection is *pending* from accept until its page's ``hello`` is accepted (TLS handshake, HTTP
request, websocket upgrade and hello included); then it is a page, bounded by ``max_clients``.
Bounds, checked at accept:

- pending connections of one peer address: at most :data:`MAX_PENDING_PER_PEER`. A new one beyond
  closes that address's oldest pending connection (counted ``too_many_from_peer``): a handshake
  takes milliseconds, so connections held half-open (slowloris) go first, and the newest, a page
  being opened, gets through;
- all connections, pages or not: at most ``max_clients`` + :data:`MAX_PENDING`. A new one beyond
  closes the oldest pending connection of any address pending for over :data:`PENDING_GRACE_S`
  (counted ``slow_pending``; another address's handshake in progress is left its time); when there
  is none, the new connection is refused at once: its TCP connection is reset without a byte
  (counted ``too_many_connections``).
"""

import asyncio
import ssl
import time
from collections.abc import Callable

from websockets.asyncio.server import ServerConnection

MAX_PENDING = 16  # connections not yet pages, beyond max_clients
MAX_PENDING_PER_PEER = 8  # pending connections of one address (a browser opens up to 6 at a page load)
PENDING_GRACE_S = 1.0  # pending for less than this, never closed to make room under the total bound


class Admission:
    """Connection bookkeeping of one server (event loop thread only). ``count(reason)`` counts a
    refusal; ``tls``: the server's TLS context, the handshake made after admission within
    ``handshake_timeout_s`` (and the TLS shutdown of a closing connection within ``close_timeout_s``)."""

    def __init__(self, max_clients: int, count: Callable[[str], None], tls: ssl.SSLContext | None,
                 handshake_timeout_s: float, close_timeout_s: float):  # fmt: skip
        self.limit = max_clients + MAX_PENDING
        self.count = count
        self.tls = tls
        self.handshake_timeout_s, self.close_timeout_s = handshake_timeout_s, close_timeout_s
        self.connections = 0  # open TCP connections, pages or not
        self._pending: dict[Gate, float] = {}  # -> time.monotonic() at accept; oldest first

    def connection(self, *args, **kwargs) -> "Gate":
        """The ``create_connection`` of websockets' ``serve``: the protocol of an accepted connection."""
        return Gate(self, AdmittedConnection(*args, **kwargs))

    def admit(self, gate: "Gate") -> bool:
        """Count a connection just accepted; False (counted) if it is refused."""
        now = time.monotonic()
        self.connections += 1
        gate.counted = True
        self._pending[gate] = now
        same_peer = [g for g in self._pending if g.peer == gate.peer]
        if len(same_peer) > MAX_PENDING_PER_PEER:
            self.count("too_many_from_peer")
            same_peer[0].abort()
        if self.connections > self.limit:
            stale = next((g for g in list(self._pending)[:-1] if now - self._pending[g] > PENDING_GRACE_S), None)
            if stale is None:
                self.count("too_many_connections")
                self.release(gate)
                return False
            self.count("slow_pending")
            stale.abort()
        return True

    def promote(self, ws: ServerConnection) -> None:
        """``ws`` is a page now (its hello accepted): no longer pending."""
        self._pending.pop(ws.gate, None)

    def release(self, gate: "Gate") -> None:
        """The connection ended (or was refused): uncounted, once."""
        if gate.counted:
            gate.counted = False
            self.connections -= 1
            self._pending.pop(gate, None)

    def abort_pending(self) -> None:
        """Close every connection still in its TLS handshake (the server stops)."""
        for gate in [g for g in self._pending if not g.handed_over]:
            gate.abort()


class AdmittedConnection(ServerConnection):
    """A websocket connection that tells its gate when it ends."""

    gate: "Gate"

    def connection_lost(self, exc):
        self.gate.admission.release(self.gate)
        super().connection_lost(exc)


class Gate(asyncio.Protocol):
    """The protocol of an accepted TCP connection until it is handed to its websocket connection
    ``inner``: admitted or refused at accept, then (with TLS) the TLS handshake. What arrives between
    the end of the handshake and the hand-over is passed on in order."""

    def __init__(self, admission: Admission, inner: AdmittedConnection):
        self.admission, self.inner = admission, inner
        inner.gate = self
        self.transport: asyncio.BaseTransport | None = None
        self.peer: str | None = None
        self.counted = False
        self.handed_over = False
        self._lost = False
        self._handshake: asyncio.Task | None = None  # the TLS handshake
        self._early: list[tuple[str, tuple]] = []  # protocol calls between the TLS handshake and the hand-over

    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else str(peer)
        if not self.admission.admit(self):
            transport.abort()
        elif self.admission.tls is None:
            self._hand_over(transport)
        else:
            transport.pause_reading()  # the TLS layer reads the first byte (start_tls resumes reading)
            self._handshake = asyncio.get_running_loop().create_task(self._start_tls(transport))

    async def _start_tls(self, transport) -> None:
        a = self.admission
        try:
            tls = await asyncio.get_running_loop().start_tls(
                transport, self, a.tls, server_side=True,
                ssl_handshake_timeout=a.handshake_timeout_s, ssl_shutdown_timeout=a.close_timeout_s,
            )  # fmt: skip
        except Exception:  # failed or timed out (ConnectionAbortedError)
            self.admission.release(self)
            return
        if tls is None or self._lost:  # closed (or aborted to make room) during or right after the handshake
            self.admission.release(self)
            return
        self.transport = tls
        self._hand_over(tls)

    def _hand_over(self, transport) -> None:
        self.handed_over = True
        transport.set_protocol(self.inner)
        self.inner.connection_made(transport)
        for name, args in self._early:
            getattr(self.inner, name)(*args)
        self._early.clear()

    def abort(self) -> None:
        self.admission.release(self)
        if self.transport is not None:
            self.transport.abort()

    # while the gate is the protocol: a refused connection, or one in (or just past) its TLS handshake
    def data_received(self, data: bytes) -> None:
        self._early.append(("data_received", (data,)))

    def eof_received(self) -> None:
        self._early.append(("eof_received", ()))

    def pause_writing(self) -> None:
        self._early.append(("pause_writing", ()))

    def resume_writing(self) -> None:
        self._early.append(("resume_writing", ()))

    def connection_lost(self, exc) -> None:
        self._lost = True
        self.admission.release(self)
