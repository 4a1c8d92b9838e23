"""DICOM single- and multi-frame images (ultrasound first) via pydicom 3.

Pixels
------
* Every transfer syntax pydicom can decode with the installed plugins (pylibjpeg: JPEG baseline /
  extended / lossless, JPEG-LS not guaranteed, JPEG 2000, RLE; native little/big endian).
* Frames are decoded one at a time (``pydicom.pixels.iter_pixels``): a 120-frame cine is not
  decoded up front.
* Before a compressed frame is decoded, the size its JPEG / JPEG-LS / JPEG 2000 codestream declares
  must be Rows x Columns (``ReadError("size_mismatch")``), and a JPEG's data must be whole: a frame
  libjpeg-turbo's strict decode finds damaged or cut (8-bit baseline, extended, progressive or
  lossless; pydicom's plugins decode it without a word), that libjpeg cannot decode at all (8-bit
  samples), or that one decoding plugin failed on and another decoded, is refused (``"corrupt"``;
  the frames before it have been returned). pydicom's log records while a thread reads a file (a
  plugin's traceback) are that thread's to report, not the console's. A decoder's MemoryError is not
  a corrupt file: it propagates as MemoryError.
* Deflated Explicit VR Little Endian: the data set is inflated as it is read, never beyond its header's
  pixel data (Rows x Columns x SamplesPerPixel x BitsAllocated x NumberOfFrames) plus
  ``TRAILING_BYTES`` (``"too_large"``).
* A file that ends inside an element before any pixel data is ``"truncated"`` (pydicom reads it
  without a word), not ``"no_pixel_data"``.
* YBR_* is converted to RGB by pydicom, then RGB -> grey with the Pillow-exact BT.601 luma
  (uncompressed YBR_FULL_422 holds 2 samples a pixel).
* PALETTE COLOR: the LUT is applied (``apply_color_lut``), then grey. 16-bit palette entries are
  display intensities on 0..65535 (PS3.3 C.7.6.3.1.5) and are mapped to 0..255 by ``round(v / 257)``
  -- the standard's meaning of the LUT, recorded as ``meta["palette_bits"] == 16``.
* MONOCHROME1 is inverted: ``(2**BitsStored - 1) - v``.
* Grey samples wider than 8 bits are accepted only when they fit 0..255 (no silent windowing or
  rescaling); Modality/VOI LUTs are not applied. Float pixel data is refused.

Spacing (``spacing_mm = (row_mm, col_mm)``)
-------------------------------------------
1. ``SequenceOfUltrasoundRegions``: the 2-D B-mode regions (RegionSpatialFormat == 1 and
   RegionDataType == 1). A region is usable when PhysicalUnitsX/YDirection == 3 (cm), the deltas
   give a spacing from 1e-4 to 100 mm (the range of any ``spacing_mm``) and at least one pixel of the
   region lies inside the image; spacing is
   ``(PhysicalDeltaY * 10, PhysicalDeltaX * 10)`` mm. Several usable B-mode regions with the same
   spacing (dual view) are fine; different spacings give ``spacing_error = "ambiguous_regions"``;
   an unusable B-mode region gives ``"region_units"``, ``"invalid_spacing"`` or
   ``"region_outside_image"``. In those cases the pixels are still returned with
   ``spacing_mm=None`` and every region is listed in ``meta["us_regions"]``; ``strict_spacing=True``
   in :func:`mmstream.io.read_frames` (or :meth:`ImageFrame.require_spacing`) turns the reason into a
   :class:`~mmstream.errors.SpacingError`.
2. Without B-mode regions: ``PixelSpacing`` (row, col) in mm, from 1e-4 to 100 mm (else
   ``"invalid_spacing"``, the tag and value in ``meta["spacing_detail"]``). ``ImagerPixelSpacing`` alone is not
   used (``spacing_error = "detector_spacing"``): it is a projection image's spacing at the
   detector, not in the patient.
3. Otherwise unknown (``spacing_error = "no_spacing"``).

``region_rc`` values are half-open ``(r0, c0, r1, c1)`` so that ``image[r0:r1, c0:c1]`` is the
region (DICOM's RegionLocationMaxX1/Y1 are inclusive). A maximum equal to Columns/Rows (one past
the last pixel, written by some vendors) is tolerated and clipped (``"clipped": True`` in the region's
entry); anything further out makes the region unusable.

Time: ``FrameTimeVector`` (ms increments, cumulated; every increment after the first over 0), else
``FrameTime`` (ms), else ``CineRate`` (frames/s); ``t_s`` is relative to the first frame, ``None``
when the file gives no usable timing (``meta["frame_time_problem"]`` says why a tag was ignored).
"""

