"""HTTP and websocket server of the bedside view, in its own thread with its own asyncio loop.

``GET /`` (and the page's ``app.js``, ``style.css``) serves the page; ``/ws`` is the websocket.
A connection starts with a ``hello`` (carrying the token when one is configured, compared in
constant time); then the server pushes, per page, the newest frame of the selected stream (at
most :data:`WINDOW` frames not yet reported painted: latest-wins end to end), its overlay, the
fused summaries of the current patient and a status message each second, and answers commands
(:mod:`mmstream.web.commands`).
Bad client messages are refused with an ``error`` message and counted; the connection is closed
after :data:`MAX_REJECTS` of them, or at once for a message over ``max_message_bytes``.
"""

import asyncio
import hashlib
import hmac
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import MultipleValuesError
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Response

from mmstream.config import WebSection
from mmstream.errors import ConfigError, InputError
from mmstream.messages import ClinicalContext
from mmstream.nodes.analyzer import StreamSettings
from mmstream.nodes.base import Telemetry
from mmstream.web.commands import PageCommands
from mmstream.web.control_client import ControlClient
from mmstream.web.http import StaticPages, loopback_host, same_origin, tls_context
from mmstream.web.live import FrameView, LiveView
from mmstream.web.protocol import Hello, WebInputError, parse_command

WINDOW = 2  # frames sent to a page and not yet reported painted
ACK_TIMEOUT_S = 1.0  # after this without a paint report, send again (a hidden tab paints nothing)
HELLO_TIMEOUT_S = 5.0
OPEN_TIMEOUT_S = 5.0  # the HTTP upgrade must complete within this
SEND_TIMEOUT_S = 2.0  # a page that takes no data for this long is dropped (a stalled tablet holds nobody up)
MAX_PENDING = 16  # connections not yet pages (handshake, hello) beyond max_clients: more are closed at once
MAX_REJECTS = 20  # invalid messages tolerated per connection
WANTED_WAIT_S = 5.0  # a reloaded page waits this long for its stream (a restarted service sees it again) before another
CLOSE_REASONS = {1009: "too_large", 1007: "invalid_utf8", 1002: "protocol_error"}  # websocket close code -> reason
STATUS_PERIOD_S = 1.0
@dataclass(eq=False)
class _Page:
    """One connected page."""

    ws: ServerConnection
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    stream_id: str | None = None
    frame_sent: FrameView | None = None
    overlay_sent: dict | None = None
    fused_sent: dict | None = None
    notes_sent: dict = field(default_factory=dict)
    captures_sent: tuple | None = None
    status: dict | None = None
    in_flight: int = 0
    t_frame_sent: float = 0.0
    rejects: int = 0
    closing: bool = False
    context_due: bool = False  # another page changed the stream's clinical context: send it
    wanted: str | None = None  # the stream the page asked for at hello (kept across a reload), if not there yet
    t_hello: float = 0.0  # time.monotonic() of the hello


