"""What the page and the server say to each other over the websocket (see ``docs/webview.md``).

Page -> server: small JSON text messages, one :data:`Command` each, tagged by ``cmd``; validated
strictly, nested models too (unknown fields, wrong types, non-finite numbers and oversized strings
are refused: no string or boolean becomes a number) by :func:`parse_command`, which raises
:class:`WebInputError` with a ``reason`` used as counter key.

Server -> page: JSON text messages tagged by ``type`` (``hello``, ``metrics``, ``fused``,
``status``, ``reply``, ``clock``, ``context``, ``captures``, ``note``, ``error``) and binary frame packets built by
:func:`frame_packet`: ``b"MMF1"``, a little-endian uint32 header length, the UTF-8 JSON header
(``stream_id``, ``seq``, ``t_frame_s``, ``shape``, ``spacing_mm``) and the JPEG bytes.
"""

import json
import struct
from typing import Annotated, Literal, get_args

import numpy as np

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from mmstream.errors import MmstreamError
from mmstream.messages import ClinicalContext, Identifier

FRAME_MAGIC = b"MMF1"
Finite = Annotated[float, Field(allow_inf_nan=False)]
Coord = Annotated[float, Field(ge=0, le=16384, allow_inf_nan=False)]


class WebInputError(MmstreamError):
    """A websocket message from a page that is not a valid command."""

    reason = "invalid_command"


class _Cmd(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    id: Annotated[int, Field(ge=0, le=2**31)] | None = None  # echoed in the reply


class Hello(_Cmd):
    """First message of a connection: the access token (when the server requires one)."""

    cmd: Literal["hello"]
    token: Annotated[str, Field(max_length=256)] | None = None
    stream_id: Identifier | None = None


class Clock(_Cmd):
    """Clock probe: the server answers with its monotonic time, the page estimates the offset."""

    cmd: Literal["clock"]
    t_page_ms: Finite


class Painted(_Cmd):
    """The page painted frame ``seq``; ``latency_ms`` = paint time minus the frame's timestamp,
    on the server's clock (null until the page has a clock estimate)."""

    cmd: Literal["painted"]
    stream_id: Identifier
    seq: Annotated[int, Field(ge=0)]
    latency_ms: Annotated[float, Field(ge=-1000, le=600000, allow_inf_nan=False)] | None = None


class SelectStream(_Cmd):
    cmd: Literal["select_stream"]
    stream_id: Identifier


class SetSeed(_Cmd):
    """Click: ``seed_rc`` (row, col) in image pixels; null clears the CSA seed."""

    cmd: Literal["set_seed"]
    seed_rc: tuple[Coord, Coord] | None


class SetLine(_Cmd):
    """Tap in a line mode: ``at_rc`` (row, col) in image pixels on the superficial or deep
    aponeurosis, which that thickness line must pass through; null releases that line (line
    ``both``: both lines, at_rc null only)."""

    cmd: Literal["set_line"]
    line: Literal["superficial", "deep", "both"]
    at_rc: tuple[Coord, Coord] | None

    @model_validator(mode="after")
    def _both_only_releases(self):
        if self.line == "both" and self.at_rc is not None:
            raise ValueError("line 'both' only releases (at_rc null)")
        return self


class SetRoi(_Cmd):
    """Drag: ``roi`` (r0, c0, r1, c1), end-exclusive image pixels; null clears it."""

    cmd: Literal["set_roi"]
    roi: tuple[
        Annotated[int, Field(ge=0, le=16384)], Annotated[int, Field(ge=0, le=16384)],
        Annotated[int, Field(ge=0, le=16384)], Annotated[int, Field(ge=0, le=16384)],
    ] | None  # fmt: skip


class SetContext(_Cmd):
    """Patient pseudonym, site and side of the current stream (age and sex choose the z-score
    references). The service's ClinicalContext, validated strictly here (see :func:`parse_command`)."""

    cmd: Literal["set_context"]
    clinical: ClinicalContext


class Simple(_Cmd):
    """Commands without arguments: recording, three-image capture."""

    cmd: Literal["record_start", "record_stop", "capture"]


Command = Annotated[
    Hello | Clock | Painted | SelectStream | SetSeed | SetLine | SetRoi | SetContext | Simple, Field(discriminator="cmd")
]
command_adapter: TypeAdapter = TypeAdapter(Command)
_COMMAND_NAMES = frozenset(n for m in get_args(get_args(Command)[0]) for n in get_args(m.model_fields["cmd"].annotation))


def parse_command(raw: str | bytes, max_bytes: int) -> BaseModel:
    """One page message as a command model; WebInputError (``binary_message``, ``too_large``,
    ``malformed_json``, ``unknown_command``, ``invalid_command``) otherwise."""
    if isinstance(raw, bytes):
        raise WebInputError("the page sends JSON text messages only", reason="binary_message")
    if len(raw) > max_bytes:  # characters >= bytes / 4; the websocket layer already bounds bytes
        raise WebInputError(f"message of {len(raw)} characters over {max_bytes}", reason="too_large")
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise WebInputError(f"not JSON: {exc}", reason="malformed_json") from None
    if not isinstance(obj, dict):
        raise WebInputError("a command is a JSON object", reason="malformed_json")
    if not isinstance(obj.get("cmd"), str) or obj["cmd"] not in _COMMAND_NAMES:
        raise WebInputError(f"unknown command {str(obj.get('cmd'))[:40]!r}", reason="unknown_command")
    try:  # strict: also in the nested ClinicalContext, which is lax for the service's own messages
        return command_adapter.validate_json(raw, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:]) or "(message)"
        raise WebInputError(f"{obj['cmd']}: {where}: {first['msg']}", reason="invalid_command") from None


def frame_packet(meta: dict, jpeg: bytes) -> bytes:
    """A binary frame message: magic, header length, JSON header ``meta``, JPEG bytes."""
    head = json.dumps(meta, separators=(",", ":"), allow_nan=False).encode()
    return FRAME_MAGIC + struct.pack("<I", len(head)) + head + jpeg


def polyline(arr, decimals: int = 1) -> list[list[float]] | None:
    """A (K, 2) float array as a JSON-ready list of [row, col] pairs (rounded), None if absent."""
    return None if arr is None else np.round(np.asarray(arr, np.float64), decimals).tolist()