from __future__ import annotations

import io
import logging
import math
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

from mmstream.errors import MmstreamError

from ._common import (
    DEFAULT_MAX_PIXELS,
    MAX_SPACING_MM,
    MIN_SPACING_MM,
    JpegDamaged,
    check_file,
    check_pixels,
    decode_jpeg,
    j2k_dims,
    jpeg_header,
    positive_finite,
    read_error,
    rgb_to_grey,
    to_grey_u8,
    to_uint8,
)
from ._opened import OpenedFile, RawFrame

EXTENSIONS = {".dcm", ".dicom", ".dic"}

# lazily imported so `import mmstream.io` stays cheap
_pydicom = None


class _ThreadLog(logging.Filter):
    """pydicom's log records (warning and above) while a thread reads a file or decodes a frame, kept
    for that thread ("End of file reached", a decoding plugin's failure with its traceback) and from
    every handler (the service's console): the reader turns them into its one-line error. Other
    threads' records pass as before. (The warnings module's state is process-wide, so it cannot tell
    concurrent readers apart.)"""

    def __init__(self):
        super().__init__()
        self.local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        seen = getattr(self.local, "seen", None)
        if seen is None or record.levelno < logging.WARNING:
            return True
        seen.append(record)
        return False


_LOG = _ThreadLog()


def _pd():
    global _pydicom
    if _pydicom is None:
        import pydicom
        import pydicom.encaps
        import pydicom.pixels

        # a logger's filters see only the records made on it: every pydicom logger ("pydicom",
        # "pydicom.pixels.decoders.base", ...), all created by these imports
        for name, logger in list(logging.Logger.manager.loggerDict.items()):
            if isinstance(logger, logging.Logger) and (name == "pydicom" or name.startswith("pydicom.")):
                logger.addFilter(_LOG)
        _pydicom = pydicom
    return _pydicom


def sniff(head: bytes) -> bool:
    """True when the first 132+ bytes look like DICOM (preamble + ``DICM``)."""
    return len(head) >= 132 and head[128:132] == b"DICM"


def sniff_no_preamble(head: bytes) -> bool:
    """Preamble-less DICOM (old ACR-NEMA style) starting with group 0002 or 0008 little endian."""
    return len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00") and head[2:4] in (
        b"\x00\x00",
        b"\x01\x00",
        b"\x05\x00",
        b"\x08\x00",
        b"\x10\x00",
        b"\x12\x00",
        b"\x16\x00",
    )


# ---------------------------------------------------------------------------------------------
# header


def _num(value, cast=float):
    try:
        return cast(value)
    except (TypeError, ValueError):
        return None


def _plausible_mm(mm: float | None) -> bool:
    """A pixel spacing in mm that any imaging device could have (the range ``spacing_mm`` takes)."""
    return mm is not None and math.isfinite(mm) and MIN_SPACING_MM <= mm <= MAX_SPACING_MM


