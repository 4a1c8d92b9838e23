"""DICOM series (single-frame slices or one enhanced multi-frame object) assembled into a volume.

DICOM's patient coordinate system is LPS, so no flip is needed (``source = "dicom:lps"``).

* Slices are sorted by ``ImagePositionPatient`` projected on the slice normal
  ``n = row_cosines x col_cosines`` (``ImageOrientationPatient``); the k axis is ``+n``.
* ``spacing_mm = (s_k, row spacing, column spacing)``: ``PixelSpacing`` gives (row, column);
  ``s_k`` is the median gap between projected positions. Gaps that differ from it by more than
  ``gap_tolerance`` (relative, default 1 %, at least 1 um) are refused (``nonuniform_spacing``),
  as are duplicate positions (``duplicate_positions``: several echoes or time points in one series).
  A single slice takes ``s_k`` from ``SpacingBetweenSlices``, else ``SliceThickness`` (top level, or
  the frame's or shared ``PixelMeasuresSequence`` of an enhanced object).
* Enhanced multi-frame objects (``PerFrameFunctionalGroupsSequence``): position, orientation,
  pixel spacing and rescale per frame, from the per-frame or the shared functional groups.
* ``RescaleSlope``/``RescaleIntercept`` (or ``PixelValueTransformationSequence``) are applied; the
  voxels are then float32 in modality units (``rescaled`` True) unless the rescale is the identity.
* Refused with a clear reason: missing mandatory attributes (``missing_tags``), mixed series,
  orientations, sizes or spacings (``inconsistent_series``), colour images (``unsupported_pixel``),
  Siemens mosaics (``mosaic_unsupported``: the slices of a mosaic need the private CSA header),
  truncated or undecodable pixel data (``pixel_decode``), more than ``max_voxels`` (``too_large``).
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mmstream.errors import ReadError

from .model import LoadedVolume

DEFAULT_GAP_TOLERANCE = 0.01
DEFER_BYTES = 2**20  # read_dataset: larger elements (pixel data) are read when used
REQUIRED = ("SOPClassUID", "SeriesInstanceUID", "Rows", "Columns", "BitsAllocated", "PixelRepresentation", "PixelData")
NATIVE_TRANSFER_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"}
_UID = re.compile(r"^[0-9][0-9.]{0,63}$")


@dataclass(frozen=True)
class _Slice:
    ds: object  # pydicom Dataset
    frame: int | None  # frame index in a multi-frame object
    position: np.ndarray  # (3,) LPS mm
    orientation: np.ndarray  # (6,) row then column cosines
    pixel_spacing: tuple[float, float]  # (row, col) mm
    slope: float | None
    intercept: float | None


def _floats(value, n: int, what: str) -> np.ndarray:
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        raise ReadError(f"{what} is not numeric", reason="missing_tags") from None
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise ReadError(f"{what} needs {n} finite values, got {value!r}", reason="missing_tags")
    return arr


def _item(groups, seq: str, attr: str):
    """``groups[seq][0].attr`` or None."""
    if groups is None or seq not in groups or not groups[seq].value:
        return None
    return groups[seq][0].get(attr)


def _frame_attr(per_frame, shared, seq: str, attr: str):
    v = _item(per_frame, seq, attr)
    return v if v is not None else _item(shared, seq, attr)


def _check_required(ds, name: str) -> None:
    missing = [k for k in REQUIRED if k not in ds]
    if missing:
        raise ReadError(f"{name}: missing mandatory attribute(s) {', '.join(missing)}", reason="missing_tags")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise ReadError(f"{name}: {ds.SamplesPerPixel} samples per pixel; scalar images only", reason="unsupported_pixel")
    if "MOSAIC" in [str(v).upper() for v in (ds.get("ImageType") or [])]:
        raise ReadError(f"{name}: Siemens mosaic (slices need the private CSA header)", reason="mosaic_unsupported")


def _opt_float(v) -> float | None:
    return None if v is None or v == "" else float(v)


def _slices_of(ds, name: str) -> list[_Slice]:
    _check_required(ds, name)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None:
        shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
        if len(per_frame) != n_frames:
            raise ReadError(f"{name}: {len(per_frame)} per-frame groups for {n_frames} frames", reason="missing_tags")
        out = []
        for f, group in enumerate(per_frame):
            pos = _frame_attr(group, shared, "PlanePositionSequence", "ImagePositionPatient")
            ori = _frame_attr(group, shared, "PlaneOrientationSequence", "ImageOrientationPatient")
            sp = _frame_attr(group, shared, "PixelMeasuresSequence", "PixelSpacing")
            if pos is None or ori is None or sp is None:
                raise ReadError(f"{name}: frame {f} lacks plane position, orientation or pixel spacing", reason="missing_tags")
            slope = _frame_attr(group, shared, "PixelValueTransformationSequence", "RescaleSlope")
            inter = _frame_attr(group, shared, "PixelValueTransformationSequence", "RescaleIntercept")
            if slope is None:
                slope, inter = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
            psp = _floats(sp, 2, f"{name} frame {f} PixelSpacing")
            out.append(_Slice(ds, f, _floats(pos, 3, "ImagePositionPatient"), _floats(ori, 6, "ImageOrientationPatient"),
                              (psp[0], psp[1]), _opt_float(slope), _opt_float(inter)))  # fmt: skip
        return out
    if n_frames != 1:
        raise ReadError(f"{name}: {n_frames} frames without per-frame functional groups (no geometry per frame)",
                        reason="missing_tags")  # fmt: skip
    missing = [k for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing") if k not in ds]
    if missing:
        raise ReadError(f"{name}: missing mandatory attribute(s) {', '.join(missing)}", reason="missing_tags")
    psp = _floats(ds.PixelSpacing, 2, f"{name} PixelSpacing")
    return [_Slice(ds, None, _floats(ds.ImagePositionPatient, 3, "ImagePositionPatient"),
                   _floats(ds.ImageOrientationPatient, 6, "ImageOrientationPatient"), (psp[0], psp[1]),
                   _opt_float(ds.get("RescaleSlope")), _opt_float(ds.get("RescaleIntercept")))]  # fmt: skip


def _single_slice_spacing(s: _Slice) -> tuple[float, str]:
    """``(s_k, attribute)`` of one slice: ``SpacingBetweenSlices``, else ``SliceThickness``, at the top
    level or (enhanced objects) in the frame's or the shared ``PixelMeasuresSequence``."""
    groups = s.ds.get("PerFrameFunctionalGroupsSequence")
    group = groups[s.frame] if groups is not None and s.frame is not None else None
    shared = (s.ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    for attr in ("SpacingBetweenSlices", "SliceThickness"):
        value = s.ds.get(attr) or _frame_attr(group, shared, "PixelMeasuresSequence", attr)
        if value:
            if not float(value) > 0:
                break
            return float(value), attr
    raise ReadError("a single slice without a positive SpacingBetweenSlices or SliceThickness (top level or "
                    "PixelMeasuresSequence)", reason="missing_tags")  # fmt: skip


def check_instance(ds) -> tuple[str, str]:
    """``(SeriesInstanceUID, SOPInstanceUID)`` of one received instance after the checks an SCP or
    watch folder makes before storing it: mandatory attributes present, UIDs well formed
    (``missing_tags``), native pixel data as long as Rows x Columns x frames x samples x bits
    (``truncated_pixel_data``)."""
    missing = [k for k in (*REQUIRED, "SOPInstanceUID") if k not in ds]
    if missing:
        raise ReadError(f"missing mandatory attribute(s) {', '.join(missing)}", reason="missing_tags")
    series, sop = str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
    if not (_UID.match(series) and _UID.match(sop)):
        raise ReadError("SeriesInstanceUID or SOPInstanceUID is not a valid UID", reason="missing_tags")
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "1.2.840.10008.1.2")
    if ts in NATIVE_TRANSFER_SYNTAXES:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        need = (int(ds.Rows) * int(ds.Columns) * frames * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated) + 7) // 8
        if len(ds.PixelData) < need:
            raise ReadError(f"pixel data of {len(ds.PixelData)} bytes, {need} expected", reason="truncated_pixel_data")
    return series, sop


