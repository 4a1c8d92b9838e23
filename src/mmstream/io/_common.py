"""Shared pieces of the file readers: the :class:`ImageFrame` record, grey conversion, validation.

Private module; the public names are re-exported from :mod:`mmstream.io`.
"""

from __future__ import annotations

import math
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import simplejpeg

from mmstream.errors import ReadError, SpacingError

#: Every value :attr:`ImageFrame.spacing_source` can take.
SPACING_SOURCES = (
    "dicom_us_regions",
    "dicom_pixel_spacing",
    "metaimage",
    "plus_config",
    "config",
    "unknown",
)

#: Default cap on the pixels of ONE frame (rows * cols); larger frames raise ``ReadError("too_large")``.
DEFAULT_MAX_PIXELS = 8192 * 8192


@dataclass(frozen=True)
class ImageFrame:
    """One 2-D grey frame read from a file.

    Attributes
    ----------
    image : ndarray of shape (M, N), uint8
        C-contiguous grey image, rows first. Colour sources are converted with the BT.601 luma
        weights exactly as ``PIL.Image.convert("L")`` does (see :func:`rgb_to_grey`).
    spacing_mm : (float, float) or None
        ``(row_mm, col_mm)``: physical size of one pixel step down a column and along a row, in mm.
        ``None`` when the file does not say (see ``meta["spacing_error"]`` for why).
    spacing_source : str
        One of :data:`SPACING_SOURCES`. ``"config"`` means the caller passed ``spacing_mm``.
    index : int
        0-based position of the frame inside the file.
    t_s : float or None
        Frame time in seconds as stored in the file (DICOM: relative to the first frame;
        PLUS MetaImage: the raw ``Seq_FrameNNNN_Timestamp``), ``None`` when the file has none.
    meta : mapping
        JSON-serialisable extras (plain ``dict``/``list``/``str``/``float``/``int``/``bool``/``None``).
    """

    image: np.ndarray
    spacing_mm: tuple[float, float] | None
    spacing_source: str
    index: int
    t_s: float | None
    meta: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        img = self.image
        if not isinstance(img, np.ndarray) or img.ndim != 2 or img.dtype != np.uint8:
            raise TypeError("ImageFrame.image must be a 2-D uint8 ndarray")
        if not img.flags.c_contiguous:
            raise TypeError("ImageFrame.image must be C-contiguous")
        if self.spacing_source not in SPACING_SOURCES:
            raise ValueError(f"unknown spacing_source {self.spacing_source!r}")
        if (self.spacing_mm is None) != (self.spacing_source == "unknown"):
            raise ValueError("spacing_mm is None exactly when spacing_source == 'unknown'")

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of :attr:`image`."""
        return (int(self.image.shape[0]), int(self.image.shape[1]))

    def require_spacing(self) -> tuple[float, float]:
        """Return :attr:`spacing_mm` or raise :class:`~mmstream.errors.SpacingError`.

        The error's ``reason`` is ``meta["spacing_error"]`` when the reader recorded why the spacing
        is unknown (e.g. ``"ambiguous_regions"``), else ``"no_spacing"``.
        """
        if self.spacing_mm is not None:
            return self.spacing_mm
        reason = str(self.meta.get("spacing_error", "no_spacing"))
        src = self.meta.get("source", "<unknown file>")
        detail = self.meta.get("spacing_detail", "the file states no pixel spacing")
        raise SpacingError(f"{src}: frame {self.index}: pixel spacing unknown ({detail})", reason=reason)


# ---------------------------------------------------------------------------------------------
# errors


def read_error(path: os.PathLike | str, message: str, reason: str) -> ReadError:
    """A :class:`ReadError` whose message names the file and whose ``reason`` is the short code."""
    return ReadError(f"{os.fspath(path)}: {message}", reason=reason)


def file_beside(header: Path, name: str, field: str) -> Path:
    """The data file ``name`` a header (``field``: ``ElementDataFile``, NRRD ``data file``) names,
    which must be one plain file in the header's folder or below it; ReadError ``bad_header``,
    ``unsupported`` (LIST or a file-name pattern), ``path_traversal`` (absolute, or outside the
    folder), ``not_found``."""
    if "\x00" in name or not name.strip():
        raise read_error(header, f"{field} {name!r} is not a file name", "bad_header")
    if re.fullmatch(r"LIST(\s+\d+D)?", name.strip(), flags=re.I) or re.search(r"%\d*d", name):
        raise read_error(header, f"{field} {name!r}: LIST/pattern data files are not supported", "unsupported")
    rel = Path(name)
    folder = Path(header).resolve().parent
    if rel.is_absolute() or rel.drive:
        raise read_error(header, f"{field} {name!r} is an absolute path; only files beside the header are read",
                         "path_traversal")  # fmt: skip
    target = (folder / rel).resolve()
    if not target.is_relative_to(folder):
        raise read_error(header, f"{field} {name!r} points outside the header's folder", "path_traversal")
    if not target.is_file():
        raise read_error(header, f"{field} {name!r} not found beside the header", "not_found")
    return target


def check_file(path: os.PathLike | str) -> Path:
    """Resolve ``path`` and check it names a non-empty regular file."""
    try:
        p = Path(os.fspath(path))
    except TypeError as exc:
        raise ReadError(f"{path!r}: not a path ({exc})", reason="not_found") from exc
    try:
        st = p.stat()
    except FileNotFoundError as exc:
        raise read_error(p, "no such file", "not_found") from exc
    except OSError as exc:
        raise read_error(p, f"cannot stat file ({exc.strerror or exc})", "unreadable") from exc
    if not p.is_file():
        raise read_error(p, "not a regular file", "not_a_file")
    if st.st_size == 0:
        raise read_error(p, "file is empty (0 bytes)", "empty_file")
    return p


def check_pixels(path, rows: int, cols: int, max_pixels: int, what: str = "frame") -> None:
    """Refuse empty frames and frames above ``max_pixels`` before decoding them."""
    if rows <= 0 or cols <= 0:
        raise read_error(path, f"empty image ({rows} x {cols})", "empty_image")
    if rows * cols > max_pixels:
        raise read_error(
            path,
            f"{what} of {rows} x {cols} = {rows * cols} pixels exceeds max_pixels={max_pixels}",
            "too_large",
        )


# ---------------------------------------------------------------------------------------------
# spacing


MAX_SPACING_MM = 100.0  # mm per pixel: no imaging device comes near; beyond, *_mm results could overflow
MIN_SPACING_MM = 1e-4  # mm per pixel (0.1 um): far finer than any medical imaging device; below, a corrupt value


def validate_spacing(value, *, what: str) -> tuple[float, float]:
    """Check a ``(row_mm, col_mm)`` pair: two finite numbers in [MIN_SPACING_MM, MAX_SPACING_MM];
    raise ``SpacingError("invalid_spacing")``."""
    try:
        row_mm, col_mm = (float(v) for v in value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SpacingError(f"{what}: expected (row_mm, col_mm), got {value!r}", reason="invalid_spacing") from exc
    if not all(math.isfinite(v) and MIN_SPACING_MM <= v <= MAX_SPACING_MM for v in (row_mm, col_mm)):
        raise SpacingError(f"{what}: spacing must be two numbers in [{MIN_SPACING_MM:g}, {MAX_SPACING_MM:g}] mm, got {value!r}",
                           reason="invalid_spacing")  # fmt: skip
    return (row_mm, col_mm)


def floats(text: str | None) -> list[float] | None:
    """The whitespace-separated numbers of a header field; None when absent or not all numbers."""
    if text is None:
        return None
    try:
        return [float(v) for v in text.split()]
    except ValueError:
        return None


def positive_finite(x: float) -> bool:
    return math.isfinite(x) and x > 0


# ---------------------------------------------------------------------------------------------
# pixel conversion


_LUMA_BLOCK_PX = 1 << 20  # pixels converted at a time: 4 MB temporaries whatever the frame size


def _luma(arr: np.ndarray, r: int, g: int, b: int) -> np.ndarray:
    """BT.601 luma of channels ``r, g, b`` of ``arr`` (M, N, C), samples already known to be in 0..255,
    a block of rows at a time: no widened copy of the whole image (for an 8192 x 8192 16-bit RGBA
    frame that copy took 2.2 GB; the blocks' temporaries take 12 MB)."""
    rows, cols = arr.shape[:2]
    grey = np.empty((rows, cols), np.uint8)
    step = max(1, _LUMA_BLOCK_PX // max(cols, 1))
    for r0 in range(0, rows, step):
        block = arr[r0 : r0 + step]
        acc = block[..., r].astype(np.uint32)
        acc *= 19595
        acc += block[..., g].astype(np.uint32) * 38470
        acc += block[..., b].astype(np.uint32) * 7471
        acc += 0x8000
        acc >>= 16
        grey[r0 : r0 + step] = acc
    return grey


def rgb_to_grey(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of an ``(M, N, 3)`` uint8 RGB image, bit-exact with ``PIL.Image.convert("L")``.

    Pillow computes ``L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16`` (weights 0.299, 0.587, 0.114
    in 16-bit fixed point). The decimal form ``(R*299 + G*587 + B*114 + 500) // 1000`` differs from
    Pillow by 1 grey level on 9 040 of the 16.7 M colours, so it is not used.
    """
    return _luma(rgb, 0, 1, 2)


def _check_8bit(path, arr: np.ndarray, what: str) -> None:
    """Refuse samples that are not integers in 0..255 (see :func:`to_uint8`)."""
    if arr.dtype == np.uint8 or arr.dtype.kind == "b":
        return
    if arr.dtype.kind not in "iu":
        raise read_error(path, f"{what} has unsupported sample type {arr.dtype}", "unsupported_dtype")
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise read_error(
                path,
                f"{what} has {arr.dtype} samples in {lo}..{hi}; only values that fit 8 bits (0..255) are "
                "accepted, mmstream never rescales silently",
                "unsupported_bit_depth",
            )


def to_uint8(path, arr: np.ndarray, *, what: str = "image") -> np.ndarray:
    """Bring integer samples to uint8 without rescaling.

    Rule: uint8 passes; any other integer type is accepted only when every sample lies in
    0..255 (e.g. 16-bit containers holding 8-bit data), otherwise ``ReadError("unsupported_bit_depth")``.
    Floating point and other kinds raise ``ReadError("unsupported_dtype")``. Values are never rescaled.
    """
    _check_8bit(path, arr, what)
    return arr if arr.dtype == np.uint8 else arr.astype(np.uint8)


def to_grey_u8(path, arr: np.ndarray, *, channel_order: str = "RGB", what: str = "image") -> np.ndarray:
    """Convert ``(M, N)``, ``(M, N, 1)``, ``(M, N, 3)`` or ``(M, N, 4)`` samples to a C-contiguous uint8 grey image.

    ``channel_order`` is ``"RGB"`` or ``"BGR"`` (OpenCV); a 4th (alpha) channel is dropped. Colour
    is converted from the samples as they are (any integer type holding 0..255), a block of rows at a
    time, so the peak memory is the input plus the grey result.
    """
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        return np.ascontiguousarray(to_uint8(path, arr, what=what))
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise read_error(path, f"{what} has unsupported shape {arr.shape}", "unsupported_layout")
    _check_8bit(path, arr[..., :3], what)
    return _luma(arr, 2, 1, 0) if channel_order == "BGR" else _luma(arr, 0, 1, 2)


# ---------------------------------------------------------------------------------------------
# codestream headers, strict JPEG decoding, OpenCV's log

_JPEG_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7))  # 0xF7: JPEG-LS


@dataclass(frozen=True)
class JpegHeader:
    """The frame header (SOF) of a JPEG codestream: ``marker`` (0xC0 baseline, 0xC1 extended, 0xC2
    progressive, 0xC3 lossless, ..., 0xF7 JPEG-LS), sample ``precision`` in bits, ``rows``, ``cols``
    and the number of colour ``components``."""

    marker: int
    precision: int
    rows: int
    cols: int
    components: int


def jpeg_header(buf: bytes) -> JpegHeader | None:
    """The frame header (SOF, JPEG-LS SOF55) of a JPEG codestream, None when the data ends or a scan
    starts before one; ValueError for a marker stream that is not JPEG."""
    i, n = 2, len(buf)
    while i + 4 <= n:
        if buf[i] != 0xFF:
            raise ValueError("malformed JPEG marker stream")
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker in _JPEG_SOF:
            if i + 10 > n:
                return None
            precision, rows, cols, components = struct.unpack(">BHHB", buf[i + 4 : i + 10])
            return JpegHeader(marker, precision, rows, cols, components)
        if marker == 0xDA:  # start of scan before any SOF
            return None
        (seglen,) = struct.unpack(">H", buf[i + 2 : i + 4])
        i += 2 + seglen
    return None


def j2k_dims(buf: bytes) -> tuple[int, int] | None:
    """``(rows, cols)`` from the SIZ segment of a JPEG 2000 codestream (raw, or in a JP2 file's
    codestream box within its first MiB), None when there is none."""
    i = bytes(buf[: 1 << 20]).find(b"\xff\x4f\xff\x51")  # SOC then SIZ
    if i < 0 or i + 24 > len(buf):
        return None
    xsiz, ysiz, x0, y0 = struct.unpack(">IIII", buf[i + 8 : i + 24])
    return (ysiz - y0, xsiz - x0)


#: SOF markers of the JPEG processes :func:`decode_jpeg` hands to libjpeg-turbo (8-bit samples only):
#: Huffman-coded baseline, extended and progressive DCT, and lossless.
_TURBOJPEG_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3))
_JPEG_DAMAGE = re.compile(r"Corrupt JPEG data|Premature end of JPEG file|Inconsistent progression")


class JpegDamaged(ValueError):
    """libjpeg-turbo found a JPEG's entropy-coded data damaged or cut: a decoder that goes on fills the
    rest of the image with grey. The message is libjpeg's warning, e.g. "Premature end of JPEG file"."""


def decode_jpeg(buf: bytes) -> np.ndarray:
    """An 8-bit JPEG codestream decoded by libjpeg-turbo (``simplejpeg``) in strict mode: ``(M, N, 1)``
    for one component, ``(M, N, 3)`` BGR otherwise (YCbCr, RGB, CMYK and YCCK converted as OpenCV
    does: the same pixels, bit for bit). Thread-safe; nothing is written to stderr.

    Raises :class:`JpegDamaged` when the entropy-coded data is damaged or cut (OpenCV and Pillow
    decode it with grey fill and at most print a warning), ValueError when libjpeg-turbo's interface
    cannot decode this JPEG: another process or precision (12-bit, arithmetic-coded, hierarchical,
    JPEG-LS), sampling factors it does not name, or a fatal error; the caller's other decoder then
    decides (simplejpeg also stops at a warning in the header, e.g. an unknown JFIF revision). A
    warning in the data that is not damage ("Invalid SOS parameters for sequential JPEG") does not
    refuse the pixels (damage after it goes unseen). Always at full size: a reduced-size decode,
    0.3 ms cheaper for a 480 x 640 frame, made simplejpeg 1.9 write past its buffer (a crash) for
    lossless JPEG."""
    header = jpeg_header(buf)
    if header is None:
        raise ValueError("no JPEG frame header")
    if header.marker not in _TURBOJPEG_SOF or header.precision != 8:
        raise ValueError(f"JPEG process 0x{header.marker:02X} with {header.precision}-bit samples")
    colorspace = "GRAY" if header.components == 1 else "BGR"
    try:
        return simplejpeg.decode_jpeg(buf, colorspace=colorspace, strict=True)
    except ValueError as exc:
        if _JPEG_DAMAGE.search(str(exc)):
            raise JpegDamaged(" ".join(str(exc).split())) from None
    return simplejpeg.decode_jpeg(buf, colorspace=colorspace, strict=False)  # a warning of another kind


def quiet_opencv() -> None:
    """OpenCV's log to errors only, unless the environment sets ``OPENCV_LOG_LEVEL``: its warnings
    (e.g. "PNG input buffer is incomplete" before a failed decode, a grabber that did not open) repeat
    what the readers raise and the sources count, as lines of their own on the console."""
    if "OPENCV_LOG_LEVEL" not in os.environ:
        import cv2

        set_level = getattr(cv2, "setLogLevel", None) or cv2.utils.logging.setLogLevel  # OpenCV 4 / 5
        set_level(2)  # cv::utils::logging::LOG_LEVEL_ERROR
