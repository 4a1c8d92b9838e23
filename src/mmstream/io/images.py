"""Raster images (PNG, JPEG, TIFF incl. multi-page, BMP) read with OpenCV.

Rules
-----
* Colour (RGB/BGR, palette) becomes grey with :func:`~mmstream.io._common.rgb_to_grey`, bit-exact with
  ``PIL.Image.convert("L")``; an alpha channel is dropped (not composited).
* 16-bit (or wider integer) images are accepted only when every sample is in 0..255; otherwise
  ``ReadError(reason="unsupported_bit_depth")``. Floating-point images: ``"unsupported_dtype"``.
  Nothing is ever rescaled.
* EXIF orientation is NOT applied (pixels are returned in stored order, as ``PIL`` does).
* Frame size is checked against ``max_pixels`` from the file header before decoding
  (PNG IHDR, BMP header, JPEG SOF, TIFF and BigTIFF IFDs).
* These formats carry no trusted physical spacing: ``spacing_mm`` is ``None`` unless the caller
  passes one (TIFF resolution tags describe print DPI, not anatomy, and are ignored).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from ._common import DEFAULT_MAX_PIXELS, check_file, check_pixels, read_error, to_grey_u8
from ._opened import OpenedFile, RawFrame

#: magic bytes -> format name
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "bigtiff"),
    (b"MM\x00+", "bigtiff"),
)

EXTENSIONS = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dib"}


def sniff(head: bytes) -> str | None:
    """Format name from the first bytes of a file, or None."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return None


# ---------------------------------------------------------------------------------------------
# header probes: (rows, cols) per page without decoding pixels


def _png_dims(path, buf: bytes) -> list[tuple[int, int]]:
    if len(buf) < 33 or buf[12:16] != b"IHDR":
        raise read_error(path, "truncated or malformed PNG header", "truncated")
    cols, rows = struct.unpack(">II", buf[16:24])
    return [(rows, cols)]


def _bmp_dims(path, buf: bytes) -> list[tuple[int, int]]:
    if len(buf) < 26:
        raise read_error(path, "truncated BMP header", "truncated")
    (hsize,) = struct.unpack("<I", buf[14:18])
    if hsize == 12:  # OS/2 BITMAPCOREHEADER
        cols, rows = struct.unpack("<HH", buf[18:22])
    else:
        cols, rows = struct.unpack("<ii", buf[18:26])
    return [(abs(rows), abs(cols))]


def _jpeg_dims(path, buf: bytes) -> list[tuple[int, int]]:
    i, n = 2, len(buf)
    while i + 4 <= n:
        if buf[i] != 0xFF:
            raise read_error(path, "malformed JPEG marker stream", "corrupt")
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (seglen,) = struct.unpack(">H", buf[i + 2 : i + 4])
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            if i + 9 > n:
                break
            rows, cols = struct.unpack(">HH", buf[i + 5 : i + 9])
            return [(rows, cols)]
        if marker == 0xDA:  # start of scan before any SOF
            break
        i += 2 + seglen
    raise read_error(path, "truncated or malformed JPEG (no frame header)", "truncated")


def _tiff_dims(path, buf: bytes, big: bool = False) -> list[tuple[int, int]]:
    """(rows, cols) of every page of a classic TIFF (or a BigTIFF: 8-byte counts and offsets, 20-byte
    entries) by walking the IFD chain."""
    end = "<" if buf[:2] == b"II" else ">"
    n = len(buf)
    # (offset format, directory entry count format, entry size, entry value count format)
    off_f, cnt_f, entry, val_f = ("Q", "Q", 20, "Q") if big else ("I", "H", 12, "I")
    off_n, cnt_n = struct.calcsize(off_f), struct.calcsize(cnt_f)
    (off,) = struct.unpack(end + off_f, buf[8:16] if big else buf[4:8])
    dims: list[tuple[int, int]] = []
    seen: set[int] = set()
    types = {3: ("H", 2), 4: ("I", 4), 16: ("Q", 8)}  # SHORT, LONG, LONG8
    while off:
        if off in seen or off + cnt_n > n or len(dims) > 100_000:
            raise read_error(path, "malformed TIFF directory chain", "corrupt")
        seen.add(off)
        (count,) = struct.unpack(end + cnt_f, buf[off : off + cnt_n])
        first, last = off + cnt_n, off + cnt_n + entry * count
        if last + off_n > n:
            raise read_error(path, "truncated TIFF directory", "truncated")
        rows = cols = None
        for e in range(first, last, entry):
            tag, typ, cnt = struct.unpack(end + "HH" + val_f, buf[e : e + 4 + struct.calcsize(val_f)])
            if tag in (256, 257) and typ in types and cnt == 1:
                fmt, size = types[typ]
                v = e + 4 + struct.calcsize(val_f)
                (val,) = struct.unpack(end + fmt, buf[v : v + size])
                if tag == 256:
                    cols = val
                else:
                    rows = val
        if rows is None or cols is None:
            raise read_error(path, f"TIFF page {len(dims)} has no ImageWidth/ImageLength", "corrupt")
        dims.append((rows, cols))
        (off,) = struct.unpack(end + off_f, buf[last : last + off_n])
    if not dims:
        raise read_error(path, "TIFF has no pages", "empty_image")
    return dims


