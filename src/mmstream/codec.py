"""Pure encode/decode of wire messages: ``[topic, header JSON, *buffers]`` (no sockets, no pickle).

``encode`` returns the parts to hand to ``send_multipart(..., copy=False)``: the arrays' own memory
is sent, not a copy. ``decode`` validates everything a peer could get wrong and raises
:class:`~mmstream.errors.CodecError` with a ``reason`` code (used as the rejection counter key):

=====================  ======================================================================
reason                 when
=====================  ======================================================================
``too_few_parts``      fewer than two parts
``bad_topic``          topic not UTF-8, too long, or not matching the header
``header_too_large``   header over ``Limits.max_header_bytes``
``malformed_json``     header is not a JSON object
``unknown_msg_type``   ``msg_type`` missing or not one of the known types
``bad_schema_version`` ``schema_version`` not supported
``invalid_header``     any other field invalid (NaN or negative spacing, bad identifiers, ...)
``buffer_count``       number of buffers differs from ``header.buffers``
``buffer_size``        a buffer's byte size differs from its dtype and shape
``too_large``          an array over ``Limits.max_elements`` or a frame over ``max_frame_shape``
=====================  ======================================================================
"""

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pydantic import ValidationError

from mmstream.errors import CodecError
from mmstream.messages import MESSAGE_TYPES, SCHEMA_VERSION, BufferSpec, Frame, message_adapter

__all__ = ["Limits", "Decoded", "encode", "decode", "buffer_specs", "topic_for"]

_KNOWN_TYPES = {m.model_fields["msg_type"].default for m in MESSAGE_TYPES}


@dataclass(frozen=True)
class Limits:
    """What a decoder accepts at most."""

    max_header_bytes: int = 65536
    max_topic_bytes: int = 256
    max_elements: int = 64 * 1024 * 1024
    max_frame_shape: tuple[int, int] = (4096, 4096)

    @property
    def max_part_bytes(self) -> int:
        """The largest part a valid message has (its header, or a buffer of ``max_elements`` 8-byte
        values), plus 64 KiB of headroom (CURVE adds 33 bytes to each part, and ZeroMQ counts
        them): the receiving sockets drop a peer that sends a larger one before holding it."""
        return max(self.max_header_bytes, self.max_topic_bytes, 8 * self.max_elements) + 65536


@dataclass(frozen=True)
class Decoded:
    """A decoded message: ``arrays`` maps buffer names to read-only arrays over the received memory."""

    topic: str
    header: object
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def topic_for(header) -> str:
    """The topic a message is published under: ``msg_type`` plus its stream or node, if any."""
    key = getattr(header, "stream_id", None) or getattr(header, "node", None) or getattr(header, "volume_id", None)
    return header.msg_type if key is None else f"{header.msg_type}.{key}"


def buffer_specs(**arrays: np.ndarray) -> tuple[BufferSpec, ...]:
    """``BufferSpec`` of each named array, in the order given (for building a header)."""
    return tuple(BufferSpec(name=n, dtype=a.dtype.name, shape=a.shape) for n, a in arrays.items())


def encode(header, arrays: Sequence[np.ndarray] = (), topic: str | None = None) -> list:
    """Parts ``[topic, header JSON, *buffers]`` of a message.

    Parameters
    ----------
    header : one of the models in :mod:`mmstream.messages`
    arrays : arrays in the order of ``header.buffers``; C-contiguous arrays are sent without copy
    topic : defaults to :func:`topic_for`
    """
    if len(arrays) != len(header.buffers):
        raise CodecError(f"{len(arrays)} arrays for {len(header.buffers)} buffer specs", reason="buffer_count")
    bufs = []
    for spec, arr in zip(header.buffers, arrays):
        if arr.dtype != np.dtype(spec.dtype) or tuple(arr.shape) != tuple(spec.shape):  # native byte order only
            raise CodecError(
                f"array {spec.name!r} is {arr.dtype.name} {arr.shape}, header says {spec.dtype} {spec.shape}",
                reason="buffer_size",
            )
        bufs.append(memoryview(np.ascontiguousarray(arr).reshape(-1)).cast("B"))  # 1-D: an empty array casts too
    t = topic_for(header) if topic is None else topic
    return [t.encode(), header.model_dump_json().encode(), *bufs]


