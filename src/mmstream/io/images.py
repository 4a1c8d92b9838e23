"""Raster images (PNG, JPEG, TIFF incl. multi-page, BMP) read with OpenCV, JPEG with libjpeg-turbo.

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
* Frames: the pages of a multi-page TIFF (decoded one at a time, each page found from its directory,
  so N pages take time linear in N) and the frames of an animated PNG (APNG: every frame, composed
  as the file says, decoded together, at most ``MAX_ANIMATION_BYTES`` of them); 1 otherwise.
* JPEG (8-bit baseline, extended, progressive, lossless) is decoded by libjpeg-turbo in strict mode
  (:func:`~mmstream.io._common.decode_jpeg`; the same pixels as OpenCV's decode, bit for bit): a JPEG
  whose entropy-coded data is damaged or cut (OpenCV's libjpeg fills the rest with grey and only
  prints a warning) is refused, ``ReadError("corrupt")``, or ``"truncated"`` when the file ends early.
  A JPEG libjpeg-turbo's interface (``simplejpeg``) does not take (arithmetic-coded, hierarchical,
  sampling factors it does not name, a warning in its header) is decoded by OpenCV, without that
  check (libjpeg's warnings then reach stderr). Samples of other than 8 bits (12-bit JPEG):
  ``"unsupported_bit_depth"``.
* OpenCV's own log (a warning before a failed decode) is kept off the console: importing
  :mod:`mmstream.io` sets it to errors only, unless the environment sets ``OPENCV_LOG_LEVEL``.
* These formats carry no trusted physical spacing: ``spacing_mm`` is ``None`` unless the caller
  passes one (TIFF resolution tags describe print DPI, not anatomy, and are ignored).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from ._common import (
    DEFAULT_MAX_PIXELS,
    JpegDamaged,
    check_file,
    check_pixels,
    decode_jpeg,
    jpeg_header,
    quiet_opencv,
    read_error,
    to_grey_u8,
)
from ._opened import OpenedFile, RawFrame

quiet_opencv()

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

#: Largest decoded size (bytes, at most 8 per pixel) of an animated PNG's frames: OpenCV decodes them together.
MAX_ANIMATION_BYTES = 1 << 30


def sniff(head: bytes) -> str | None:
    """Format name from the first bytes of a file, or None."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return None


# ---------------------------------------------------------------------------------------------
# header probes: (rows, cols) per page without decoding pixels


def _apng_frames(path, buf: bytes) -> int | None:
    """The frame count of an animated PNG (an ``acTL`` chunk before the image data; its frames counted
    by their ``fcTL`` chunks, which must match the ``acTL`` count), None for a plain PNG."""
    announced, controls, default_is_frame, i, n = None, 0, None, 8, len(buf)
    while i + 12 <= n:
        (length,) = struct.unpack(">I", buf[i : i + 4])
        kind = buf[i + 4 : i + 8]
        if kind == b"acTL" and length >= 4:
            (announced,) = struct.unpack(">I", buf[i + 8 : i + 12])
        elif kind == b"fcTL":
            controls += 1
        elif kind == b"IEND" or (kind == b"IDAT" and announced is None):
            break  # image data before any acTL: a plain PNG
        if kind == b"IDAT" and default_is_frame is None:
            default_is_frame = controls > 0
        i += 12 + length
    if announced is None:
        return None
    if controls != announced:
        raise read_error(path, f"animated PNG announces {announced} frame(s) and holds {controls}",
                         "truncated" if controls < announced else "corrupt")  # fmt: skip
    if announced == 0:
        raise read_error(path, "animated PNG with 0 frames", "empty_image")
    if announced == 1 and default_is_frame is False:  # OpenCV would give the default image for the frame
        raise read_error(path, "animated PNG of one frame that is not its default image", "unsupported")
    return announced


def _png_dims(path, buf: bytes) -> list[tuple[int, int]]:
    """The canvas size, once per frame of an animated PNG."""
    if len(buf) < 33 or buf[12:16] != b"IHDR":
        raise read_error(path, "truncated or malformed PNG header", "truncated")
    cols, rows = struct.unpack(">II", buf[16:24])
    return [(rows, cols)] * (_apng_frames(path, buf) or 1)


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
    try:
        header = jpeg_header(buf)
    except ValueError:
        raise read_error(path, "malformed JPEG marker stream", "corrupt") from None
    if header is None:
        raise read_error(path, "truncated or malformed JPEG (no frame header)", "truncated")
    if header.precision != 8:
        raise read_error(path, f"JPEG of {header.precision}-bit samples: only 8-bit JPEG is read",
                         "unsupported_bit_depth")  # fmt: skip
    return [(header.rows, header.cols)]