def _dicom_date(ds) -> str | None:
    """The acquisition date (SeriesDate, else AcquisitionDate, else StudyDate) as YYYY-MM-DD, or None."""
    for tag in ("SeriesDate", "AcquisitionDate", "StudyDate"):
        v = str(ds.get(tag) or "").strip()
        if len(v) == 8 and v.isdigit():
            return f"{v[:4]}-{v[4:6]}-{v[6:]}"
    return None


def read_dataset(path: Path):
    """A pydicom dataset from ``path``; ReadError (``unreadable``) when it cannot be (callers bound
    the file size first: ``max_file_bytes``, ``max_object_bytes``).
    Elements over 1 MiB (the pixel data) stay in the file until used, so a series is checked
    (geometry, ``max_voxels``) before its pixels are read."""
    import pydicom

    path = Path(path)
    try:
        return pydicom.dcmread(path, force=True, defer_size=DEFER_BYTES)
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise ReadError(f"{path.name}: not a readable DICOM file ({type(exc).__name__})") from None


def _pixels(s: _Slice, name: str) -> np.ndarray:
    from pydicom.pixels import pixel_array

    try:
        arr = pixel_array(s.ds, index=s.frame) if s.frame is not None else s.ds.pixel_array
    except NotImplementedError as exc:
        raise ReadError(f"{name}: cannot decode transfer syntax ({exc})"[:400], reason="unsupported_transfer_syntax") from None
    except Exception as exc:
        raise ReadError(f"{name}: pixel data cannot be decoded ({type(exc).__name__}: {exc})"[:400],
                        reason="pixel_decode") from None  # fmt: skip
    return np.asarray(arr)