def _regions(ds, rows: int, cols: int) -> list[dict[str, object]]:
    out = []
    for k, r in enumerate(ds.get("SequenceOfUltrasoundRegions", None) or []):
        x0, y0 = _num(r.get("RegionLocationMinX0"), int), _num(r.get("RegionLocationMinY0"), int)
        x1, y1 = _num(r.get("RegionLocationMaxX1"), int), _num(r.get("RegionLocationMaxY1"), int)
        dx, dy = _num(r.get("PhysicalDeltaX")), _num(r.get("PhysicalDeltaY"))
        ux, uy = _num(r.get("PhysicalUnitsXDirection"), int), _num(r.get("PhysicalUnitsYDirection"), int)
        fmt, typ = _num(r.get("RegionSpatialFormat"), int), _num(r.get("RegionDataType"), int)
        reg: dict[str, object] = {
            "item": k,
            "spatial_format": fmt,
            "data_type": typ,
            "units_x": ux,
            "units_y": uy,
            "delta_x": dx if dx is None or math.isfinite(dx) else str(dx),
            "delta_y": dy if dy is None or math.isfinite(dy) else str(dy),
            "region_rc": None,
            "bmode": fmt == 1 and typ == 1,
            "spacing_mm": None,
            "problem": None,
        }
        if None not in (x0, y0, x1, y1):
            reg["region_rc"] = [y0, x0, y1 + 1, x1 + 1]
        if reg["bmode"]:
            if ux != 3 or uy != 3:
                reg["problem"] = "region_units"
            elif dx is None or dy is None or not (_plausible_mm(dx * 10.0) and _plausible_mm(dy * 10.0)):
                reg["problem"] = "invalid_spacing"
            elif reg["region_rc"] is None or not (0 <= y0 <= y1 <= rows and 0 <= x0 <= x1 <= cols):
                reg["problem"] = "region_outside_image"
            elif y0 == rows or x0 == cols:  # starting one past the last row or column: no pixel of it is in the image
                reg["problem"] = "region_outside_image"
            else:
                if y1 == rows or x1 == cols:
                    # some vendors (e.g. Philips CX50) write Max{X,Y}1 one past the last pixel
                    reg["region_rc"] = [y0, x0, min(y1 + 1, rows), min(x1 + 1, cols)]
                    reg["clipped"] = True
                reg["spacing_mm"] = [dy * 10.0, dx * 10.0]
        out.append(reg)
    return out


def _same(a, b, rel=1e-6) -> bool:
    return all(abs(x - y) <= rel * max(abs(x), abs(y)) for x, y in zip(a, b))


def _spacing(ds, rows: int, cols: int, meta: dict) -> tuple[tuple[float, float] | None, str]:
    regions = _regions(ds, rows, cols)
    if regions:
        meta["us_regions"] = regions
    bmode = [r for r in regions if r["bmode"]]
    if bmode:
        meta["bmode_regions_rc"] = [r["region_rc"] for r in bmode]
        bad = [r for r in bmode if r["problem"]]
        if bad:
            meta["spacing_error"] = bad[0]["problem"]
            meta["spacing_detail"] = (
                f"B-mode ultrasound region item {bad[0]['item']} is unusable ({bad[0]['problem']}): "
                f"PhysicalUnitsX/YDirection ({bad[0]['units_x']}, {bad[0]['units_y']}) (3 = cm), PhysicalDeltaX/Y "
                f"({bad[0]['delta_x']}, {bad[0]['delta_y']}) cm (a pixel is {MIN_SPACING_MM:g} to {MAX_SPACING_MM:g} mm), "
                f"region_rc {bad[0]['region_rc']} in a {rows} x {cols} image"
            )
            return None, "unknown"
        spacings = [r["spacing_mm"] for r in bmode]
        distinct = []
        for s in spacings:
            if not any(_same(s, d) for d in distinct):
                distinct.append(s)
        if len(distinct) > 1:
            meta["spacing_error"] = "ambiguous_regions"
            meta["spacing_detail"] = (
                f"{len(bmode)} B-mode ultrasound regions with different spacings (mm) {distinct}; "
                "refusing to guess"
            )
            return None, "unknown"
        if len(bmode) == 1:
            meta["region_rc"] = bmode[0]["region_rc"]
        return (float(distinct[0][0]), float(distinct[0][1])), "dicom_us_regions"
    if ds.get("PixelSpacing", None) is None and ds.get("ImagerPixelSpacing", None) is not None:
        meta["spacing_error"] = "detector_spacing"
        meta["spacing_detail"] = ("only ImagerPixelSpacing: the detector-plane spacing of a projection image, "
                                  "not a spacing in the patient; give the spacing (--spacing-mm)")  # fmt: skip
        return None, "unknown"
    for key in ("PixelSpacing",):
        val = ds.get(key, None)
        if val is None:
            continue
        try:
            vals = [float(v) for v in val]
        except (TypeError, ValueError):
            vals = []
        if len(vals) == 2 and all(_plausible_mm(v) for v in vals):
            meta["spacing_tag"] = key
            return (vals[0], vals[1]), "dicom_pixel_spacing"
        meta["spacing_error"] = "invalid_spacing"
        meta["spacing_detail"] = f"{key} = {val!r} is not two numbers from {MIN_SPACING_MM:g} to {MAX_SPACING_MM:g} mm"
        return None, "unknown"
    meta["spacing_error"] = "no_spacing"
    meta["spacing_detail"] = "no B-mode SequenceOfUltrasoundRegions or PixelSpacing"
    return None, "unknown"