def _tiff_pages(path, buf: bytes, big: bool = False) -> list[tuple[int, tuple[int, int]]]:
    """(directory offset, (rows, cols)) of every page of a classic TIFF (or a BigTIFF: 8-byte counts
    and offsets, 20-byte entries) by walking the IFD chain."""
    end = "<" if buf[:2] == b"II" else ">"
    n = len(buf)
    # (offset format, directory entry count format, entry size, entry value count format)
    off_f, cnt_f, entry, val_f = ("Q", "Q", 20, "Q") if big else ("I", "H", 12, "I")
    off_n, cnt_n = struct.calcsize(off_f), struct.calcsize(cnt_f)
    (off,) = struct.unpack(end + off_f, buf[8:16] if big else buf[4:8])
    pages: list[tuple[int, tuple[int, int]]] = []
    seen: set[int] = set()
    types = {3: ("H", 2), 4: ("I", 4), 16: ("Q", 8)}  # SHORT, LONG, LONG8
    while off:
        if off in seen or off + cnt_n > n or len(pages) > 100_000:
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
            raise read_error(path, f"TIFF page {len(pages)} has no ImageWidth/ImageLength", "corrupt")
        pages.append((off, (rows, cols)))
        (off,) = struct.unpack(end + off_f, buf[last : last + off_n])
    if not pages:
        raise read_error(path, "TIFF has no pages", "empty_image")
    return pages


def _load(path: Path) -> tuple[str, bytes]:
    try:
        buf = path.read_bytes()
    except OSError as exc:
        raise read_error(path, f"cannot read file ({exc.strerror or exc})", "unreadable") from exc
    kind = sniff(buf[:16])
    if kind is None:
        raise read_error(path, "not a PNG/JPEG/TIFF/BMP file (unrecognised signature)", "unknown_format")
    return kind, buf


def _pages(path, kind: str, buf: bytes) -> list[tuple[int | None, tuple[int, int]]]:
    """Per page (frame): its TIFF directory offset (None for other formats) and (rows, cols), from the
    file's headers."""
    try:
        if kind == "png":
            return [(None, d) for d in _png_dims(path, buf)]
        if kind == "bmp":
            return [(None, d) for d in _bmp_dims(path, buf)]
        if kind == "jpeg":
            return [(None, d) for d in _jpeg_dims(path, buf)]
        return _tiff_pages(path, buf, big=kind == "bigtiff")
    except struct.error as exc:
        raise read_error(path, f"truncated {kind.upper()} header", "truncated") from exc


def count_frames(path) -> int:
    """Number of frames (pages) in a raster image file: 1 except for multi-page TIFF and animated PNG."""
    p = check_file(path)
    kind, buf = _load(p)
    return len(_pages(p, kind, buf))


def _decoded(path, what: str, img, error: str | None) -> np.ndarray:
    """``img`` from OpenCV, or the one-line ReadError of a failed decode."""
    if error is not None:
        raise read_error(path, f"OpenCV failed to decode {what}: {error}", "corrupt")
    if img is None or img.size == 0:
        raise read_error(path, f"cannot decode {what} (truncated or corrupt)", "corrupt")
    return img


def _cv_error(exc: cv2.error) -> str:
    """OpenCV's error as one line; MemoryError when it could not allocate (not a corrupt file)."""
    if exc.code == cv2.Error.StsNoMem:
        raise MemoryError(f"OpenCV: {exc.err}") from None
    return " ".join(str(exc).split())


