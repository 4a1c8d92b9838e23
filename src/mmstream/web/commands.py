"""What the page's commands do: the command half of :class:`~mmstream.web.server.WebServer`.

Each valid command is answered with a ``reply`` (``id`` echoed). Seed, line clicks, ROI, context,
capture and recording go to the service as Control requests on its control endpoint, exactly as
from any other client; a seed, line click or ROI outside the shown frame is refused before that.
"""

import time

from pydantic import ValidationError

from mmstream.messages import Control
from mmstream.web.protocol import WebInputError, parse_command

_GEOMETRY = {"set_seed": "seed_rc", "set_line": "at_rc", "set_roi": "roi"}  # command -> its image-pixel field


class PageCommands:
    """Mixin of :class:`~mmstream.web.server.WebServer` (uses its live view, control client,
    counters and page set)."""

    async def _on_message(self, page, raw) -> None:
        try:
            cmd = parse_command(raw, self.cfg.max_message_bytes)
        except WebInputError as exc:
            await self._refuse(page, exc.reason, str(exc))
            return
        self._count(f"cmd_{cmd.cmd}")
        sid = page.stream_id
        if cmd.cmd == "hello":
            await self._refuse(page, "repeated_hello", "already connected")
        elif cmd.cmd == "clock":
            await self._send_json(page, {"type": "clock", "t_page_ms": cmd.t_page_ms, "t_server_s": time.monotonic()})
        elif cmd.cmd == "painted":
            await self._painted(page, cmd)
        elif cmd.cmd == "select_stream":
            if cmd.stream_id not in self.live.streams():
                await self._refuse(page, "unknown_stream", f"no stream {cmd.stream_id!r}")
                return
            page.stream_id, page.frame_sent, page.overlay_sent = cmd.stream_id, None, None
            page.paint.restart()
            await self._send_context(page)
        elif cmd.cmd in _GEOMETRY:
            await self._set_geometry(page, cmd)
        elif cmd.cmd == "set_context":
            ok = await self._forward(page, cmd, command="set_context", stream_id=sid, clinical=cmd.clinical)
            if ok:
                await self._send_context(page)
                for p in list(self._pages):  # the others by their own send loops: a stalled one holds nobody up
                    if p is not page and p.stream_id == sid:
                        p.context_due = True
                        p.wake.set()
        else:  # record_start, record_stop, capture: the service's own commands
            await self._forward(page, cmd, command=cmd.cmd, stream_id=sid)

    async def _painted(self, page, cmd) -> None:
        """A paint report, matched to a frame sent to this page, once (:mod:`mmstream.web.paint`):
        only those count in the display latency and fps; a report of a frame not sent to the page,
        or reported already, is refused."""
        match = page.paint.report((cmd.stream_id, cmd.seq))
        if match == "unknown":
            await self._refuse(page, "unknown_frame", f"frame {cmd.seq} of {cmd.stream_id!r} was not sent to this page "
                                                      "or was reported already")  # fmt: skip
            return
        if match == "forgotten" or cmd.stream_id != page.stream_id:  # late, from the stream shown before: ignored
            self._count(f"painted_{'forgotten' if match == 'forgotten' else 'other_stream'}")
            return
        if cmd.latency_ms is not None:
            with self._lock:
                self.display.add(cmd.stream_id, time.monotonic(), cmd.latency_ms / 1e3)
        if match == "window":
            page.wake.set()

    async def _reply(self, page, cmd, ok: bool, reason: str | None = None, message: str | None = None,
                     data: dict | None = None) -> None:  # fmt: skip
        await self._send_json(page, {"type": "reply", "id": cmd.id, "cmd": cmd.cmd, "ok": ok, "reason": reason,
                                     "message": message, "data": data or {}})  # fmt: skip

    async def _forward(self, page, cmd, **control) -> bool:
        """Send a Control request to the service; reply to the page with its answer."""
        if control.get("stream_id") is None and cmd.cmd not in ("record_start", "record_stop"):
            await self._reply(page, cmd, False, "no_stream", "no stream is shown yet")
            return False
        try:
            msg = Control(**control)
        except ValidationError as exc:
            await self._reply(page, cmd, False, "invalid_command", str(exc.errors()[0]["msg"]))
            return False
        rep = await self.control.request(msg)
        await self._reply(page, cmd, rep.ok, rep.reason, rep.message, rep.data)
        return rep.ok

    async def _set_geometry(self, page, cmd) -> None:
        """Seed, line click or ROI, checked against the shown frame's shape before it goes to the service."""
        fv = self.live.frame(page.stream_id) if page.stream_id else None
        args = cmd.model_dump(exclude={"cmd", "id"})  # the Control arguments: seed_rc, line and at_rc, or roi
        value = args[_GEOMETRY[cmd.cmd]]
        if value is not None:
            if fv is None:
                await self._reply(page, cmd, False, "no_frame", "no frame shown yet")
                return
            rows, cols = fv.shape
            if cmd.cmd != "set_roi":  # a point
                inside = value[0] <= rows - 1 and value[1] <= cols - 1  # pixel centres, as the analysis takes them
            else:
                inside = value[0] < value[2] <= rows and value[1] < value[3] <= cols
            if not inside:
                self._count("outside_image", rejected=True)
                await self._reply(page, cmd, False, "outside_image", f"{value} is outside the {rows}x{cols} image")
                return
        await self._forward(page, cmd, command=cmd.cmd, stream_id=page.stream_id, **args)
