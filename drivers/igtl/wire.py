"""OpenIGTLink framing, checked: one message = 58-byte header + body (protocol v2/v3 headers).

pyigtl packs and unpacks message contents; it trusts the bytes it is given (no checksum, no size
limit, a garbage header becomes a giant read). This module validates the framing first:

* header version 1 or 2; type and device name printable ASCII padded with NULs;
* body size at most ``max_body_bytes``;
* CRC-64 (ECMA-182, as OpenIGTLink defines it; :mod:`~mmstream_drivers.igtl.crc`) of the body equal
  to the header's (``check_crc``).

A framing failure raises :class:`~mmstream.errors.ProtocolError` (the stream is out of step: the
caller drops the connection); a well-framed message whose content pyigtl cannot unpack raises
``ProtocolError(reason="igtl_bad_content")`` (the caller drops that message only).
"""

import socket
import struct
import threading
import time

from pyigtl.messages import MessageBase

from mmstream.errors import ProtocolError
from mmstream_drivers.igtl.crc import crc64

HEADER_BYTES = MessageBase.IGTL_HEADER_SIZE  # 58
_HEADER = struct.Struct("> H 12s 20s I I Q Q")
_NAME_BYTES = bytes(range(32, 127))


def _ascii_field(raw: bytes, what: str) -> str:
    text = raw.rstrip(b"\0")
    if b"\0" in text or text.translate(None, _NAME_BYTES):
        raise ProtocolError(f"OpenIGTLink header: {what} is not printable ASCII ({raw[:24]!r})", reason="igtl_garbage")
    return text.decode("ascii").rstrip(" \t\r\n")


def parse_header(header: bytes, max_body_bytes: int) -> dict:
    """Checked header fields: ``header_version``, ``message_type``, ``device_name``, ``timestamp``
    (s since 1970), ``body_size``, ``crc``. ProtocolError ``igtl_garbage`` / ``igtl_too_large``."""
    if len(header) != HEADER_BYTES:
        raise ProtocolError(f"OpenIGTLink header of {len(header)} bytes", reason="igtl_garbage")
    version, mtype, device, sec, frac, body_size, crc = _HEADER.unpack(header)
    if version not in (1, 2):
        raise ProtocolError(f"OpenIGTLink header version {version} (1 or 2 expected): not an OpenIGTLink peer?",
                            reason="igtl_garbage")
    fields = {
        "header_version": version,
        "message_type": _ascii_field(mtype, "message type"),
        "device_name": _ascii_field(device, "device name"),
        "timestamp": sec + frac / 2.0**32,
        "body_size": body_size,
        "crc": crc,
    }
    if not fields["message_type"]:
        raise ProtocolError("OpenIGTLink header without a message type", reason="igtl_garbage")
    if body_size > max_body_bytes:
        raise ProtocolError(f"OpenIGTLink {fields['message_type']} body of {body_size} bytes exceeds "
                            f"max_body_bytes={max_body_bytes}", reason="igtl_too_large")
    return fields


def check_body(fields: dict, body: bytes) -> None:
    """ProtocolError ``igtl_crc`` when the body's CRC-64 differs from the header's."""
    crc = crc64(body)
    if crc != fields["crc"]:
        raise ProtocolError(f"OpenIGTLink {fields['message_type']} from {fields['device_name']!r}: CRC mismatch "
                            f"(header {fields['crc']:#018x}, body {crc:#018x}): corrupted stream", reason="igtl_crc")


def unpack(fields: dict, body: bytes) -> MessageBase | None:
    """The pyigtl message, or None for a type pyigtl does not know (the caller counts it)."""
    msg = MessageBase.create_message(fields["message_type"])
    if msg is None:
        return None
    try:
        msg.unpack(fields, body)
    except Exception as exc:  # pyigtl raises assorted types on malformed content; the framing was valid
        raise ProtocolError(f"OpenIGTLink {fields['message_type']} from {fields['device_name']!r}: cannot unpack "
                            f"({type(exc).__name__}: {exc})", reason="igtl_bad_content") from exc
    return msg


class MessageReader:
    """Reads checked messages from a connected blocking socket (with a short timeout set).

    :meth:`read` returns ``(fields, body)``, or None when ``stop`` is set or nothing arrived for
    ``idle_timeout_s`` before a header started. A message that starts but stalls for
    ``stall_timeout_s``, or a peer that closes, raises ProtocolError (``igtl_stalled``, ``igtl_closed``).
    """

    def __init__(self, sock: socket.socket, *, max_body_bytes: int, check_crc: bool = True,
                 stall_timeout_s: float = 5.0, stop: threading.Event | None = None):
        self.sock = sock
        self.max_body_bytes = max_body_bytes
        self.check_crc = check_crc
        self.stall_timeout_s = stall_timeout_s
        self.stop = stop or threading.Event()
        self._header = bytearray(HEADER_BYTES)

    def _fill(self, view: memoryview, started: bool, idle_timeout_s: float) -> bool:
        got, last = 0, time.monotonic()
        while got < len(view):
            if self.stop.is_set():
                return False
            try:
                n = self.sock.recv_into(view[got:])
            except TimeoutError:
                waited = time.monotonic() - last
                if started or got:
                    if waited > self.stall_timeout_s:
                        raise ProtocolError(f"OpenIGTLink peer stalled for {waited:.1f} s inside a message",
                                            reason="igtl_stalled") from None
                elif waited > idle_timeout_s:
                    return False
                continue
            except OSError as exc:
                raise ProtocolError(f"OpenIGTLink connection failed ({exc})", reason="igtl_closed") from exc
            if n == 0:
                raise ProtocolError("OpenIGTLink peer closed the connection", reason="igtl_closed")
            got += n
            last = time.monotonic()
        return True

    def read(self, idle_timeout_s: float = 1.0) -> tuple[dict, bytes | memoryview] | None:
        if not self._fill(memoryview(self._header), False, idle_timeout_s):
            return None
        fields = parse_header(bytes(self._header), self.max_body_bytes)
        buf = bytearray(fields["body_size"])  # fresh per message: the frame keeps pointing into it
        if not self._fill(memoryview(buf), True, idle_timeout_s):
            return None
        # pyigtl slices the body; a memoryview slices without copying (v2 metadata needs bytes)
        body = memoryview(buf) if fields["header_version"] == 1 else bytes(buf)
        if self.check_crc:
            check_body(fields, body)
        return fields, body
