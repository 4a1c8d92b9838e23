"""The web server's way into the service: Control requests (REQ) and events (PUSH).

ZeroMQ sockets are not thread-safe, so both sockets live in one worker thread; the asyncio server
awaits :meth:`ControlClient.request` and :meth:`ControlClient.event`, which run there. A request
that gets no reply in time resets the REQ socket (REQ cannot send twice without a reply).
"""

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from mmstream.codec import decode, encode
from mmstream.errors import CodecError
from mmstream.messages import Control, Event, Reply
from mmstream.transport import Curve, Socket, TransportTimeout, make_socket


class ControlClient:
    """``control_endpoint``: the service's control endpoint; ``events``: the graph's events spec.
    ConfigError at construction when the CURVE keys do not load (not a page whose taps go nowhere)."""

    def __init__(self, control_endpoint: str, events_endpoint: str, curve: Curve | None = None, timeout_ms: int = 3000):
        self._control = control_endpoint
        self._events_endpoint = events_endpoint
        self._curve = curve
        self._timeout_ms = timeout_ms
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmstream-web-control")
        self._req: Socket | None = None
        self._push: Socket | None = None
        try:
            self._pool.submit(self._open_req).result()
        except BaseException:
            self._pool.shutdown(wait=False)
            raise

    def _open_req(self) -> None:
        self._req = make_socket("req", self._control, bind=False, curve=self._curve)

    def _request(self, msg: Control) -> Reply:
        if self._req is None:
            self._open_req()
        try:
            self._req.send(encode(msg), timeout_ms=self._timeout_ms)
            return decode(self._req.recv(timeout_ms=self._timeout_ms)).header
        except (TransportTimeout, CodecError) as exc:
            self._req.close()
            self._req = None
            reason = "control_timeout" if isinstance(exc, TransportTimeout) else exc.reason
            return Reply(ok=False, reason=reason, message=f"control endpoint: {exc}")

    def _event(self, level: str, reason: str, message: str, stream_id: str | None) -> None:
        if self._push is None:
            self._push = make_socket("push", self._events_endpoint, bind=False)
        ev = Event(node="web", level=level, reason=reason, message=message[:2000], stream_id=stream_id,
                   t_host_s=time.monotonic())  # fmt: skip
        self._push.try_send(encode(ev))

    async def request(self, msg: Control) -> Reply:
        """Send one Control request and await its Reply (never raises for a missing service)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._request, msg)

    async def event(self, level: str, reason: str, message: str, stream_id: str | None = None) -> None:
        """Publish an event from the web view with the service's own events."""
        await asyncio.get_running_loop().run_in_executor(self._pool, self._event, level, reason, message, stream_id)

    def close(self) -> None:
        def _close():
            for s in (self._req, self._push):
                if s is not None:
                    s.close()

        self._pool.submit(_close).result(timeout=5)
        self._pool.shutdown(wait=True)