def _as_bytes_view(part) -> memoryview:
    buf = getattr(part, "buffer", part)  # zmq.Frame exposes .buffer; bytes and memoryview pass through
    return memoryview(buf).cast("B") if not isinstance(buf, memoryview) or buf.format != "B" else buf


def _classify(exc: ValidationError) -> str:
    errors = exc.errors()
    if any(e["type"] in ("union_tag_invalid", "union_tag_not_found") for e in errors):
        return "unknown_msg_type"
    if any(e["loc"][1:2] == ("schema_version",) for e in errors):
        return "bad_schema_version"
    if any(e["type"].startswith("json") for e in errors):
        return "malformed_json"
    if any(e["type"] == "less_than_equal" and e["loc"][1:2] == ("buffers",) and "shape" in e["loc"] for e in errors):
        return "too_large"  # a dimension beyond messages.Dim
    return "invalid_header"


def decode(parts: Sequence, limits: Limits = Limits()) -> Decoded:
    """Validate and decode the parts of one received message (see the module docstring)."""
    if len(parts) < 2:
        raise CodecError(f"message has {len(parts)} part(s); need [topic, header, *buffers]", reason="too_few_parts")
    topic_b = bytes(_as_bytes_view(parts[0]))
    if len(topic_b) > limits.max_topic_bytes:
        raise CodecError(f"topic of {len(topic_b)} bytes", reason="bad_topic")
    try:
        topic = topic_b.decode()
    except UnicodeDecodeError as exc:
        raise CodecError("topic is not UTF-8", reason="bad_topic") from exc
    raw = bytes(_as_bytes_view(parts[1]))
    if len(raw) > limits.max_header_bytes:
        raise CodecError(f"header of {len(raw)} bytes exceeds {limits.max_header_bytes}", reason="header_too_large")
    if not raw.lstrip(b" \t\r\n").startswith(b"{"):
        raise CodecError("header is not a JSON object", reason="malformed_json")
    try:
        header = message_adapter.validate_json(raw)
    except ValidationError as exc:
        reason = _classify(exc)
        if reason == "unknown_msg_type":
            try:
                got = json.loads(raw).get("msg_type")
            except (ValueError, AttributeError):
                got = None
            msg = f"unknown msg_type {got!r}; known: {', '.join(sorted(_KNOWN_TYPES))}"
        elif reason == "bad_schema_version":
            msg = f"unsupported schema_version (this decoder speaks {SCHEMA_VERSION})"
        else:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"][1:]) or "header"
            msg = f"{loc}: {first['msg']}"
        raise CodecError(msg, reason=reason) from None
    if topic != topic_for(header) and not topic.startswith(topic_for(header) + "."):
        raise CodecError(f"topic {topic!r} does not match the header ({topic_for(header)!r})", reason="bad_topic")
    buffers = parts[2:]
    if len(buffers) != len(header.buffers):
        raise CodecError(
            f"{len(buffers)} buffer(s) received, header describes {len(header.buffers)}", reason="buffer_count"
        )
    arrays = {}
    for spec, part in zip(header.buffers, buffers):
        n = math.prod(spec.shape)  # Python ints: no int64 wrap-around
        if n > limits.max_elements:
            raise CodecError(f"buffer {spec.name!r} of {n} elements exceeds {limits.max_elements}", reason="too_large")
        view = _as_bytes_view(part)
        dt = np.dtype(spec.dtype)
        if view.nbytes != n * dt.itemsize:
            raise CodecError(
                f"buffer {spec.name!r} has {view.nbytes} bytes; {spec.dtype} {tuple(spec.shape)} needs {n * dt.itemsize}",
                reason="buffer_size",
            )
        try:
            arr = np.frombuffer(view, dtype=dt).reshape(spec.shape)
        except ValueError:  # e.g. [0, 2**31 - 1, 2**31 - 1, 2**31 - 1]: beyond numpy's dimension limits
            raise CodecError(f"buffer {spec.name!r} shape {tuple(spec.shape)} is too large", reason="too_large") from None
        arr.flags.writeable = False
        arrays[spec.name] = arr
    if isinstance(header, Frame):
        h, w = header.buffers[0].shape
        mh, mw = limits.max_frame_shape
        if h > mh or w > mw or h == 0 or w == 0:
            raise CodecError(f"frame {h}x{w} outside 1x1..{mh}x{mw}", reason="too_large")
    return Decoded(topic=topic, header=header, arrays=arrays)
