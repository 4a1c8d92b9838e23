"""MetaImage ``.mha``/``.mhd`` (ITK MetaIO) files, including PLUS Toolkit sequence files (``.igs.mha``).

A small, strict header parser written for mmstream (no SimpleITK on this path) so that the PLUS
per-frame fields are available and hostile headers are refused before any allocation:

* header lines are ``Key = Value``; at most :data:`MAX_HEADER_BYTES` bytes / :data:`MAX_LINE_BYTES`
  per line; the header ends at ``ElementDataFile``; a key given twice with different values is refused.
* ``NDims`` 2 or 3 (3 = a stack of 2-D frames: PLUS ``Kinds = domain domain list``), ``DimSize``
  positive integers; ``ElementType`` one of ``MET_UCHAR``/``MET_CHAR``/``MET_USHORT``/``MET_SHORT``/
  ``MET_UINT``/``MET_INT`` (non-8-bit types only when every value fits 0..255, see
  :func:`~mmstream.io._common.to_uint8`); ``ElementNumberOfChannels`` 1, 3 (RGB) or 4 (RGBA);
  ``BinaryData = True`` only.
* ``ElementDataFile``: ``LOCAL`` (data follows the header) or ONE file name relative to the header's
  folder; absolute paths, ``..`` escapes and symlinks leaving the folder are refused
  (``reason="path_traversal"``); ``LIST`` and ``%d`` patterns are not supported.
* The data size must match ``DimSize`` exactly (``reason="size_mismatch"``). Uncompressed data is read
  frame by frame with ``seek``/``read``; zlib-compressed data (``CompressedData = True``) is inflated
  incrementally, one frame at a time, never beyond the size ``DimSize`` announces; a stream that ends
  early raises ``"truncated"`` at that frame and trailing data raises ``"size_mismatch"`` after the
  last frame.

Axes and spacing: MetaImage stores x fastest, so a frame is ``(rows, cols) = (DimSize[1], DimSize[0])``
and ``spacing_mm = (ElementSpacing[1], ElementSpacing[0])``. NaN, infinite, zero or negative
``ElementSpacing``, or an in-plane value outside 1e-4 .. 100 mm (the range of any ``spacing_mm``),
raises ``ReadError("invalid_spacing")`` naming the field and its value. A PLUS sequence file whose in-plane
``ElementSpacing`` is exactly ``1 1`` is treated as unknown spacing (``spacing_error =
"placeholder_spacing"``): PLUS writes 1 1 1 when it does not know the spacing (e.g.
``BoneUltrasound_L14.igs.mha``, whose real spacing is 0.085 mm/px from its config XML).

Per-frame PLUS fields ``Seq_FrameNNNN_*`` are matched to the frame by the number NNNN (PLUS files may
skip numbers; such frames get ``t_s=None``): ``Timestamp`` -> ``t_s`` (raw PLUS seconds),
``UnfilteredTimestamp`` -> ``meta["unfiltered_timestamp_s"]``, ``FrameNumber`` -> ``meta["frame_number"]``,
``ImageStatus`` -> ``meta["image_status"]``, ``<From>To<To>Transform`` -> ``meta["transforms"][name]``
(4x4 nested list), ``..TransformStatus`` -> ``meta["transform_status"][name]``,
``ImageToProbeTransform`` also -> ``meta["image_to_probe"]``; anything else -> ``meta["frame_fields"]``.
Malformed per-frame values are listed in ``meta["invalid_fields"]`` instead of failing the frame.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ._common import (
    DEFAULT_MAX_PIXELS,
    MAX_SPACING_MM,
    MIN_SPACING_MM,
    check_file,
    check_pixels,
    file_beside,
    floats,
    read_error,
    to_grey_u8,
)
from ._opened import OpenedFile, RawFrame

EXTENSIONS = {".mha", ".mhd"}
MAX_HEADER_BYTES = 64 * 1024 * 1024
MAX_LINE_BYTES = 1024 * 1024
_CHUNK = 1 << 16
#: zlib cannot expand by more than ~1032:1; used to refuse absurd DimSize on compressed data up front
_MAX_DEFLATE_RATIO = 1100

_ELEMENT_TYPES = {
    "MET_UCHAR": np.dtype("u1"),
    "MET_CHAR": np.dtype("i1"),
    "MET_USHORT": np.dtype("u2"),
    "MET_SHORT": np.dtype("i2"),
    "MET_UINT": np.dtype("u4"),
    "MET_INT": np.dtype("i4"),
}
# keys as ITK writes them too (dim[0], NRRD_kinds[0]); nothing ITK would end a key at (':', NUL), so both read one header
_LINE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_\[\]]*)\s*=\s*(.*?)\s*$")
_FRAME_KEY = re.compile(r"^Seq_Frame(\d{1,9})_(\w+)$")
_HEADER_START_KEYS = ("ObjectType", "NDims", "Comment", "ObjectSubType", "TransformType", "DimSize", "ID",
                      "ParentID", "Name", "FormTypeName")


def sniff(head: bytes) -> bool:
    """True when the file starts like a MetaIO text header."""
    text = head.lstrip()
    return any(text.startswith(k.encode()) for k in _HEADER_START_KEYS)


# ---------------------------------------------------------------------------------------------
# header


def parse_header(path) -> tuple[dict[str, str], int]:
    """Read ``Key = Value`` lines up to and including ``ElementDataFile``.

    Returns the fields and the byte offset just past the header. Raises ReadError("bad_header").
    """
    p = Path(path)
    fields: dict[str, str] = {}
    try:
        fh = open(p, "rb")
    except OSError as exc:
        raise read_error(p, f"cannot open file ({exc.strerror or exc})", "unreadable") from exc
    with fh:
        offset = lineno = 0
        while True:
            line = fh.readline(MAX_LINE_BYTES + 1)
            lineno += 1
            if not line:
                raise read_error(p, "MetaImage header has no ElementDataFile line (truncated?)", "bad_header")
            if len(line) > MAX_LINE_BYTES:
                raise read_error(p, f"MetaImage header line longer than {MAX_LINE_BYTES} bytes", "bad_header")
            offset += len(line)
            if offset > MAX_HEADER_BYTES:
                raise read_error(p, f"MetaImage header longer than {MAX_HEADER_BYTES} bytes", "bad_header")
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise read_error(p, f"MetaImage header is not text (byte offset {offset - len(line)})",
                                 "bad_header") from exc
            if not text.strip():
                continue
            m = _LINE.match(text)
            if m is None:
                key = re.match(r"[A-Za-z0-9_\[\]]*", text.strip()).group(0)[:40]  # nothing more: a value may name a folder
                raise read_error(p, f"malformed MetaImage header line {lineno} (key {key!r}: keys are letters, digits, "
                                 "'_' and '[]', then '=')", "bad_header")  # fmt: skip
            key, value = m.group(1), m.group(2)
            if key in fields and fields[key] != value:
                raise read_error(p, f"MetaImage header gives {key} twice with different values", "bad_header")
            fields[key] = value
            if key == "ElementDataFile":
                return fields, offset


def _ints(p, fields, key, n=None) -> list[int]:
    raw = fields.get(key)
    if raw is None:
        raise read_error(p, f"MetaImage header lacks {key}", "bad_header")
    try:
        vals = [int(v) for v in raw.split()]
    except ValueError as exc:
        raise read_error(p, f"{key} = {raw!r} is not integers", "bad_header") from exc
    if n is not None and len(vals) != n:
        raise read_error(p, f"{key} = {raw!r} has {len(vals)} values, {n} expected", "bad_header")
    return vals


def _bool(p, fields, key, default: bool) -> bool:
    raw = fields.get(key)
    if raw is None:
        return default
    low = raw.strip().lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise read_error(p, f"{key} = {raw!r} is not True/False", "bad_header")


# ---------------------------------------------------------------------------------------------
# per-frame PLUS fields


def _dims(p, fields) -> tuple[int, list[int]]:
    """(NDims, DimSize) checked: 2 or 3 dimensions, each positive."""
    ndims = _ints(p, fields, "NDims", 1)[0]
    if ndims not in (2, 3):
        raise read_error(p, f"NDims = {ndims}: only 2-D images and 3-D frame stacks are supported", "unsupported")
    dims = _ints(p, fields, "DimSize", ndims)
    if any(d <= 0 for d in dims):
        raise read_error(p, f"DimSize = {fields['DimSize']!r} must be positive", "bad_header")
    return ndims, dims


def _matrix(text: str) -> list[list[float]] | None:
    vals = floats(text)
    if vals is None or len(vals) != 16 or not all(math.isfinite(v) for v in vals):
        return None
    return [vals[0:4], vals[4:8], vals[8:12], vals[12:16]]


def _frame_meta(fields: dict[str, str]) -> dict[int, dict[str, str]]:
    per: dict[int, dict[str, str]] = {}
    for key, value in fields.items():
        m = _FRAME_KEY.match(key)
        if m:
            per.setdefault(int(m.group(1)), {})[m.group(2)] = value
    return per


def _decode_frame_fields(raw: dict[str, str]) -> tuple[float | None, dict[str, object]]:
    meta: dict[str, object] = {}
    t_s = None
    invalid: list[str] = []
    transforms: dict[str, object] = {}
    status: dict[str, str] = {}
    other: dict[str, str] = {}
    for name, value in sorted(raw.items()):
        if name == "Timestamp":
            v = floats(value)
            if v and len(v) == 1 and math.isfinite(v[0]):
                t_s = v[0]
            else:
                invalid.append(name)
        elif name == "UnfilteredTimestamp":
            v = floats(value)
            if v and len(v) == 1 and math.isfinite(v[0]):
                meta["unfiltered_timestamp_s"] = v[0]
            else:
                invalid.append(name)
        elif name == "FrameNumber":
            try:
                meta["frame_number"] = int(value)
            except ValueError:
                invalid.append(name)
        elif name == "ImageStatus":
            meta["image_status"] = value
        elif name.endswith("TransformStatus"):
            status[name[: -len("TransformStatus")]] = value
        elif name.endswith("Transform"):
            mat = _matrix(value)
            if mat is None:
                invalid.append(name)
            else:
                transforms[name[: -len("Transform")]] = mat
        else:
            other[name] = value
    if transforms:
        meta["transforms"] = transforms
        if "ImageToProbe" in transforms:
            meta["image_to_probe"] = transforms["ImageToProbe"]
    if status:
        meta["transform_status"] = status
    if other:
        meta["frame_fields"] = other
    if invalid:
        meta["invalid_fields"] = invalid
    return t_s, meta


# ---------------------------------------------------------------------------------------------
# open


def open_metaimage(path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> OpenedFile:
    """Parse and validate a MetaImage header; return a lazy frame source."""
    p = check_file(path)
    fields, header_end = parse_header(p)

    ndims, dims = _dims(p, fields)
    cols, rows = dims[0], dims[1]
    n_frames = dims[2] if ndims == 3 else 1
    check_pixels(p, rows, cols, max_pixels)

    etype = fields.get("ElementType")
    if etype not in _ELEMENT_TYPES:
        raise read_error(p, f"ElementType {etype!r} is not supported (integer types only)", "unsupported_element_type")
    channels = _ints(p, fields, "ElementNumberOfChannels", 1)[0] if "ElementNumberOfChannels" in fields else 1
    if channels not in (1, 3, 4):
        raise read_error(p, f"ElementNumberOfChannels = {channels} is not supported", "unsupported")
    if not _bool(p, fields, "BinaryData", True):
        raise read_error(p, "ASCII MetaImage data (BinaryData = False) is not supported", "unsupported")
    msb = _bool(p, fields, "BinaryDataByteOrderMSB", _bool(p, fields, "ElementByteOrderMSB", False))
    dtype = _ELEMENT_TYPES[etype].newbyteorder(">" if msb else "<")
    compressed = _bool(p, fields, "CompressedData", False)

    frame_bytes = rows * cols * channels * dtype.itemsize
    total = frame_bytes * n_frames

    # data location
    name = fields["ElementDataFile"]
    if name.upper() == "LOCAL":
        data_path, data_offset = p, header_end
        data_size = p.stat().st_size - header_end
    else:
        data_path = file_beside(p, name, "ElementDataFile")
        fsize = data_path.stat().st_size
        hsize = _ints(p, fields, "HeaderSize", 1)[0] if "HeaderSize" in fields else 0
        if hsize == -1 and not compressed:
            hsize = fsize - total
        if hsize < 0 or hsize > fsize:
            raise read_error(p, f"HeaderSize = {hsize} does not fit the data file of {fsize} bytes", "size_mismatch")
        data_offset, data_size = hsize, fsize - hsize
    if compressed:
        if "CompressedDataSize" in fields:
            csize = _ints(p, fields, "CompressedDataSize", 1)[0]
            if csize != data_size:
                raise read_error(p, f"CompressedDataSize = {csize} but {data_size} bytes follow the header",
                                 "size_mismatch" if csize < data_size else "truncated")
        if data_size <= 0 or total > data_size * _MAX_DEFLATE_RATIO + 1024:
            raise read_error(p, f"DimSize {dims} needs {total} bytes; {data_size} compressed bytes cannot "
                             "hold that", "size_mismatch")
    elif data_size != total:
        raise read_error(
            p, f"DimSize {dims} x {channels} x {etype} needs {total} bytes of data, the file holds {data_size}",
            "truncated" if data_size < total else "size_mismatch",
        )

    # spacing
    per_frame = _frame_meta(fields)
    is_plus = bool(per_frame) or "UltrasoundImageOrientation" in fields or "UltrasoundImageType" in fields
    meta: dict[str, object] = {"source": str(p), "format": "metaimage", "n_frames": n_frames,
                               "element_type": etype, "compressed": compressed, "plus_sequence": is_plus}
    if "UltrasoundImageOrientation" in fields:
        meta["us_image_orientation"] = fields["UltrasoundImageOrientation"]
    if "UltrasoundImageType" in fields:
        meta["us_image_type"] = fields["UltrasoundImageType"]
    spacing: tuple[float, float] | None = None
    source = "unknown"
    sp_key = "ElementSpacing" if "ElementSpacing" in fields else ("ElementSize" if "ElementSize" in fields else None)
    if sp_key is not None:
        sp = floats(fields[sp_key])
        if sp is None or len(sp) != ndims or not all(math.isfinite(v) and v > 0 for v in sp):
            raise read_error(p, f"{sp_key} = {fields[sp_key]!r} must be {ndims} finite positive numbers",
                             "invalid_spacing")
        if not all(MIN_SPACING_MM <= v <= MAX_SPACING_MM for v in sp[:2]):
            raise read_error(p, f"{sp_key} = {fields[sp_key]!r}: an in-plane pixel spacing must be from "
                             f"{MIN_SPACING_MM:g} to {MAX_SPACING_MM:g} mm", "invalid_spacing")  # fmt: skip
        meta["element_spacing"] = sp
        if sp[0] == 1.0 and sp[1] == 1.0:  # 1 mm per pixel is no ultrasound image's: the writer's default
            meta["spacing_error"] = "placeholder_spacing"
            meta["spacing_detail"] = (f"{'PLUS sequence' if is_plus else 'MetaImage'} with ElementSpacing 1 1 (the "
                                      "default of PLUS and ITK writers, not a physical spacing); pass plus_config= "
                                      "or spacing_mm= (--plus-config, --spacing-mm)")  # fmt: skip
        else:
            spacing, source = (sp[1], sp[0]), "metaimage"
    else:
        meta["spacing_error"] = "no_spacing"
        meta["spacing_detail"] = "MetaImage header has no ElementSpacing"

    def decode(buf: bytes, i: int) -> np.ndarray:
        arr = np.frombuffer(buf, dtype=dtype)
        arr = arr.reshape((rows, cols, channels)) if channels > 1 else arr.reshape((rows, cols))
        return to_grey_u8(p, arr, channel_order="RGB", what=f"frame {i}")

    def finish(i: int, buf: bytes) -> RawFrame:
        t_s, fmeta = _decode_frame_fields(per_frame.get(i, {}))
        return RawFrame(index=i, image=decode(buf, i), t_s=t_s, meta=fmeta)

    def frames_raw() -> Iterator[RawFrame]:
        with open(data_path, "rb") as fh:
            for i in range(n_frames):
                fh.seek(data_offset + i * frame_bytes)
                buf = fh.read(frame_bytes)
                if len(buf) != frame_bytes:
                    raise read_error(p, f"data ended inside frame {i}", "truncated")
                yield finish(i, buf)

    def frames_zlib() -> Iterator[RawFrame]:
        d = zlib.decompressobj(32 + 15)  # zlib or gzip wrapper
        pending = b""
        with open(data_path, "rb") as fh:
            fh.seek(data_offset)
            left = data_size

            def feed(need: int) -> bytes:
                nonlocal pending, left
                out = bytearray()
                while len(out) < need:
                    if d.unconsumed_tail:
                        src = d.unconsumed_tail
                    elif left > 0:
                        src = fh.read(min(_CHUNK, left))
                        left -= len(src)
                        if not src:
                            left = 0
                            continue
                    else:
                        break
                    try:
                        out += d.decompress(src, need - len(out))
                    except zlib.error as exc:
                        raise read_error(p, f"corrupt compressed data ({exc})", "corrupt") from exc
                    if d.eof:
                        break
                return bytes(out)

            for i in range(n_frames):
                buf = feed(frame_bytes)
                if len(buf) != frame_bytes:
                    raise read_error(p, f"compressed data ended inside frame {i} of {n_frames}", "truncated")
                yield finish(i, buf)
            extra = feed(1)
            if extra or d.unused_data or left > 0 and fh.read(1):
                raise read_error(p, f"compressed data holds more than DimSize {dims} announces", "size_mismatch")

    return OpenedFile(
        path=p, format="metaimage", n_frames=n_frames, shape=(rows, cols), spacing_mm=spacing,
        spacing_source=source, meta=meta, frames=frames_zlib if compressed else frames_raw,
    )


def count_frames(path) -> int:
    """Frames in a MetaImage file from its header alone (DimSize[2], or 1 for 2-D)."""
    p = check_file(path)
    fields, _ = parse_header(p)
    ndims, dims = _dims(p, fields)
    return dims[2] if ndims == 3 else 1


__all__ = ["open_metaimage", "count_frames", "parse_header", "sniff", "EXTENSIONS"]
