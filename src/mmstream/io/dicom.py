"""DICOM single- and multi-frame images (ultrasound first) via pydicom 3.

Pixels
------
* Every transfer syntax pydicom can decode with the installed plugins (pylibjpeg: JPEG baseline /
  extended / lossless, JPEG-LS not guaranteed, JPEG 2000, RLE; native little/big endian).
* Frames are decoded one at a time (``pydicom.pixels.iter_pixels``): a 120-frame cine is not
  decoded up front.
* YBR_* is converted to RGB by pydicom, then RGB -> grey with the Pillow-exact BT.601 luma.
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
   are finite and positive and the region lies inside the image; spacing is
   ``(PhysicalDeltaY * 10, PhysicalDeltaX * 10)`` mm. Several usable B-mode regions with the same
   spacing (dual view) are fine; different spacings give ``spacing_error = "ambiguous_regions"``;
   an unusable B-mode region gives ``"region_units"``, ``"invalid_spacing"`` or
   ``"region_outside_image"``. In those cases the pixels are still returned with
   ``spacing_mm=None`` and every region is listed in ``meta["us_regions"]``; ``strict_spacing=True``
   in :func:`mmstream.io.read_frames` (or :meth:`ImageFrame.require_spacing`) turns the reason into a
   :class:`~mmstream.errors.SpacingError`.
2. Without B-mode regions: ``PixelSpacing`` (row, col) in mm. ``ImagerPixelSpacing`` alone is not
   used (``spacing_error = "detector_spacing"``): it is a projection image's spacing at the
   detector, not in the patient.
3. Otherwise unknown (``spacing_error = "no_spacing"``).

``region_rc`` values are half-open ``(r0, c0, r1, c1)`` so that ``image[r0:r1, c0:c1]`` is the
region (DICOM's RegionLocationMaxX1/Y1 are inclusive). A maximum equal to Columns/Rows (one past
the last pixel, written by some vendors) is tolerated and clipped (``"clipped": True`` in the region's
entry); anything further out makes the region unusable.

Time: ``FrameTimeVector`` (ms increments, cumulated), else ``FrameTime`` (ms), else ``CineRate``
(frames/s); ``t_s`` is relative to the first frame, ``None`` when the file gives no timing.
"""

from __future__ import annotations

import io
import logging
import math
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from mmstream.errors import MmstreamError

from ._common import DEFAULT_MAX_PIXELS, check_file, check_pixels, positive_finite, read_error, rgb_to_grey, to_uint8
from ._opened import OpenedFile, RawFrame

EXTENSIONS = {".dcm", ".dicom", ".dic"}

# lazily imported so `import mmstream.io` stays cheap
_pydicom = None