def _decode_page(path, kind: str, arr: np.ndarray, index: int) -> np.ndarray:
    """One image (the first page of ``arr``) decoded by OpenCV."""
    img, error = None, None
    try:
        img = cv2.imdecode(arr, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        error = _cv_error(exc)
    return _decoded(path, f"{kind.upper()} page {index}", img, error)


def _decode_jpeg(path, buf: bytes) -> np.ndarray:
    """A JPEG file's image: libjpeg-turbo's strict decode (a damaged one refused), else OpenCV's."""
    try:
        return decode_jpeg(buf)
    except JpegDamaged as exc:
        raise read_error(path, f"JPEG page 0 is damaged ({exc}): its pixels would be partly invented (grey fill)",
                         "truncated" if "Premature end of JPEG file" in str(exc) else "corrupt") from None  # fmt: skip
    except ValueError:  # a JPEG libjpeg-turbo's interface does not take
        return _decode_page(path, "jpeg", np.frombuffer(buf, dtype=np.uint8), 0)


def _decode_animation(path, arr: np.ndarray, n: int) -> list[np.ndarray]:
    """The ``n`` frames of an animated PNG, composed by OpenCV (it decodes them together)."""
    ok, anim, error = False, None, None
    try:
        ok, anim = cv2.imdecodeanimation(arr)
    except cv2.error as exc:
        error = _cv_error(exc)
    frames = list(anim.frames) if ok and anim is not None else []
    _decoded(path, "animated PNG", frames[0] if frames else None, error)
    if len(frames) != n:
        raise read_error(path, f"animated PNG: {len(frames)} of its {n} frames decoded", "corrupt")
    return frames


def _decode_tiff_page(path, kind: str, buf: bytearray, offset: int, index: int) -> np.ndarray:
    """Page ``index`` of a TIFF, its directory at ``offset``, decoded by OpenCV as a one-page TIFF:
    ``buf``'s header points at that directory and the directory's next-directory offset is 0 while it
    is decoded (``imdecodemulti(..., (i, i + 1))`` walked the pages from 0: 2000 pages took 201 s;
    OpenCV also walks every directory after the first one)."""
    big = kind == "bigtiff"
    end = "<" if buf[:2] == b"II" else ">"
    word, first = ("Q", slice(8, 16)) if big else ("I", slice(4, 8))
    count_fmt, entry = ("Q", 20) if big else ("H", 12)
    (count,) = struct.unpack_from(end + count_fmt, buf, offset)
    at = offset + struct.calcsize(count_fmt) + entry * count  # the next-directory offset
    link = slice(at, at + struct.calcsize(word))
    buf[first] = struct.pack(end + word, offset)
    following = bytes(buf[link])
    buf[link] = bytes(len(following))
    try:
        return _decode_page(path, kind, np.frombuffer(buf, dtype=np.uint8), index)
    finally:
        buf[link] = following


def open_image(path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> OpenedFile:
    """Validate a raster image header (size limits) and return a lazy frame source."""
    p = check_file(path)
    kind, buf = _load(p)
    pages = _pages(p, kind, buf)
    dims = [d for _, d in pages]
    for rows, cols in dims:
        check_pixels(p, rows, cols, max_pixels)
    n_pages = len(dims)
    animated = kind == "png" and _apng_frames(p, buf) is not None
    if animated and n_pages * dims[0][0] * dims[0][1] * 8 > MAX_ANIMATION_BYTES:
        raise read_error(p, f"animated PNG of {n_pages} frames of {dims[0][0]} x {dims[0][1]} pixels: up to "
                         f"{n_pages * dims[0][0] * dims[0][1] * 8 / 2**20:.0f} MiB decoded at once, over "
                         f"{MAX_ANIMATION_BYTES / 2**20:.0f} MiB", "too_large")  # fmt: skip
    shape = dims[0] if len(set(dims)) == 1 else None
    meta: dict[str, object] = {
        "source": str(p),
        "format": kind,
        "n_frames": n_pages,
        "spacing_error": "no_spacing",
        "spacing_detail": f"{kind.upper()} files carry no pixel spacing; pass spacing_mm= or plus_config= (--spacing-mm, --plus-config)",
    }
    if animated:
        meta["animated"] = True

    def decoded() -> Iterator[np.ndarray]:
        if animated:
            frames = _decode_animation(p, np.frombuffer(buf, dtype=np.uint8), n_pages)
            while frames:
                yield frames.pop(0)  # let each frame go once converted
        elif kind in ("tiff", "bigtiff"):
            page_buf = bytearray(buf)  # one copy, made a one-page TIFF of each page in turn
            for i, (offset, _) in enumerate(pages):
                yield _decode_tiff_page(p, kind, page_buf, offset, i)
        elif kind == "jpeg":
            yield _decode_jpeg(p, buf)
        else:
            yield _decode_page(p, kind, np.frombuffer(buf, dtype=np.uint8), 0)

    def frames() -> Iterator[RawFrame]:
        for i, img in enumerate(decoded()):
            what = f"{kind.upper()} {'frame' if animated else 'page'} {i}"
            check_pixels(p, int(img.shape[0]), int(img.shape[1]), max_pixels)
            grey = to_grey_u8(p, img, channel_order="BGR", what=what)
            del img  # the decoded samples go before the frame is handed out
            yield RawFrame(index=i, image=grey)

    return OpenedFile(
        path=p, format=kind, n_frames=n_pages, shape=shape, spacing_mm=None, spacing_source="unknown",
        meta=meta, frames=frames,
    )
