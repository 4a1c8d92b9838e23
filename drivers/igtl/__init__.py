"""OpenIGTLink source: IMAGE messages from a PLUS server or 3D Slicer (mmstream is the client).

* **Spacing and orientation** from the IMAGE's IJK-to-world matrix: ``spacing_mm = (|j column|,
  |i column|)`` (i runs along a row = column index, j down a column = row index;
  ``spacing_source = "igtl_matrix"``); the matrix itself, converted to LPS when the peer sends RAS,
  rides along as ``transforms["ijk_to_lps"]``. PLUS writes spacing 1 x 1 when it knows none; that
  exact value is reported as unknown unless ``trust_unit_spacing`` is set; so is a spacing outside the
  analysis's bounds (:func:`mmstream.io._common.validate_spacing`: 0, 150 mm, 1e37 mm; counted and
  announced ``spacing_invalid``). ``spacing_row_mm`` and ``spacing_col_mm`` override (``"config"``).
* **Time**: ``t_device_s`` is the message timestamp (seconds since 1970 on the sender's clock;
  0 = unknown -> None).
* **Metadata** (header v2 key/value pairs): sorted by :mod:`mmstream_drivers.fields` into
  transforms, annotations (``igtl.<key>``) and metadata; the device name is ``metadata["igtl_device"]``.
* **Images**: 2-D (one slice), 1, 3 (RGB) or 4 (RGBA) components, integer samples that fit 8 bits;
  anything else is rejected per message (counted, event), the connection stays.
* **Connection**: reconnects with exponential back-off when the peer is absent, closes, stalls or
  sends garbage (bad header, CRC mismatch, oversized body: counted per reason, event each).
  Messages other than IMAGE (TRANSFORM, STRING, STATUS, ...) and IMAGEs of other devices (when
  ``device`` is set) are counted and skipped.
"""

import math
import socket
import threading
from collections.abc import Iterator

import numpy as np

from mmstream.errors import ConfigError, MmstreamError, ProtocolError, SpacingError
from mmstream.io import to_grey_u8
from mmstream.io._common import validate_spacing
from mmstream.source import SourceFrame
from mmstream_drivers.fields import MAX_TEXT, FrameFields, sort_fields
from mmstream_drivers.health import Backoff, SourceHealth

IGTL_TYPES = frozenset({
    "IMAGE", "TRANSFORM", "POSITION", "STATUS", "STRING", "POINT", "TRAJ", "CAPABILITY", "TDATA", "QTDATA",
    "SENSOR", "NDARRAY", "POLYDATA", "BIND", "COLORT", "IMGMETA", "LBMETA", "COMMAND", "RTS_COMMAND",
})  # OpenIGTLink v3 message types counted by name when skipped; any other name counts as skipped_other
from mmstream_drivers.igtl.wire import MessageReader, parse_header, unpack
from mmstream_drivers.options import config_spacing, option_errors

__all__ = ["IgtlSource", "MessageReader", "parse_header", "unpack"]

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


