"""The web view's tap on the graph: the newest frame, overlay, fused summary and note of each stream.

:class:`LiveView` is a node attached to the graph's internal taps (``frames`` and ``bus``). Its
frame port is latest-wins, and it keeps only each stream's newest frame (encoded when a page is
sent it, see :class:`FrameView`), so the view never falls behind the source. It turns metrics
messages into JSON-ready overlays, keeps the newest ``fused`` message per stream (with the last
biopsy ranking of its patient), the last notable event, and mirrors the three-image captures
(the fusion node's ``captured`` events; without fusion, the frame after each ``capture``
command). The web server reads these snapshots from its own thread, woken by ``on_change``.
"""

import threading
import time
from collections import deque
from collections.abc import Callable

import cv2
import numpy as np

from mmstream.calibration import PendingCaptures
from mmstream.codec import Decoded
from mmstream.errors import CodecError, InputError
from mmstream.messages import Event, Frame, Fused, Metrics
from mmstream.nodes.analyzer import StreamSettings
from mmstream.nodes.base import Node, Out, Port
from mmstream.web.captures import CaptureBook, capture_numbers
from mmstream.web.protocol import frame_packet, polyline

MAX_LINE_POINTS = 256  # thickness boundary lines are thinned to at most this many (row, col) points
RECENT_OVERLAYS = 64  # per stream, to find the frame a ``captured`` event names
NOTED = {"captured", "capture_refused", "recording_started", "recording_stopped", "recording_armed", "session_restart"}


class FrameView:
    """The newest frame of a stream. :meth:`packet` (the binary websocket message) JPEG-encodes it
    on first use, so only frames actually sent to a page are encoded, once for all pages."""

    def __init__(self, meta: dict, image: np.ndarray, jpeg_quality: int, session_id: str):
        self.seq: int = meta["seq"]
        self.session_id = session_id
        self.t_received = time.monotonic()
        self.shape: tuple[int, int] = tuple(image.shape)
        self._meta, self._image, self._quality = meta, image, jpeg_quality
        self._packet: bytes | None = None
        self._lock = threading.Lock()

    def packet(self) -> bytes:
        """``frame_packet`` of the JPEG image; EncodeError if OpenCV cannot encode it."""
        with self._lock:
            if self._packet is None:
                ok, jpeg = cv2.imencode(".jpg", self._image, [cv2.IMWRITE_JPEG_QUALITY, self._quality])
                if not ok:
                    raise InputError(f"cannot JPEG-encode frame {self.seq}", reason="encode_failed")
                self._packet, self._image = frame_packet(self._meta, jpeg.tobytes()), None
            return self._packet


def frame_time_s(stamps: dict, t_host_s: float | None) -> float | None:
    """The frame's reference time on the host's monotonic clock: the driver's send stamp, else
    ingest (the same start point as the service's end-to-end latency)."""
    return stamps.get("sent", stamps.get("ingest", t_host_s))


