"""HTTP and websocket server of the bedside view, in its own thread with its own asyncio loop.

``GET /`` (and the page's ``app.js``, ``style.css``) serves the page; ``/ws`` is the websocket.
Connections are admitted at accept (:mod:`mmstream.web.admission`). A connection starts with a
``hello`` (carrying the token when one is configured, compared in constant time); then the server
pushes, per page, the newest frame of the selected stream (at most :data:`WINDOW` frames not yet
reported painted, :mod:`mmstream.web.paint`: latest-wins end to end), its overlay, the fused summaries of the current
patient and a status message each second, and answers commands (:mod:`mmstream.web.commands`).
Bad client messages are refused with an ``error`` message and counted; the connection is closed
after :data:`MAX_REJECTS` of them, or at once for a message over ``max_message_bytes``. A page's
messages are handled at most :data:`MAX_MESSAGES_PER_S` a second, and a page that does not answer
a ping within :data:`PONG_TIMEOUT_S` (it takes no data) is dropped.
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
from websockets.protocol import State

from mmstream.config import WebSection
from mmstream.errors import ConfigError, InputError
from mmstream.messages import ClinicalContext
from mmstream.nodes.analyzer import StreamSettings
from mmstream.nodes.base import Telemetry
from mmstream.web.admission import Admission
from mmstream.web.commands import PageCommands
from mmstream.web.control_client import ControlClient
from mmstream.web.http import StaticPages, head_only, loopback_host, refuse_method, same_origin, tls_context
from mmstream.web.live import FrameView, LiveView
from mmstream.web.paint import PaintWindow
from mmstream.web.protocol import Hello, WebInputError, parse_command

WINDOW = 2  # frames sent to a page and not yet reported painted
ACK_TIMEOUT_S = 1.0  # after this without a paint report, send again (a hidden tab paints nothing)
HELLO_TIMEOUT_S = 5.0
OPEN_TIMEOUT_S = 5.0  # the TLS handshake, and then the HTTP upgrade, must each complete within this
CLOSE_TIMEOUT_S = 2.0  # a closing connection (websocket close, TLS shutdown) is aborted after this
PING_INTERVAL_S = 1.0  # a page is pinged this long after its last pong
PONG_TIMEOUT_S = 5.0  # a page whose pong does not come within this takes no data: dropped (its slot freed)
MAX_MESSAGES_PER_S = 200  # a page's messages handled per second (and in a burst); beyond, its reading waits
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
    paint: PaintWindow = field(default_factory=lambda: PaintWindow(WINDOW, ACK_TIMEOUT_S))
    rejects: int = 0
    budget: float = MAX_MESSAGES_PER_S  # messages the page may send now (see WebServer._throttle)
    t_budget: float = field(default_factory=time.monotonic)
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
        self._admission: Admission | None = None

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

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        refuse = lambda reason: self._count(reason, rejected=True)  # noqa: E731
        self._admission = Admission(self.cfg.max_clients, refuse, self._ssl, OPEN_TIMEOUT_S, CLOSE_TIMEOUT_S)
        try:  # TLS (when configured) is run by the admission, after a connection is counted
            server = await serve(
                self._handle, self.cfg.host, self.cfg.port, process_request=self._http,
                max_size=self.cfg.max_message_bytes, max_queue=16, compression=None, server_header=None, close_timeout=CLOSE_TIMEOUT_S,
                open_timeout=OPEN_TIMEOUT_S, ping_interval=None, create_connection=self._admission.connection,
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
        self._admission.abort_pending()
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
        """The answer to an HTTP request (None: go on with the websocket upgrade); HEAD gets the
        headers of GET without the body."""
        response = self._http_response(connection, request)
        return head_only(response) if request.method == "HEAD" and response is not None else response

    def _http_response(self, connection: ServerConnection, request) -> Response | None:
        try:
            if self._token is None and not loopback_host(request, self.cfg.host):
                self._count("bad_host", rejected=True)  # e.g. DNS rebinding: another site under its own name
                return connection.respond(403, "host not allowed\n")
            refused = refuse_method(request.method, request.path)
            if refused is not None:
                self._count("bad_method", rejected=True)
                return refused
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
        """Send to one page (ConnectionClosed, with the close codes, when it is closed). Only this
        page's own task waits here; a page that takes no data is dropped by :meth:`_watch`."""
        await page.ws.send(data)

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
            tasks = (asyncio.create_task(self._send_loop(page)), asyncio.create_task(self._watch(page)))
            try:
                async for raw in ws:
                    if page.closing:
                        continue
                    await self._throttle(page)
                    try:
                        await self._on_message(page, raw)
                    except ConnectionClosed:
                        raise
                    except Exception as exc:  # a bug must not end the connection or the service
                        self._count("internal_error")
                        self._last_error = f"{type(exc).__name__}: {exc}"
            finally:
                for task in tasks:
                    task.cancel()
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
        self._admission.promote(page.ws)
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

    async def _throttle(self, page: _Page) -> None:
        """Take one message of the page's budget (MAX_MESSAGES_PER_S a second, as many in a burst);
        when it is spent, wait: the page's messages queue up and TCP slows it down, and the event
        loop serves the other pages meanwhile."""
        now = time.monotonic()
        page.budget = min(MAX_MESSAGES_PER_S, page.budget + (now - page.t_budget) * MAX_MESSAGES_PER_S)
        page.t_budget = now
        if page.budget < 1:
            self._count("throttled")
            await asyncio.sleep((1 - page.budget) / MAX_MESSAGES_PER_S)
            page.budget, page.t_budget = 1.0, time.monotonic()
        page.budget -= 1

    async def _watch(self, page: _Page) -> None:
        """Ping the page PING_INTERVAL_S after each pong. A ping travels behind the data sent before
        it, so a page that takes no data (a frozen tab, a tablet asleep, a cut network) does not
        answer: after PONG_TIMEOUT_S its connection is aborted and its slot freed (counted
        ``stalled``). A hidden tab or a slow tablet still reads, and answers."""
        while True:
            await asyncio.sleep(PING_INTERVAL_S)
            try:
                async with asyncio.timeout(PONG_TIMEOUT_S):
                    await (await page.ws.ping())
            except ConnectionClosed:
                return
            except TimeoutError:
                if page.ws.state is State.OPEN:  # a closing connection is ended by websockets (close_timeout)
                    self._count("stalled", rejected=True)
                    page.closing = True
                    page.ws.transport.abort()
                return

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
        if not page.paint.may_send(now):
            return  # the page is still painting: the next wake sends the newest frame
        last = page.frame_sent
        if last is not None and last.session_id == fv.session_id and fv.seq > last.seq + 1:
            self._count("frames_not_sent", fv.seq - last.seq - 1)
        page.frame_sent, key = fv, (page.stream_id, fv.seq)
        try:  # JPEG encoding (~1.5 ms, GIL released) off the event loop, once per frame for all pages
            packet = await asyncio.get_running_loop().run_in_executor(self._encoder, fv.packet)
        except InputError as exc:
            self._count(exc.reason)
            return
        page.paint.sent(key, now)
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