MAX_FRAME_TIME_MS = 60_000.0  # a frame interval beyond a minute is no cine timing (FrameTime 1e12 paused a source for years)


def _frame_times_ms(ds, n: int, meta: dict) -> Callable[[int], float] | None:
    """Frame ``i``'s time in ms from the first (computed per frame: a header's NumberOfFrames
    allocates nothing), or None when the file gives no plausible frame timing (intervals over 0, up
    to ``MAX_FRAME_TIME_MS``: frames that share a time are no timing to pace by)."""
    ftv = ds.get("FrameTimeVector", None)
    if ftv is not None:
        try:
            inc = [float(v) for v in (ftv if isinstance(ftv, (list, tuple)) or hasattr(ftv, "__len__") else [ftv])]
        except (TypeError, ValueError):
            inc = []
        # the first increment is the first frame's (0 by the standard); each later frame comes after the one before
        if (len(inc) == n and all(math.isfinite(v) and 0 <= v <= MAX_FRAME_TIME_MS for v in inc)
                and all(v > 0 for v in inc[1:])):
            meta["frame_time_source"] = "FrameTimeVector"
            cum = np.cumsum(inc)  # as long as the element the file holds
            return lambda i: float(cum[i])
        meta["frame_time_problem"] = (f"FrameTimeVector ({len(inc)} increments for {n} frames) is not an increment per "
                                      f"frame, each up to {MAX_FRAME_TIME_MS:g} ms and over 0 after the first; ignored")
    ft = _num(ds.get("FrameTime", None))
    if ft is not None and positive_finite(ft) and ft <= MAX_FRAME_TIME_MS:
        meta["frame_time_ms"] = ft
        meta["frame_time_source"] = "FrameTime"
        return lambda i: i * ft
    if ft is not None:
        meta["frame_time_problem"] = f"FrameTime {ft!r} ms is not a frame interval over 0, up to {MAX_FRAME_TIME_MS:g} ms; ignored"
    rate = _num(ds.get("CineRate", None))
    if rate is not None and positive_finite(rate) and 1000.0 / rate <= MAX_FRAME_TIME_MS:
        meta["frame_time_ms"] = 1000.0 / rate
        meta["frame_time_source"] = "CineRate"
        return lambda i: i * 1000.0 / rate
    if rate is not None:
        meta["frame_time_problem"] = f"CineRate {rate!r} per s is not a cine rate of at least one frame a minute; ignored"
    return None


def _at(data: bytes, start: int) -> io.BytesIO:
    """``data`` from ``start`` on as a readable buffer, without copying the pixel data."""
    buf = io.BytesIO(data)
    buf.seek(start)
    return buf


def _n_fragments(p: Path, data: bytes) -> int:
    """Fragments of encapsulated pixel data, after its Basic Offset Table item."""
    if len(data) < 8:
        raise read_error(p, "encapsulated pixel data shorter than its offset table item", "truncated")
    start = 8 + int.from_bytes(data[4:8], "little")
    try:
        return _pd().encaps.parse_fragments(_at(data, start))[0] if start < len(data) else 0
    except (ValueError, EOFError) as exc:
        raise read_error(p, f"encapsulated pixel data is malformed ({exc})", "corrupt") from None


def _int_attr(ds, path, name, default=None) -> int:
    val = ds.get(name, default)
    if val is None or val == "":
        if default is not None:
            return default
        raise read_error(path, f"DICOM attribute {name} is missing", "bad_header")
    try:
        return int(val)
    except (TypeError, ValueError) as exc:
        raise read_error(path, f"DICOM attribute {name} = {val!r} is not an integer", "bad_header") from exc