def _load(path: Path) -> tuple[str, bytes]:
    try:
        buf = path.read_bytes()
    except OSError as exc:
        raise read_error(path, f"cannot read file ({exc.strerror or exc})", "unreadable") from exc
    kind = sniff(buf[:16])
    if kind is None:
        raise read_error(path, "not a PNG/JPEG/TIFF/BMP file (unrecognised signature)", "unknown_format")
    return kind, buf


def _page_dims(path, kind: str, buf: bytes) -> list[tuple[int, int]]:
    """Per-page (rows, cols) from the file's headers."""
    try:
        if kind == "png":
            return _png_dims(path, buf)
        if kind == "bmp":
            return _bmp_dims(path, buf)
        if kind == "jpeg":
            return _jpeg_dims(path, buf)
        return _tiff_dims(path, buf, big=kind == "bigtiff")
    except struct.error as exc:
        raise read_error(path, f"truncated {kind.upper()} header", "truncated") from exc


def count_frames(path) -> int:
    """Number of frames (pages) in a raster image file: 1 except for multi-page TIFF."""
    p = check_file(path)
    kind, buf = _load(p)
    return len(_page_dims(p, kind, buf))


def _decode_page(path, kind: str, arr: np.ndarray, index: int, multi: bool) -> np.ndarray:
    try:
        if multi:
            ok, mats = cv2.imdecodemulti(arr, cv2.IMREAD_UNCHANGED, None, (index, index + 1))
            img = mats[0] if ok and len(mats) else None
        else:
            img = cv2.imdecode(arr, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise read_error(path, f"OpenCV failed to decode {kind.upper()} page {index}: {exc}", "corrupt") from exc
    if img is None or img.size == 0:
        raise read_error(path, f"cannot decode {kind.upper()} page {index} (truncated or corrupt)", "corrupt")
    return img


def open_image(path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> OpenedFile:
    """Validate a raster image header (size limits) and return a lazy frame source."""
    p = check_file(path)
    kind, buf = _load(p)
    dims = _page_dims(p, kind, buf)
    for rows, cols in dims:
        check_pixels(p, rows, cols, max_pixels)
    n_pages = len(dims)
    shape = dims[0] if len(set(dims)) == 1 else None
    meta: dict[str, object] = {
        "source": str(p),
        "format": kind,
        "n_frames": n_pages,
        "spacing_error": "no_spacing",
        "spacing_detail": f"{kind.upper()} files carry no pixel spacing; pass spacing_mm= or plus_config= (--spacing-mm, --plus-config)",
    }
    multi = kind in ("tiff", "bigtiff")

    def frames() -> Iterator[RawFrame]:
        arr = np.frombuffer(buf, dtype=np.uint8)
        for i in range(n_pages):
            img = _decode_page(p, kind, arr, i, multi)
            check_pixels(p, int(img.shape[0]), int(img.shape[1]), max_pixels)
            grey = to_grey_u8(p, img, channel_order="BGR", what=f"{kind.upper()} page {i}")
            yield RawFrame(index=i, image=grey)

    return OpenedFile(
        path=p, format=kind, n_frames=n_pages, shape=shape, spacing_mm=None, spacing_source="unknown",
        meta=meta, frames=frames,
    )