class _EndOfFile(logging.Handler):
    """pydicom's "End of file reached" messages, per thread, while a thread reads a file (the
    warnings module's state is process-wide, so it cannot tell concurrent readers apart)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        seen = getattr(self.local, "seen", None)
        if seen is not None and "End of file reached" in record.getMessage():
            seen.append(record.getMessage())


_CUT = _EndOfFile()


def _pd():
    global _pydicom
    if _pydicom is None:
        import pydicom
        import pydicom.encaps
        import pydicom.pixels

        logging.getLogger("pydicom").addHandler(_CUT)
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
            elif dx is None or dy is None or not (positive_finite(dx) and positive_finite(dy)):
                reg["problem"] = "invalid_spacing"
            elif reg["region_rc"] is None or not (0 <= y0 <= y1 <= rows and 0 <= x0 <= x1 <= cols):
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
                f"units ({bad[0]['units_x']}, {bad[0]['units_y']}), deltas ({bad[0]['delta_x']}, "
                f"{bad[0]['delta_y']}) cm, region_rc {bad[0]['region_rc']} in a {rows} x {cols} image"
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
        if len(vals) == 2 and all(positive_finite(v) for v in vals):
            meta["spacing_tag"] = key
            return (vals[0], vals[1]), "dicom_pixel_spacing"
        meta["spacing_error"] = "invalid_spacing"
        meta["spacing_detail"] = f"{key} = {val!r} is not two finite positive numbers"
        return None, "unknown"
    meta["spacing_error"] = "no_spacing"
    meta["spacing_detail"] = "no B-mode SequenceOfUltrasoundRegions or PixelSpacing"
    return None, "unknown"


MAX_FRAME_TIME_MS = 60_000.0  # a frame interval beyond a minute is no cine timing (FrameTime 1e12 paused a source for years)


def _frame_times_ms(ds, n: int, meta: dict) -> Callable[[int], float] | None:
    """Frame ``i``'s time in ms from the first (computed per frame: a header's NumberOfFrames
    allocates nothing), or None when the file gives no plausible frame timing (intervals of 0 to
    ``MAX_FRAME_TIME_MS``)."""
    ftv = ds.get("FrameTimeVector", None)
    if ftv is not None:
        try:
            inc = [float(v) for v in (ftv if isinstance(ftv, (list, tuple)) or hasattr(ftv, "__len__") else [ftv])]
        except (TypeError, ValueError):
            inc = []
        if len(inc) == n and all(math.isfinite(v) and 0 <= v <= MAX_FRAME_TIME_MS for v in inc):
            meta["frame_time_source"] = "FrameTimeVector"
            cum = np.cumsum(inc)  # as long as the element the file holds
            return lambda i: float(cum[i])
        meta["frame_time_problem"] = "FrameTimeVector length or values invalid; ignored"
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
    pydicom = _pd()
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        raise read_error(p, f"cannot read file ({exc.strerror or exc})", "unreadable") from exc
    has_preamble = sniff(head)
    if not has_preamble and not sniff_no_preamble(head):
        raise read_error(p, "not a DICOM file (no 'DICM' marker at byte 128)", "unknown_format")
    _CUT.local.seen = []  # pydicom logs (and warns) that a file ended early, and reads on
    try:
        ds = pydicom.dcmread(p, force=not has_preamble)
    except MmstreamError:
        raise
    except Exception as exc:  # pydicom raises many types for malformed input; wrap them all
        raise read_error(p, f"cannot parse DICOM ({type(exc).__name__}: {exc})", "corrupt") from exc
    finally:
        cut, _CUT.local.seen = _CUT.local.seen, None
    if cut:
        raise read_error(p, f"the file ends inside its data set ({cut[0].split(' in file')[0]})", "truncated")
    try:
        return _open_dataset(p, ds, max_pixels)
    except MmstreamError:
        raise
    except Exception as exc:  # pydicom parses elements lazily: malformed values surface on access
        raise read_error(p, f"malformed DICOM header ({type(exc).__name__}: {exc})", "corrupt") from exc


def _open_dataset(p: Path, ds, max_pixels: int) -> OpenedFile:
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise read_error(p, "float pixel data is not supported", "unsupported_dtype")
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
        expected = rows * cols * spp * n * bits_alloc // 8 if bits_alloc != 1 else (rows * cols * n + 7) // 8
        got = len(ds.PixelData)
        if got < expected:
            raise read_error(
                p, f"pixel data holds {got} bytes, {expected} expected for {n} x {rows} x {cols} x {spp} "
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
        pixels = _pd().pixels
        it = pixels.iter_pixels(ds)
        for i in range(n):
            try:
                arr = next(it)
            except StopIteration:
                raise read_error(p, f"pixel data ended after {i} of {n} frames", "truncated") from None
            except MmstreamError:
                raise
            except Exception as exc:  # decoder plugins raise assorted types; wrap them all
                raise read_error(
                    p, f"cannot decode frame {i} ({type(exc).__name__}: {exc})", "corrupt"
                ) from exc
            try:
                grey = _to_grey(p, ds, arr, photometric, bits_stored, i)
            except MmstreamError:
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


def _to_grey(p, ds, arr: np.ndarray, photometric: str, bits_stored: int, i: int) -> np.ndarray:
    what = f"frame {i}"
    if photometric == "PALETTE COLOR":
        try:
            rgb = _pd().pixels.apply_color_lut(arr, ds)
        except Exception as exc:  # malformed LUTs raise assorted types
            raise read_error(p, f"cannot apply the palette to {what} ({exc})", "corrupt") from exc
        if rgb.dtype != np.uint8:
            rgb = ((rgb.astype(np.uint32) + 128) // 257).astype(np.uint8)
        return rgb_to_grey(rgb)
    if arr.ndim == 3:
        # pydicom returns RGB for RGB and YBR_* (as_rgb=True default)
        if arr.shape[2] != 3:
            raise read_error(p, f"{what} has unsupported shape {arr.shape}", "unsupported_layout")
        return rgb_to_grey(to_uint8(p, arr, what=what))
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
        ds = _pd().dcmread(p, stop_before_pixels=True, force=not has_preamble)
        rows, cols = _int_attr(ds, p, "Rows"), _int_attr(ds, p, "Columns")
        n = _int_attr(ds, p, "NumberOfFrames", 1)
    except MmstreamError:
        raise
    except Exception as exc:  # pydicom raises many types for malformed input; wrap them all
        raise read_error(p, f"cannot parse DICOM ({type(exc).__name__}: {exc})", "corrupt") from exc
    check_pixels(p, rows, cols, 1 << 62)
    if n < 1:
        raise read_error(p, f"NumberOfFrames = {n}", "empty_image")
    return n