def open_dicom(path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> OpenedFile:
    """Parse the DICOM header, validate it, and return a lazy frame source."""
    p = check_file(path)
    _pd()
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        raise read_error(p, f"cannot read file ({exc.strerror or exc})", "unreadable") from exc
    has_preamble = sniff(head)
    if not has_preamble and not sniff_no_preamble(head):
        raise read_error(p, "not a DICOM file (no 'DICM' marker at byte 128)", "unknown_format")
    _LOG.local.seen = []  # pydicom logs (and warns) that a file ended early, and reads on
    try:
        ds = _dcmread(p, has_preamble, max_pixels)
    except (MmstreamError, MemoryError):
        raise
    except Exception as exc:  # pydicom raises many types for malformed input; wrap them all
        raise read_error(p, f"cannot parse DICOM ({type(exc).__name__}: {exc})", "corrupt") from exc
    finally:
        said, _LOG.local.seen = _LOG.local.seen, None
    cut = [r.getMessage() for r in said if "End of file reached" in r.getMessage()]
    if cut:
        raise read_error(p, f"the file ends inside its data set ({cut[0].split(' in file')[0]})", "truncated")
    try:
        return _open_dataset(p, ds, max_pixels)
    except (MmstreamError, MemoryError):
        raise
    except Exception as exc:  # pydicom parses elements lazily: malformed values surface on access
        raise read_error(p, f"malformed DICOM header ({type(exc).__name__}: {exc})", "corrupt") from exc


MAX_HEADER_BYTES = 64 << 20  # a deflated data set's elements before its pixel data, inflated
TRAILING_BYTES = 1 << 20  # room for elements after the pixel data of a deflated data set (padding, signatures)


class _Inflating:
    """The data set of a Deflated Explicit VR Little Endian file, inflated as pydicom reads it and
    never beyond ``limit`` bytes (a 2 MB file inflated to 2 GiB at once, accepted, 4.4 GB resident)."""

    def __init__(self, path: Path, zipped: bytes, limit: int):
        self.path, self.limit, self.name = path, limit, str(path)
        self._z = zlib.decompressobj(-zlib.MAX_WBITS)
        self._pending, self._out, self._pos = zipped, bytearray(), 0

    @property
    def complete(self) -> bool:
        """The deflate stream ended properly (not cut)."""
        return self._z.eof

    def _fill(self, upto: int) -> None:
        while len(self._out) < upto and not self._z.eof and self._pending:
            self._out += self._z.decompress(self._pending, min(upto - len(self._out), 1 << 22))
            self._pending = self._z.unconsumed_tail

    def read(self, size: int = -1) -> bytes:
        end = self.limit + 1 if size is None or size < 0 else self._pos + size
        self._fill(min(end, self.limit + 1))
        if min(end, len(self._out)) > self.limit:
            raise read_error(self.path, f"the deflated data set inflates beyond {self.limit} bytes, more than its "
                             "header's pixel data and elements allow (a decompression bomb?)", "too_large")  # fmt: skip
        data = bytes(self._out[self._pos : end])
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = max(0, offset + (0, self._pos, len(self._out))[whence])
        return self._pos

    def tell(self) -> int:
        return self._pos


def _dcmread(p: Path, has_preamble: bool, max_pixels: int, header_only: bool = False):
    """pydicom's read of a file (``header_only``: up to its pixel data); a deflated data set is
    inflated only as far as its header allows (pydicom would inflate it whole first)."""
    pydicom = _pd()
    meta = pydicom.filereader.read_file_meta_info(p) if has_preamble else None
    if meta is not None and meta.get("TransferSyntaxUID", None) == pydicom.uid.DeflatedExplicitVRLittleEndian:
        return _read_deflated(p, meta, max_pixels, header_only)
    return pydicom.dcmread(p, stop_before_pixels=header_only, force=not has_preamble)


def _read_deflated(p: Path, meta, max_pixels: int, header_only: bool):
    """A deflated DICOM file's data set, inflated only as far as its header allows: the elements
    up to the pixel data (at most ``MAX_HEADER_BYTES``), then Rows x Columns x SamplesPerPixel x
    BitsAllocated x NumberOfFrames of pixel data and ``TRAILING_BYTES`` after it."""
    pydicom = _pd()
    group_length = meta.get("FileMetaInformationGroupLength", None)
    if group_length is None:
        raise read_error(p, "deflated DICOM without FileMetaInformationGroupLength: its data set cannot be found",
                         "bad_header")  # fmt: skip
    with open(p, "rb") as fh:
        preamble = fh.read(128)
        fh.seek(132 + 12 + int(group_length))
        zipped = fh.read()
    reader = _Inflating(p, zipped, MAX_HEADER_BYTES)
    head = pydicom.filereader.read_dataset(reader, False, True, stop_when=lambda tag, vr, length: tag == 0x7FE00010)
    at = reader.tell()
    if reader.read(4) == b"\xe0\x7f\x10\x00" and not header_only:  # stopped at the (top-level) pixel data
        rows, cols = _int_attr(head, p, "Rows"), _int_attr(head, p, "Columns")
        check_pixels(p, rows, cols, max_pixels)
        n = max(1, _int_attr(head, p, "NumberOfFrames", 1))
        sample_bytes = (max(8, _int_attr(head, p, "BitsAllocated")) + 7) // 8
        reader.limit = at + 12 + rows * cols * _int_attr(head, p, "SamplesPerPixel", 1) * sample_bytes * n + TRAILING_BYTES
        reader.seek(0)
        head = pydicom.filereader.read_dataset(reader, False, True)
    if not header_only and not reader.complete:
        raise read_error(p, "the deflated data set ends early (cut file)", "truncated")
    return pydicom.dataset.FileDataset(p, head, preamble=preamble, file_meta=meta, is_implicit_VR=False,
                                       is_little_endian=True)  # fmt: skip


def _cut_inside(p: Path, ds) -> str | None:
    """Where a file that pydicom read without a word ends inside an element (it keeps a value cut
    short, and drops an element whose 8-byte header is cut), or None."""
    size = p.stat().st_size
    meta = getattr(ds, "file_meta", None)
    last = None  # (start, end or None) of the element that starts last
    for elem in [*(meta.elements() if meta is not None else ()), *ds.elements()]:
        start = getattr(elem, "value_tell", getattr(elem, "file_tell", None))
        length = getattr(elem, "length", None)
        if elem.tag == 0x00020000 and start is not None:  # the File Meta Information group's length, after its 4 bytes
            length = 4 + int(meta.FileMetaInformationGroupLength)
        end = None if start is None or length is None or length == 0xFFFFFFFF else start + length
        if end is not None and end > size:
            what = "the File Meta Information group" if elem.tag == 0x00020000 else f"element {elem.tag}"
            return f"{what} needs {length} bytes from byte {start}"
        if start is not None and (last is None or start > last[0]):
            last = (start, end)
    if last is not None and last[1] is not None and last[1] < size:
        return f"{size - last[1]} byte(s) after the last element, less than an element header"
    return None


def _open_dataset(p: Path, ds, max_pixels: int) -> OpenedFile:
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise read_error(p, "float pixel data is not supported", "unsupported_dtype")
        deflated = ds.file_meta.get("TransferSyntaxUID", None) == _pd().uid.DeflatedExplicitVRLittleEndian
        cut = None if deflated else _cut_inside(p, ds)  # (a cut deflated stream is refused as it is read)
        if cut is not None:
            raise read_error(p, f"the file ends inside an element before any pixel data ({cut}; {p.stat().st_size} bytes)",
                             "truncated")  # fmt: skip
        raise read_error(p, "DICOM file has no pixel data", "no_pixel_data")
    rows = _int_attr(ds, p, "Rows")
    cols = _int_attr(ds, p, "Columns")
    spp = _int_attr(ds, p, "SamplesPerPixel", 1)
    bits_alloc = _int_attr(ds, p, "BitsAllocated")
    bits_stored = _int_attr(ds, p, "BitsStored", bits_alloc)
    n = _int_attr(ds, p, "NumberOfFrames", 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if n < 1:
        raise read_error(p, f"NumberOfFrames = {n}", "empty_image")
    check_pixels(p, rows, cols, max_pixels)
    if spp not in (1, 3):
        raise read_error(p, f"SamplesPerPixel = {spp} is not supported", "unsupported_layout")
    if bits_alloc not in (1, 8, 16, 32):
        raise read_error(p, f"BitsAllocated = {bits_alloc} is not supported", "unsupported_bit_depth")
    if not photometric:
        raise read_error(p, "PhotometricInterpretation is missing", "bad_header")
    ts = ds.file_meta.get("TransferSyntaxUID", None) if hasattr(ds, "file_meta") else None
    if ts is not None and ts.is_encapsulated:  # every frame has at least one fragment
        n_fragments = _n_fragments(p, ds.PixelData)
        if n > n_fragments:
            raise read_error(p, f"NumberOfFrames = {n}, but the pixel data holds {n_fragments} fragment(s)", "truncated")
    if ts is not None and not ts.is_compressed:
        stored = 2 if photometric == "YBR_FULL_422" and spp == 3 else spp  # 4:2:2: Y Y Cb Cr for 2 pixels
        expected = rows * cols * stored * n * bits_alloc // 8 if bits_alloc != 1 else (rows * cols * n + 7) // 8
        got = len(ds.PixelData)
        if got < expected:
            raise read_error(
                p, f"pixel data holds {got} bytes, {expected} expected for {n} x {rows} x {cols} x {stored} "
                f"at {bits_alloc} bits (truncated file?)", "truncated"
            )
    meta: dict[str, object] = {
        "source": str(p),
        "format": "dicom",
        "n_frames": n,
        "transfer_syntax": str(ts) if ts is not None else None,
        "photometric": photometric,
        "modality": str(ds.get("Modality", "")) or None,
        "manufacturer": str(ds.get("Manufacturer", "")) or None,
    }
    spacing, source = _spacing(ds, rows, cols, meta)
    times_ms = _frame_times_ms(ds, n, meta)
    if photometric == "PALETTE COLOR":
        try:
            meta["palette_bits"] = int(ds.RedPaletteColorLookupTableDescriptor[2])
        except (AttributeError, IndexError, TypeError, ValueError, KeyError) as exc:
            raise read_error(p, "PALETTE COLOR image without a usable palette descriptor", "bad_header") from exc

    def frames() -> Iterator[RawFrame]:
        pydicom = _pd()
        it = pydicom.pixels.iter_pixels(ds)
        encoded = _encoded_frames(ds, n) if ts is not None and ts.is_encapsulated else None
        for i in range(n):
            _LOG.local.seen = []
            try:
                if encoded is not None:
                    _check_codestream(p, ts, next(encoded, b""), i, (rows, cols), bits_stored)
                arr = next(it)
            except StopIteration:
                raise read_error(p, f"pixel data ended after {i} of {n} frames", "truncated") from None
            except (MmstreamError, MemoryError):
                raise
            except Exception as exc:  # decoder plugins raise assorted types; wrap them all
                raise read_error(
                    p, f"cannot decode frame {i} ({type(exc).__name__}: {' '.join(str(exc).split())})", "corrupt"
                ) from exc
            finally:
                said, _LOG.local.seen = _LOG.local.seen, None
            failed = [r.getMessage() for r in said if r.levelno >= logging.ERROR or "decoding plugin" in r.getMessage()]
            if failed:  # one plugin failed, another decoded it (pylibjpeg's error, then Pillow's grey fill)
                raise read_error(p, f"frame {i} is damaged: a decoder failed on it ({' '.join(failed[-1].split())}); "
                                 "another's decode is not trusted", "corrupt")  # fmt: skip
            try:
                grey = _to_grey(p, ds, arr, photometric, bits_stored, i)
            except (MmstreamError, MemoryError):
                raise
            except Exception as exc:  # malformed LUTs / attributes raise assorted types
                raise read_error(p, f"cannot convert frame {i} ({type(exc).__name__}: {exc})", "corrupt") from exc
            t_s = times_ms(i) / 1000.0 if times_ms is not None else None
            yield RawFrame(index=i, image=grey, t_s=t_s)

    return OpenedFile(
        path=p,
        format="dicom",
        n_frames=n,
        shape=(rows, cols),
        spacing_mm=spacing,
        spacing_source=source,
        meta=meta,
        frames=frames,
    )


def _encoded_frames(ds, n: int) -> Iterator[bytes]:
    """The encoded frames of encapsulated pixel data, as pydicom's decoders take them."""
    eot, lengths = ds.get("ExtendedOffsetTable", None), ds.get("ExtendedOffsetTableLengths", None)
    extended = (eot, lengths) if eot is not None and lengths is not None else None
    return _pd().encaps.generate_frames(ds.PixelData, number_of_frames=n, extended_offsets=extended)


def _check_codestream(p: Path, ts, frame: bytes, i: int, shape: tuple[int, int], bits_stored: int) -> None:
    """Before decoding: the frame size a JPEG, JPEG-LS or JPEG 2000 codestream declares must be the
    header's Rows x Columns (a fragment declaring 65000 x 65000 made the decoder allocate 12.7 GB);
    a JPEG's data must be whole: pylibjpeg decodes a cut or damaged one without a word. The check is
    libjpeg-turbo's strict decode of the frame (:func:`decode_jpeg`, 0.7 ms for 480 x 640); a JPEG it
    does not take is decoded by OpenCV's libjpeg, and refused when that fails too (8-bit samples;
    wider ones libjpeg may lack the precision for)."""
    uid = _pd().uid
    if ts in uid.JPEGTransferSyntaxes or ts in uid.JPEGLSTransferSyntaxes:
        try:
            header = jpeg_header(frame)
        except ValueError:
            header = None  # not a JPEG marker stream: the decoder says what is wrong
        dims = None if header is None else (header.rows, header.cols)
    elif ts in uid.JPEG2000TransferSyntaxes:
        dims = j2k_dims(frame)
    else:
        return
    if dims is not None and dims != shape:
        raise read_error(p, f"frame {i}'s codestream declares {dims[0]} x {dims[1]} pixels, the header's Rows x "
                         f"Columns are {shape[0]} x {shape[1]}", "size_mismatch")  # fmt: skip
    if ts in uid.JPEGTransferSyntaxes:
        try:
            decode_jpeg(frame)
        except JpegDamaged as exc:
            raise read_error(p, f"frame {i} is damaged ({exc}): its pixels would be partly invented", "corrupt") from None
        except ValueError as exc:
            if bits_stored <= 8 and not _opencv_decodes(frame):
                raise read_error(p, f"frame {i} is damaged (libjpeg cannot decode it: {exc}): its pixels would be "
                                 "partly invented", "corrupt") from None  # fmt: skip


def _opencv_decodes(frame: bytes) -> bool:
    """OpenCV's libjpeg decodes the JPEG frame: at 1/8 scale, or whole (lossless JPEG is not scaled)."""
    buf = np.frombuffer(frame, np.uint8)
    return any(cv2.imdecode(buf, flag) is not None for flag in (cv2.IMREAD_REDUCED_GRAYSCALE_8, cv2.IMREAD_UNCHANGED))


def _to_grey(p, ds, arr: np.ndarray, photometric: str, bits_stored: int, i: int) -> np.ndarray:
    what = f"frame {i}"
    if photometric == "PALETTE COLOR":
        try:
            rgb = _pd().pixels.apply_color_lut(arr, ds)
        except MemoryError:
            raise
        except Exception as exc:  # malformed LUTs raise assorted types
            raise read_error(p, f"cannot apply the palette to {what} ({exc})", "corrupt") from exc
        if rgb.dtype != np.uint8:
            rgb = ((rgb.astype(np.uint32) + 128) // 257).astype(np.uint8)
        return rgb_to_grey(rgb)
    if arr.ndim == 3:
        # pydicom returns RGB for RGB and YBR_* (as_rgb=True default)
        if arr.shape[2] != 3:
            raise read_error(p, f"{what} has unsupported shape {arr.shape}", "unsupported_layout")
        return to_grey_u8(p, arr, channel_order="RGB", what=what)
    if arr.ndim != 2:
        raise read_error(p, f"{what} has unsupported shape {arr.shape}", "unsupported_layout")
    if photometric == "MONOCHROME1":
        if arr.dtype.kind == "i" and arr.size and int(arr.min()) < 0:
            raise read_error(p, f"{what}: signed MONOCHROME1 is not supported", "unsupported_bit_depth")
        arr = ((1 << bits_stored) - 1) - arr.astype(np.int64)
    return np.ascontiguousarray(to_uint8(p, arr, what=what))


def count_frames(path) -> int:
    """NumberOfFrames from the header (pixel data is not read)."""
    p = check_file(path)
    with open(p, "rb") as fh:
        head = fh.read(132)
    has_preamble = sniff(head)
    if not has_preamble and not sniff_no_preamble(head):
        raise read_error(p, "not a DICOM file (no 'DICM' marker at byte 128)", "unknown_format")
    try:
        ds = _dcmread(p, has_preamble, 1 << 62, header_only=True)
        rows, cols = _int_attr(ds, p, "Rows"), _int_attr(ds, p, "Columns")
        n = _int_attr(ds, p, "NumberOfFrames", 1)
    except (MmstreamError, MemoryError):
        raise
    except Exception as exc:  # pydicom raises many types for malformed input; wrap them all
        raise read_error(p, f"cannot parse DICOM ({type(exc).__name__}: {exc})", "corrupt") from exc
    check_pixels(p, rows, cols, 1 << 62)
    if n < 1:
        raise read_error(p, f"NumberOfFrames = {n}", "empty_image")
    return n