def overlay(h: Metrics, arrays: dict, settings: StreamSettings) -> dict:
    """The JSON ``metrics`` message of one metrics header and its arrays (see docs/webview.md)."""
    cfg = settings.get(h.stream_id)
    deep, sup = arrays.get("deep_rc"), arrays.get("superficial_rc")
    step = 1 if deep is None else max(1, -(-len(deep) // MAX_LINE_POINTS))
    s = h.stamps
    e2e = s.get("published", s.get("analyzed"))
    start = frame_time_s(s, None)
    dump = lambda m: None if m is None else m.model_dump(mode="json")  # noqa: E731
    return {
        "type": "metrics",
        "stream_id": h.stream_id,
        "seq": h.parent[1],
        "spacing_mm": h.spacing_mm,
        "clinical": h.clinical.model_dump(mode="json"),
        "echogenicity": dump(h.echogenicity),
        "csa": dump(h.csa),
        "thickness": dump(h.thickness),
        "quality": dump(h.quality),
        "contour_rc": polyline(arrays.get("contour_rc")),
        "superficial_rc": polyline(None if sup is None else sup[::step]),
        "deep_rc": polyline(None if deep is None else deep[::step]),
        "roi": cfg.roi,
        "annotations": h.annotations,
        "service_latency_ms": None if e2e is None or start is None else round((e2e - start) * 1e3, 2),
    }


class LiveView(Node):
    """Attached node: ``frames`` (internal frame tap) and ``bus`` (metrics, events, fused)."""

    name = "web"
    inputs = (Port("frames", capacity=8, policy="latest"), Port("bus", capacity=256, policy="fifo"))
    outputs = (Port("events"),)

    def __init__(self, settings: StreamSettings, jpeg_quality: int = 80, fusion_attached: bool = False,
                 name: str | None = None, idle_s: float = 60.0):  # fmt: skip
        """``idle_s``: a stream without frames for this long is forgotten (its frame, overlays, notes),
        as ingest forgets it."""
        super().__init__(name)
        self.idle_s = idle_s
        self._next_sweep = 0.0
        self.settings = settings
        self.jpeg_quality = int(jpeg_quality)
        self.fusion_attached = fusion_attached
        self.on_change: Callable[[str], None] = lambda stream_id: None
        self.captures = CaptureBook()
        self._state_lock = threading.Lock()
        self._frames: dict[str, FrameView] = {}
        self._overlays: dict[str, dict] = {}
        self._recent: dict[str, tuple[str, deque]] = {}  # stream -> (session, its newest overlays)
        self._pending_captures = PendingCaptures()
        self._fused: dict[str, dict] = {}
        self._biopsy: dict[str | None, list] = {}  # patient -> last ranking (fused messages repeat it only when it changes)
        self._notes: dict[str, dict] = {}
        self._last_seq: dict[str, tuple[str, int]] = {}

    # -- node side (runner thread) -------------------------------------------------------------
    def process(self, port: str, msg: Decoded) -> list[Out]:
        h = msg.header
        if isinstance(h, Frame):
            self._frame(h, msg.arrays["image"])
        elif isinstance(h, Metrics):
            ov = overlay(h, msg.arrays, self.settings)
            with self._state_lock:
                self._overlays[h.stream_id] = ov
                session, recent = self._recent.get(h.stream_id, (None, None))
                if session != h.session_id:  # a restarted source numbers its frames from 0 again
                    recent = deque(maxlen=RECENT_OVERLAYS)
                    self._recent[h.stream_id] = (h.session_id, recent)
                recent.append(ov)
                take = self._pending_captures.take(h.stream_id, h.stamps)
            if take:
                self._capture(ov)
            self.on_change(h.stream_id)
        elif isinstance(h, Event):
            self._event(h)
        elif isinstance(h, Fused):
            self._fused_message(h)
        return []

    def on_decode_error(self, exc: CodecError) -> list[Out]:
        """A tap message that does not decode is counted, not re-announced (it came from the graph)."""
        self.count(f"undecodable_{exc.reason}")
        return []

    def _frame(self, h: Frame, image) -> None:
        prev = self._last_seq.get(h.stream_id)
        if prev is not None and prev[0] == h.session_id and h.seq > prev[1] + 1:
            self.count("frames_skipped", h.seq - prev[1] - 1)  # latest-wins at this node, or a tap gap
        with self._state_lock:
            self._last_seq[h.stream_id] = (h.session_id, h.seq)
        self.count("frames_seen")
        meta = {
            "stream_id": h.stream_id,
            "seq": h.seq,
            "t_frame_s": frame_time_s(h.stamps, h.t_host_s),
            "shape": list(image.shape),
            "spacing_mm": h.spacing_mm,
        }
        with self._state_lock:
            self._frames[h.stream_id] = FrameView(meta, image, self.jpeg_quality, h.session_id)
        self.on_change(h.stream_id)

    def _capture(self, ov: dict) -> None:
        c = ov["clinical"]
        self.captures.add((c.get("patient_id"), c.get("site"), c.get("side")), capture_numbers(ov))
        self.count("captures")

    def _event(self, h: Event) -> None:
        sid = h.stream_id or ""
        if h.reason == "captured" and h.stream_id is not None:  # the fusion node took frame h.seq
            with self._state_lock:
                ov = next((o for o in reversed(self._recent.get(sid, (None, ()))[1]) if o["seq"] == h.seq), self._overlays.get(sid))
            if ov is not None:
                self._capture(ov)
        elif h.reason == "capture" and h.node == "control" and not self.fusion_attached and h.stream_id is not None:
            with self._state_lock:
                self._pending_captures.ask(sid, h.t_host_s)  # no fusion node: the next frame analysed is the capture
        if h.reason in NOTED or h.level != "info":
            with self._state_lock:
                self._notes[sid] = {"type": "note", "level": h.level, "reason": h.reason, "message": h.message,
                                    "node": h.node, "stream_id": h.stream_id}  # fmt: skip
        self.on_change(sid)

    def _fused_message(self, h: Fused) -> None:
        payload = {"type": "fused", **h.model_dump(mode="json", exclude={"buffers", "schema_version", "stamps"})}
        with self._state_lock:
            if payload["biopsy"] is None:
                payload["biopsy"] = self._biopsy.get(h.patient_id, [])
            else:
                self._biopsy[h.patient_id] = payload["biopsy"]
            self._fused[h.stream_id] = payload
        self.count("fused_seen")
        self.on_change(h.stream_id)

    def tick(self, now: float) -> list[Out]:
        """Forget streams idle for ``idle_s`` (checked a few times per ``idle_s``)."""
        if now >= self._next_sweep:
            self._next_sweep = now + min(self.idle_s / 4, 5.0)
            with self._state_lock:
                idle = [sid for sid, fv in self._frames.items() if now - fv.t_received > self.idle_s]
                for sid in idle:
                    for table in (self._frames, self._overlays, self._recent, self._fused, self._notes, self._last_seq):
                        table.pop(sid, None)
            if idle:
                self.count("streams_forgotten", len(idle))
                self.on_change("")
        return []

    # -- reader side (web server thread) --------------------------------------------------------
    def streams(self) -> list[str]:
        with self._state_lock:  # first seen first: a new page shows the first stream (docs/webview.md)
            return list(dict.fromkeys([*self._frames, *self._overlays, *self._last_seq]))

    def _newest(self, table: dict, stream_id: str):
        with self._state_lock:
            return table.get(stream_id)

    def frame(self, stream_id: str) -> FrameView | None:
        return self._newest(self._frames, stream_id)

    def overlay(self, stream_id: str) -> dict | None:
        return self._newest(self._overlays, stream_id)

    def fused(self, stream_id: str) -> dict | None:
        return self._newest(self._fused, stream_id)

    def note(self, stream_id: str) -> dict | None:
        """The last notable event of the stream (or, for "", of the service)."""
        return self._newest(self._notes, stream_id)