class WebServer(PageCommands):
    """Serve the view of ``live``; commands go to the service through ``control``."""

    def __init__(self, cfg: WebSection, live: LiveView, control: ControlClient, settings: StreamSettings,
                 service_status: Callable[[], dict]):  # fmt: skip
        self.cfg = cfg
        self.live = live
        self.control = control
        self.settings = settings
        self._service_status = service_status
        self._token = None if cfg.token is None else hashlib.sha256(cfg.token.get_secret_value().encode()).digest()
        self._static = StaticPages()
        self.display = Telemetry()
        self.counters: Counter = Counter()
        self.rejected: Counter = Counter()
        self._lock = threading.Lock()
        self._pages: set[_Page] = set()
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmstream-web-jpeg")
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._last_error: str | None = None  # last internal error (in status)
        self.port: int | None = None
        self._connections = 0  # open TCP connections, pages or not (event loop thread only)

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host = f"[{self.cfg.host}]" if ":" in self.cfg.host else self.cfg.host
        return f"{'https' if self.cfg.tls_cert_file else 'http'}://{host}:{self.port}/"


    def start(self, timeout_s: float = 10.0) -> "WebServer":
        """Bind and serve; ConfigError if the address cannot be bound or the TLS files not loaded."""
        try:
            self._ssl = tls_context(self.cfg.tls_cert_file, self.cfg.tls_key_file)
        except ConfigError:
            self.control.close()
            raise
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="mmstream-web", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s) or self._error is not None:
            err = self._error or TimeoutError("web server did not start")
            self.control.close()
            raise ConfigError(f"cannot start the web view on {self.cfg.host}:{self.cfg.port}: {err}") from err
        self.live.on_change = self._notify
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self.live.on_change = lambda stream_id: None
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._encoder.shutdown(wait=True)
        self.control.close()

    def _connection_class(self) -> type[ServerConnection]:
        """Connections counted from accept: beyond ``max_clients`` + MAX_PENDING they are closed at
        once (unauthenticated idle connects must not use up the process's file descriptors)."""
        web = self

        class Counted(ServerConnection):
            def connection_made(self, transport):
                super().connection_made(transport)
                web._connections += 1
                if web._connections > web.cfg.max_clients + MAX_PENDING:
                    web._count("too_many_connections", rejected=True)
                    transport.abort()

            def connection_lost(self, exc):
                web._connections -= 1
                super().connection_lost(exc)

        return Counted

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        try:
            server = await serve(
                self._handle, self.cfg.host, self.cfg.port, process_request=self._http,
                max_size=self.cfg.max_message_bytes, max_queue=16, compression=None, server_header=None, close_timeout=2,
                ssl=self._ssl, open_timeout=OPEN_TIMEOUT_S, create_connection=self._connection_class(),
            )  # fmt: skip
        except OSError as exc:
            self._error = exc
            self._ready.set()
            return
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        ticker = asyncio.create_task(self._status_loop())
        await self._stop.wait()
        ticker.cancel()
        server.close()
        await server.wait_closed()

    def status(self) -> dict:
        """The ``web`` entry of the service status: pages, display latency, counters, rejects."""
        with self._lock:
            return {"web": {
                "url": self.url, "pages": len(self._pages), "display": self.display.summary(),
                "counters": dict(self.counters), "rejected": dict(self.rejected), "last_error": self._last_error,
            }}  # fmt: skip

    # -- plumbing -------------------------------------------------------------------------------
    def _count(self, key: str, n: int = 1, rejected: bool = False) -> None:
        with self._lock:
            (self.rejected if rejected else self.counters)[key] += n

    def _notify(self, stream_id: str) -> None:
        """Called from the LiveView's thread: wake the pages showing ``stream_id`` ("" = all)."""
        if self._pages:
            try:
                self._loop.call_soon_threadsafe(self._wake, stream_id)
            except RuntimeError:  # loop closed while stopping
                pass

    def _wake(self, stream_id: str) -> None:
        for p in self._pages:
            if not stream_id or p.stream_id in (stream_id, None):
                p.wake.set()

    def _http(self, connection: ServerConnection, request) -> Response | None:
        try:
            if self._token is None and not loopback_host(request, self.cfg.host):
                self._count("bad_host", rejected=True)  # e.g. DNS rebinding: another site under its own name
                return connection.respond(403, "host not allowed\n")
            if urlsplit(request.path).path == "/ws":
                if not same_origin(request):  # another site's page in the same browser
                    self._count("bad_origin", rejected=True)
                    return connection.respond(403, "origin not allowed\n")
                if len(self._pages) >= self.cfg.max_clients:
                    self._count("too_many_pages", rejected=True)
                    return connection.respond(503, "too many pages connected\n")
                return None
        except (ValueError, MultipleValuesError):  # malformed or repeated Host / Origin
            self._count("bad_header", rejected=True)
            return connection.respond(400, "bad request headers\n")
        return self._static.response(request.path) or connection.respond(404, "not found\n")

    async def _send(self, page: _Page, data) -> None:
        """Send to one page; a page that does not take it within SEND_TIMEOUT_S is dropped (its
        connection aborted) and ConnectionClosed raised, so nothing waits on a stalled peer."""
        try:
            await asyncio.wait_for(page.ws.send(data), SEND_TIMEOUT_S)
        except TimeoutError:
            self._count("send_timeout", rejected=True)
            page.closing = True
            page.ws.transport.abort()
            raise ConnectionClosed(None, None) from None

    async def _send_json(self, page: _Page, obj: dict) -> None:
        try:
            text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
        except (ValueError, TypeError):  # e.g. a NaN in some node's status: skip that message, counted
            self._count(f"unserialisable_{obj.get('type')}")
            return
        await self._send(page, text)

    async def _refuse(self, page: _Page, reason: str, message: str) -> None:
        page.rejects += 1
        self._count(reason, rejected=True)
        await self._send_json(page, {"type": "error", "reason": reason, "message": message[:500]})
        if page.rejects >= MAX_REJECTS and not page.closing:
            page.closing = True  # close while the read loop drains (a paused reader would miss the close)
            asyncio.get_running_loop().create_task(page.ws.close(1008, "too many invalid messages"))

    # -- one page -------------------------------------------------------------------------------
    async def _handle(self, ws: ServerConnection) -> None:
        page = _Page(ws)
        self._count("connections")
        try:
            if not await self._hello(page):
                return
            sender = asyncio.create_task(self._send_loop(page))
            try:
                async for raw in ws:
                    if page.closing:
                        continue
                    try:
                        await self._on_message(page, raw)
                    except ConnectionClosed:
                        raise
                    except Exception as exc:  # a bug must not end the connection or the service
                        self._count("internal_error")
                        self._last_error = f"{type(exc).__name__}: {exc}"
            finally:
                sender.cancel()
        except ConnectionClosed as exc:  # closed by the websocket layer for what the peer sent: counted
            codes = {getattr(exc.sent, "code", None), getattr(exc.rcvd, "code", None)}
            for reason in (r for code, r in CLOSE_REASONS.items() if code in codes):
                self._count(reason, rejected=True)
        finally:
            self._pages.discard(page)

    async def _hello(self, page: _Page) -> bool:
        try:
            raw = await asyncio.wait_for(page.ws.recv(), HELLO_TIMEOUT_S)
            cmd = parse_command(raw, self.cfg.max_message_bytes)
            if not isinstance(cmd, Hello):
                raise WebInputError("the first message must be a hello", reason="no_hello")
        except TimeoutError:
            cmd, reason = None, "no_hello"
        except WebInputError as exc:
            cmd, reason = None, exc.reason
        if cmd is not None and self._token is not None:
            given = hashlib.sha256((cmd.token or "").encode()).digest()
            if not hmac.compare_digest(given, self._token):
                cmd, reason = None, "unauthorized"
        if cmd is not None and len(self._pages) >= self.cfg.max_clients:  # upgrades that raced past _http's check
            cmd, reason = None, "too_many_pages"
        if cmd is None:
            self._count(reason, rejected=True)
            await self._send_json(page, {"type": "error", "reason": reason, "message": "connection refused"})
            await page.ws.close(1008, reason)
            return False
        if not self._pages:  # a new viewing: display fps and latency start afresh
            with self._lock:
                self.display = Telemetry()
        self._pages.add(page)  # before anything is awaited: the max_clients check above stays true
        streams = self.live.streams()
        page.wanted, page.t_hello = cmd.stream_id, time.monotonic()
        page.stream_id = self._choose_stream(page, streams)  # None: _send_once chooses again
        await self._send_json(page, {"type": "hello", "stream_id": page.stream_id, "streams": streams,
                                     "token_required": self._token is not None})  # fmt: skip
        await self._send_context(page)
        return True

    def _context(self, stream_id: str | None) -> ClinicalContext:
        return ClinicalContext() if stream_id is None else self.settings.get(stream_id).clinical

    async def _send_context(self, page: _Page) -> None:
        c = self._context(page.stream_id)
        await self._send_json(page, {"type": "context", "stream_id": page.stream_id, "clinical": c.model_dump(mode="json")})
        page.fused_sent, page.captures_sent = None, None
        page.wake.set()

    async def _send_changes(self, page: _Page) -> None:
        """Overlay, fused summary, captures and notes of the page's stream, each when it changed."""
        sid = page.stream_id
        ov = self.live.overlay(sid)
        if ov is not None and ov is not page.overlay_sent:
            page.overlay_sent = ov
            await self._send_json(page, ov)
        fused = self.live.fused(sid)
        if fused is not None and fused is not page.fused_sent:
            page.fused_sent = fused
            await self._send_json(page, fused)
        c = self._context(sid)
        key = (c.patient_id, c.site, c.side)
        if page.captures_sent != (key, self.live.captures.version):
            page.captures_sent = (key, self.live.captures.version)
            await self._send_json(page, self.live.captures.summary(key))
        for k in (sid, ""):
            note = self.live.note(k)
            if note is not None and note is not page.notes_sent.get(k):
                page.notes_sent[k] = note
                await self._send_json(page, note)
        if page.status is not None:
            st, page.status = page.status, None
            await self._send_json(page, st)

    async def _send_loop(self, page: _Page) -> None:
        """Push what changed for this page, then the newest frame (within the paint window)."""
        while True:
            await page.wake.wait()
            page.wake.clear()
            try:
                await self._send_once(page)
            except ConnectionClosed:
                return
            except Exception as exc:  # a bug must not silently end this page's stream
                self._count("internal_error")
                self._last_error = f"{type(exc).__name__}: {exc}"

    def _choose_stream(self, page: _Page, streams: list[str]) -> str | None:
        """The stream a page shows: the one it asked for at hello when there; else, once it has
        waited ``WANTED_WAIT_S`` for it (or asked for none), ``[web] stream_id`` or the first seen."""
        if page.wanted in streams:
            return page.wanted
        if page.wanted is None or time.monotonic() - page.t_hello > WANTED_WAIT_S:
            return self.cfg.stream_id or (streams[0] if streams else None)
        return None

    async def _send_once(self, page: _Page) -> None:
        """What changed for this page, then the newest frame if the paint window allows."""
        if page.context_due:
            page.context_due = False
            await self._send_context(page)
        if page.stream_id is None:  # nothing shown yet
            page.stream_id = self._choose_stream(page, self.live.streams())
            if page.stream_id is None:
                return
            await self._send_context(page)
        await self._send_changes(page)
        fv = self.live.frame(page.stream_id)
        if fv is None or fv is page.frame_sent:
            return
        now = time.monotonic()
        if page.in_flight >= WINDOW and now - page.t_frame_sent < ACK_TIMEOUT_S:
            return  # the page is still painting: the next wake sends the newest frame
        last = page.frame_sent
        if last is not None and last.session_id == fv.session_id and fv.seq > last.seq + 1:
            self._count("frames_not_sent", fv.seq - last.seq - 1)
        page.in_flight = 1 if page.in_flight >= WINDOW else page.in_flight + 1
        page.frame_sent, page.t_frame_sent = fv, now
        try:  # JPEG encoding (~1.5 ms, GIL released) off the event loop, once per frame for all pages
            packet = await asyncio.get_running_loop().run_in_executor(self._encoder, fv.packet)
        except InputError as exc:
            self._count(exc.reason)
            return
        await self._send(page, packet)
        self._count("frames_sent")

    async def _status_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(STATUS_PERIOD_S)
            if not self._pages:
                continue
            try:
                st = await loop.run_in_executor(None, self._service_status)
            except Exception as exc:  # the status of some node failed: keep the view running
                self._count("status_failed")
                self._last_error = f"{type(exc).__name__}: {exc}"
                continue
            drops = {name: sum(n.get("queue_drops", {}).values()) + sum(n.get("send_drops", {}).values())
                     for name, n in st.get("nodes", {}).items()}  # fmt: skip
            view_drops = drops.pop(self.live.name, 0)  # this view's own latest-wins skips
            with self._lock:
                display = self.display.summary()
                view_drops += self.counters["frames_not_sent"]
            for page in list(self._pages):
                page.status = {
                    "type": "status", "stream_id": page.stream_id, "streams": self.live.streams(),
                    "stream": st.get("streams", {}).get(page.stream_id), "display": display.get(page.stream_id),
                    "service_drops": sum(drops.values()), "view_drops": view_drops,
                    "recording": st.get("recording"), "uptime_s": st.get("uptime_s"),
                }  # fmt: skip
                page.wake.set()