def assemble(datasets: Sequence, *, names: Sequence[str] | None = None, gap_tolerance: float = DEFAULT_GAP_TOLERANCE,
             max_voxels: int = 64 * 1024 * 1024) -> LoadedVolume:  # fmt: skip
    """One volume from the pydicom datasets of one series (any order). See the module docstring."""
    names = list(names or [f"instance {i}" for i in range(len(datasets))])
    if not datasets:
        raise ReadError("no DICOM instances to assemble", reason="missing_tags")
    slices = [s for ds, nm in zip(datasets, names) for s in _slices_of(ds, nm)]
    first = slices[0].ds
    for attr in ("SeriesInstanceUID", "Rows", "Columns"):
        values = {str(s.ds.get(attr)) for s in slices}
        if len(values) > 1:
            raise ReadError(f"instances differ in {attr} ({len(values)} values)", reason="inconsistent_series")
    ori = slices[0].orientation
    if any(not np.allclose(s.orientation, ori, atol=1e-4) for s in slices):
        raise ReadError("slices differ in ImageOrientationPatient", reason="inconsistent_series")
    if any(not np.allclose(s.pixel_spacing, slices[0].pixel_spacing, rtol=1e-4) for s in slices):
        raise ReadError("slices differ in PixelSpacing", reason="inconsistent_series")
    row, col = ori[:3], ori[3:]
    if not (abs(np.linalg.norm(row) - 1) < 1e-3 and abs(np.linalg.norm(col) - 1) < 1e-3 and abs(row @ col) < 1e-3):
        raise ReadError(f"ImageOrientationPatient {ori.tolist()} is not two orthonormal vectors", reason="missing_tags")
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    normal = np.cross(row, col)
    depth = np.array([s.position @ normal for s in slices])
    order = np.argsort(depth, kind="stable")
    slices, depth = [slices[i] for i in order], depth[order]
    n_vox = len(slices) * int(first.Rows) * int(first.Columns)
    if n_vox > max_voxels:
        raise ReadError(f"{n_vox} voxels exceed the limit of {max_voxels}", reason="too_large")
    if len(slices) > 1:
        gaps = np.diff(depth)
        s_k = float(np.median(gaps))
        tol = max(1e-3, gap_tolerance * abs(s_k))
        if np.any(gaps < tol):
            raise ReadError(f"{len(slices)} images at {int(np.sum(gaps >= tol)) + 1} positions: several images per position "
                            "(e.g. echoes or time points), not one volume", reason="duplicate_positions")  # fmt: skip
        bad = np.flatnonzero(np.abs(gaps - s_k) > tol)
        if bad.size:
            raise ReadError(f"non-uniform slice spacing: median {s_k:.4g} mm, gaps {np.round(gaps[bad], 4).tolist()[:8]} mm "
                            f"after slice(s) {bad.tolist()[:8]}", reason="nonuniform_spacing")  # fmt: skip
        in_plane = [float(np.linalg.norm(np.cross(s.position - slices[0].position, normal))) for s in slices]
        if max(in_plane) > max(1e-2, 0.01 * min(slices[0].pixel_spacing)):
            raise ReadError("slice positions are not along the slice normal (sheared stack)", reason="inconsistent_series")
        k_from = "ImagePositionPatient"
    else:
        s_k, k_from = _single_slice_spacing(slices[0])
    raws = [_pixels(s, names[0]) for s in slices]
    if any(r.shape != raws[0].shape or r.ndim != 2 for r in raws):
        raise ReadError("decoded slices are not all (rows, columns) grey images", reason="unsupported_pixel")
    has_rescale = any(s.slope is not None or s.intercept is not None for s in slices)
    slopes = np.array([1.0 if s.slope is None else s.slope for s in slices])
    inters = np.array([0.0 if s.intercept is None else s.intercept for s in slices])
    if np.all(slopes == 1.0) and np.all(inters == 0.0):
        voxels = np.stack(raws)
    else:
        voxels = np.stack(raws).astype(np.float32)
        voxels *= slopes[:, None, None].astype(np.float32)
        voxels += inters[:, None, None].astype(np.float32)
    ps_row, ps_col = slices[0].pixel_spacing
    meta = {"k_spacing_from": k_from, "n_instances": len({id(s.ds) for s in slices}),
            "units": str(first.get("Units") or first.get("RescaleType") or "") or None,
            "sop_class_uid": str(first.SOPClassUID), "multiframe": slices[0].frame is not None,
            "acquired_on": _dicom_date(first)}  # fmt: skip
    return LoadedVolume(
        voxels=voxels, spacing_mm=(abs(s_k), float(ps_row), float(ps_col)),
        origin_lps_mm=tuple(float(v) for v in slices[0].position),
        direction_lps=np.column_stack([row, col, normal]), modality=str(first.get("Modality") or "OT"),
        source="dicom:lps", conversion="DICOM patient coordinates are LPS: used as is", rescaled=has_rescale,
        series_uid=str(first.SeriesInstanceUID), meta=meta,
    )  # fmt: skip


def load_dicom_series(paths: Sequence[Path], **kwargs) -> LoadedVolume:
    """Read DICOM files of one series and :func:`assemble` them (``files`` records the paths)."""
    paths = [Path(p) for p in paths]
    datasets = [read_dataset(p) for p in paths]
    vol = assemble(datasets, names=[p.name for p in paths], **kwargs)
    return replace(vol, files=tuple(str(p) for p in paths))