class IgtlSource:
    """Frames from an OpenIGTLink server (options as in the module docstring).

    Parameters
    ----------
    host, port : str, int
        The server (PLUS default port 18944).
    device : str
        Accept IMAGEs of this device name only (empty: every IMAGE).
    fps : float
        Not used (the peer sets the rate); accepted because every configured source is given one.
    max_frame_pixels, max_body_mb : int, float
        Largest accepted image (rows * cols) and message body.
    check_crc : bool
        Verify each message's CRC-64 (default True).
    """

    name = "igtl"
    paces_itself = True  # frames are sent as they arrive

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 18944,
        device: str = "",
        fps: float = 30.0,
        spacing_row_mm: float | None = None,
        spacing_col_mm: float | None = None,
        trust_unit_spacing: bool = False,
        max_frame_pixels: int = 4096 * 4096,
        max_body_mb: float = 64.0,
        check_crc: bool = True,
        connect_timeout_s: float = 2.0,
        stall_timeout_s: float = 5.0,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 5.0,
    ):
        with option_errors("igtl"):
            if not (0 < int(port) < 65536):
                raise ConfigError(f"igtl source: port {port} out of range")
            if not (max_frame_pixels > 0 and max_body_mb > 0):
                raise ConfigError("igtl source: max_frame_pixels and max_body_mb must be > 0")
            self.address = (str(host), int(port))
            self.device = str(device)
            self.spacing_mm = config_spacing(spacing_row_mm, spacing_col_mm)
            self.trust_unit_spacing = bool(trust_unit_spacing)
            self.max_frame_pixels = int(max_frame_pixels)
            self.max_body_bytes = int(max_body_mb * 1024 * 1024)
            self.check_crc = bool(check_crc)
            self.connect_timeout_s = float(connect_timeout_s)
            self.stall_timeout_s = float(stall_timeout_s)
            self.backoff = Backoff(backoff_initial_s, backoff_max_s)
            self.health = SourceHealth(f"source-{self.name}")
            self.stop_event = threading.Event()

    def close(self) -> None:
        """Ask :meth:`source_frames` to end (also interrupts a wait or a reconnect)."""
        self.stop_event.set()

    def _connect(self) -> socket.socket | None:
        try:
            sock = socket.create_connection(self.address, timeout=self.connect_timeout_s)
        except OSError as exc:
            self.health.error("connect_failed", f"OpenIGTLink server {self.address[0]}:{self.address[1]} "
                              f"unreachable ({exc}); retrying")
            return None
        sock.settimeout(0.2)  # short, so that stop is seen; stalls are timed by MessageReader
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.health.count("connections")
        if self.health.counters["connections"] > 1:
            self.health.count("reconnects")
        return sock

    def source_frames(self) -> Iterator[SourceFrame]:
        """Frames until :meth:`close`; reconnects as needed."""
        while not self.stop_event.is_set():
            sock = self._connect()
            if sock is None:
                if self.backoff.wait(self.stop_event):
                    return
                continue
            reader = MessageReader(sock, max_body_bytes=self.max_body_bytes, check_crc=self.check_crc,
                                   stall_timeout_s=self.stall_timeout_s, stop=self.stop_event)
            try:
                yield from self._serve(reader)
            except ProtocolError as exc:
                self.health.error(exc.reason, f"OpenIGTLink {self.address[0]}:{self.address[1]}: {exc}; reconnecting")
            finally:
                sock.close()
            if self.stop_event.is_set() or self.backoff.wait(self.stop_event):
                return

    def _serve(self, reader: MessageReader) -> Iterator[SourceFrame]:
        while not self.stop_event.is_set():
            got = reader.read()
            if got is None:
                continue
            fields, body = got
            self.health.count("messages")
            if fields["message_type"] != "IMAGE" or (self.device and fields["device_name"] != self.device):
                kind = fields["message_type"]  # a peer's own type names must not grow the status without bound
                self.health.count(f"skipped_{kind.lower() if kind in IGTL_TYPES else 'other'}")
                continue
            try:
                frame = self.to_frame(unpack(fields, body))
            except MmstreamError as exc:  # a bad message, not a bad stream: drop it, stay connected
                self.health.error(exc.reason, f"OpenIGTLink IMAGE from {fields['device_name']!r} rejected: {exc}",
                                  level="warning")
                continue
            self.backoff.reset()
            self.health.count("frames")
            yield frame

    def to_frame(self, msg) -> SourceFrame:
        """A pyigtl ImageMessage as a :class:`SourceFrame` (InputError/SpacingError when unusable)."""
        img = np.asarray(msg.image)
        if img.ndim == 4 and img.shape[0] == 1:
            img = img[0]
        elif img.ndim == 3 and img.shape[0] == 1:
            img = img[0]
        else:
            raise ProtocolError(f"image of shape {img.shape} (k, j, i[, c]) is not one 2-D slice",
                                reason="igtl_not_2d")
        if img.shape[0] * img.shape[1] > self.max_frame_pixels or min(img.shape[:2]) == 0:
            raise ProtocolError(f"image of {img.shape[0]} x {img.shape[1]} pixels refused "
                                f"(max_frame_pixels={self.max_frame_pixels})", reason="igtl_image_size")
        grey = to_grey_u8(f"igtl:{msg.device_name}", img, channel_order="RGB")
        m = np.asarray(msg.ijk_to_world_matrix, dtype=np.float64)
        if msg.world_coordinate_system == "ras":
            m = _RAS_TO_LPS @ m
        own = FrameFields(metadata={"igtl_device": msg.device_name[:MAX_TEXT]})  # within the frame's limits
        if np.all(np.isfinite(m)):
            own.transforms["ijk_to_lps"] = tuple(float(v) for v in m.reshape(-1))
        fields = sort_fields(msg.metadata or {}, prefix="igtl.", into=own)
        transforms, metadata = fields.transforms, fields.metadata
        if fields.dropped:
            self.health.count("fields_dropped", fields.dropped)
        spacing, source = self._spacing(m)
        return SourceFrame(
            image=grey,
            t_device_s=float(msg.timestamp) if msg.timestamp and math.isfinite(msg.timestamp) else None,
            spacing_mm=spacing,
            spacing_source=source,
            transforms=transforms,
            annotations=fields.annotations,
            metadata=metadata,
        )

    def _spacing(self, m: np.ndarray) -> tuple[tuple[float, float] | None, str]:
        if self.spacing_mm is not None:
            return self.spacing_mm, "config"
        # the wire holds float32: keep the shortest decimal that round-trips it (0.085, not 0.0850000009)
        col_mm, row_mm = (float(str(np.float32(math.hypot(*m[:3, k])))) for k in (0, 1))
        if row_mm == 1.0 and col_mm == 1.0 and not self.trust_unit_spacing:
            self.health.count("spacing_placeholder")
            return None, "unknown"
        try:  # the analysis's bounds: a spacing it would refuse (0, 150 mm, 1e37 mm, inf) is not sent on
            return validate_spacing((row_mm, col_mm), what="matrix spacing (row_mm, col_mm)"), "igtl_matrix"
        except SpacingError as exc:
            self.health.error("spacing_invalid", f"OpenIGTLink IMAGE: {exc}; spacing unknown (pixels only)",
                              level="warning")
            return None, "unknown"
