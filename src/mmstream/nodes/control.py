"""Control endpoint: set seed, line clicks, ROI, metrics and clinical context per stream; query status.

Request/reply: every request gets exactly one :class:`~mmstream.messages.Reply`, an error included.
"""

from collections.abc import Callable

from mmstream.codec import Decoded
from mmstream.errors import CodecError, MmstreamError
from mmstream.messages import Control, Reply
from mmstream.nodes.analyzer import LINES, StreamSettings
from mmstream.nodes.base import Node, Out, Port


class ControlNode(Node):
    name = "control"
    inputs = (Port("requests", capacity=16, policy="block"),)
    outputs = (Port("replies"), Port("events"))

    def __init__(self, settings: StreamSettings, status: Callable[[], dict], name: str | None = None):
        super().__init__(name)
        self.settings = settings
        self._status = status
        # command -> handler(Control) -> reply data, registered by attached nodes (recorder:
        # record_start, record_stop); a handler raising MmstreamError gets an error reply
        self.handlers: dict[str, Callable[[Control], dict]] = {}
        self.captures = False  # set by what takes the captured frames: the fusion node, the live view

    def on_decode_error(self, exc: CodecError) -> list[Out]:
        """A request that could not be decoded still gets a reply (REQ/REP must alternate)."""
        return self._refused(exc)

    def _refused(self, exc: MmstreamError, stream_id: str | None = None) -> list[Out]:
        """The error reply and the counted rejection event of a refused request."""
        message = str(exc)[:2000]
        return [Out("replies", Reply(ok=False, reason=exc.reason, message=message)), self.reject(exc.reason, message, stream_id)]

    def process(self, port: str, msg: Decoded) -> list[Out]:
        try:
            return self._request(msg)
        except Exception as exc:  # a handler's bug: the client still gets its reply (an unanswered REP socket wedges)
            self.count("internal_error")
            message = f"{type(exc).__name__}: {exc}"[:2000]
            return [Out("replies", Reply(ok=False, reason="internal_error", message=message)),
                    self.event("error", "internal_error", message)]  # fmt: skip

    def _request(self, msg: Decoded) -> list[Out]:
        h = msg.header
        if not isinstance(h, Control):
            return self.on_decode_error(CodecError(f"control takes control messages, got {h.msg_type}",
                                                   reason="unexpected_msg_type"))  # fmt: skip
        self.count(h.command)
        if h.command == "ping":
            return [Out("replies", Reply(ok=True))]
        if h.command == "status":
            return [Out("replies", Reply(ok=True, data=self._status()))]
        if h.command == "capture":  # announced on the bus; the fusion node takes the stream's next frame
            if not self.captures:
                return self._refused(MmstreamError("capture: nothing in this service takes captures (no live view, no "
                                                   "[biomarkers] store)", reason="unsupported_command"), h.stream_id)  # fmt: skip
            return [
                Out("replies", Reply(ok=True, data={"stream_id": h.stream_id})),
                self.event("info", "capture", f"capture on {h.stream_id}", stream_id=h.stream_id),
            ]
        if h.command in ("record_start", "record_stop"):
            return self._handled(h)
        changes = {
            "set_seed": lambda: {"seed_rc": h.seed_rc},
            "set_line": lambda: {f"{line}_at_rc": h.at_rc for line in LINES if h.line in (line, "both")},
            "set_roi": lambda: {"roi": h.roi},
            "set_metrics": lambda: {"metrics": tuple(h.metrics)},
            "set_context": lambda: {"clinical": h.clinical},
        }[h.command]()
        try:
            cfg = self.settings.update(h.stream_id, **changes)
        except MmstreamError as exc:
            return self._refused(exc, h.stream_id)
        return [
            Out("replies", Reply(ok=True, data={"stream_id": h.stream_id, "seed_version": cfg.seed_version,
                                                "lines_version": cfg.lines_version})),  # fmt: skip
            self.event("info", h.command, f"{h.command} on {h.stream_id}", stream_id=h.stream_id),
        ]

    def _handled(self, h: Control) -> list[Out]:
        """A command a registered handler answers (the recorder's); refused ones are counted and
        announced as every refusal is (the recorder announces its own failure as well)."""
        handler = self.handlers.get(h.command)
        if handler is None:
            return self._refused(MmstreamError(f"{h.command}: no node in this service handles it", reason="unsupported_command"))
        try:
            data = handler(h)
        except MmstreamError as exc:
            return self._refused(exc)
        return [Out("replies", Reply(ok=True, data=data)), self.event("info", h.command, h.command)]
