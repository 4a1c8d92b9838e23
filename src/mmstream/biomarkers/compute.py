"""Biomarkers computed from volumes: statistics in a label mask, Dixon fat fraction, PET SUV.

Arrays are (K, J, I) = (slice, row, column), spacing ``(k_mm, j_mm, i_mm)``; an image and its mask
must share shape, spacing, origin and direction (checked, never resampled).

PET SUV (body weight) follows the vendor-neutral pseudo-code of the QIBA FDG-PET/CT profile
(Kinahan et al., QIBA SUV computation): ``SUVbw = C * weight_g / (dose_Bq * 2 ** (-dt / T_half))``,
``C`` the rescaled activity concentration in Bq/mL, ``dt`` from the injection to the series time
when ``DecayCorrection`` is ``START`` (no dose decay when ``ADMIN``). Any missing or inconsistent
tag is refused, never defaulted.
"""

import datetime as dt
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mmstream.errors import InputError, ReadError
from mmstream.volumes.model import LoadedVolume

GEOMETRY_TOL_MM = 1e-3


def read_volume(path: Path | str, index_4d: int | None = None) -> LoadedVolume:
    """Read a NIfTI, NRRD, MetaImage or DICOM volume (file or one-series folder; DICOM values
    rescaled to physical units) with the project's loaders, :func:`mmstream.volumes.load_volume`
    (``index_4d``: the volume to take from a 4-D file; a 3-D one is read whole)."""
    from mmstream.volumes import load_volume

    return load_volume(Path(path), index_4d=index_4d)


def check_same_grid(a: LoadedVolume, b: LoadedVolume, what: str = "mask") -> None:
    """InputError (reason ``grid_mismatch``) unless ``b`` lies on ``a``'s voxel grid."""
    same = (
        a.voxels.shape == b.voxels.shape
        and np.allclose(a.spacing_mm, b.spacing_mm, atol=GEOMETRY_TOL_MM)
        and np.allclose(a.origin_lps_mm, b.origin_lps_mm, atol=GEOMETRY_TOL_MM)
        and np.allclose(a.direction_lps, b.direction_lps, atol=1e-6)
    )
    if not same:
        raise InputError(
            f"{what} grid {b.voxels.shape} @ {b.spacing_mm} mm differs from the image's {a.voxels.shape} @ {a.spacing_mm} mm"
            " (shape, spacing, origin or direction); resample it first", reason="grid_mismatch",
        )  # fmt: skip


@dataclass(frozen=True)
class MaskStats:
    n_voxels: int
    volume_mm3: float
    mean: float | None
    median: float | None


def label_region(mask: np.ndarray, label: int | None = None, what: str = "mask") -> np.ndarray:
    """The voxels of ``mask`` that are non-zero (or ``== label``), after checking that ``mask`` is a
    label map: every voxel a finite whole number. InputError ``invalid_labels`` otherwise: a NaN
    (e.g. the background of a float mask) would count as inside (``NaN != 0``), and a fractional
    value (a label map resampled with linear interpolation) is no label (1.5 is neither 1 nor 2)."""
    if mask.dtype.kind not in "biuf":
        raise InputError(f"{what}: voxel type {mask.dtype} is not a label map", reason="invalid_labels")
    if mask.dtype.kind == "f":
        n_bad = mask.size - int(np.count_nonzero(np.isfinite(mask)))
        if n_bad:
            raise InputError(f"{what} holds {n_bad} NaN or inf voxel(s); a mask or label map holds whole numbers "
                             "(0 outside)", reason="invalid_labels")  # fmt: skip
        frac = mask[mask != np.round(mask)]
        if frac.size:
            raise InputError(f"{what} holds {frac.size} voxel(s) that are not whole numbers (e.g. {frac.flat[0]:g}): "
                             "a label map resampled with linear interpolation? Resample it with nearest neighbour",
                             reason="invalid_labels")  # fmt: skip
    return mask != 0 if label is None else mask == label


def values_in(image: np.ndarray, region: np.ndarray, what: str = "image") -> np.ndarray:
    """The values of ``image`` in ``region`` as float64; InputError ``non_finite_voxels`` when one is
    NaN or inf (e.g. a failed fit): never averaged in, never silently left out."""
    vals = image[region].astype(np.float64)
    n_bad = vals.size - int(np.count_nonzero(np.isfinite(vals)))
    if n_bad:
        raise InputError(f"{what}: {n_bad} of the {vals.size} voxels in the mask are NaN or inf (e.g. failed fits); "
                         "take them out of the mask to measure the rest", reason="non_finite_voxels")  # fmt: skip
    return vals


def mask_statistics(image: np.ndarray, mask: np.ndarray, spacing_mm, label: int | None = None) -> MaskStats:
    """Mean, median and volume of ``image`` inside ``mask`` (non-zero voxels, or ``== label``).

    image, mask : arrays of one shape (K, J, I); spacing_mm : (k, j, i) in mm.
    An empty region gives ``n_voxels = 0`` and null mean/median. InputError ``invalid_labels`` when
    ``mask`` is not a label map (:func:`label_region`), ``non_finite_voxels`` when ``image`` is NaN
    or inf inside the region (:func:`values_in`).
    """
    if image.shape != mask.shape:
        raise InputError(f"image {image.shape} and mask {mask.shape} differ", reason="grid_mismatch")
    vals = values_in(image, label_region(mask, label))
    n = int(vals.size)
    return MaskStats(
        n_voxels=n,
        volume_mm3=n * float(np.prod(np.asarray(spacing_mm, np.float64))),
        mean=float(vals.mean()) if n else None,
        median=float(np.median(vals)) if n else None,
    )


@dataclass(frozen=True)
class FatFraction:
    label: int
    fat_fraction: float | None  # mean over voxels of F / (F + W), in [0, 1]
    n_voxels: int  # voxels used (F + W > 0)
    n_excluded: int  # voxels of the label with F + W == 0 (no signal)


def dixon_fat_fraction(fat: np.ndarray, water: np.ndarray, labels: np.ndarray) -> dict[int, FatFraction]:
    """Fat fraction per label: the mean over the label's voxels of ``F / (F + W)``.

    fat, water : Dixon magnitude images (K, J, I), >= 0; labels : label map (whole numbers, 0 =
    background; InputError ``invalid_labels`` otherwise, see :func:`label_region`). Voxels without
    signal (F + W == 0) are excluded and counted. Negative magnitudes are refused
    (``negative_magnitude``), and so are NaN or inf inside the labels (``non_finite_voxels``: never
    counted as "no signal").
    """
    if not (fat.shape == water.shape == labels.shape):
        raise InputError(f"fat {fat.shape}, water {water.shape} and labels {labels.shape} differ", reason="grid_mismatch")
    inside = label_region(labels, None, "label map")
    values_in(fat, inside, "fat image")
    values_in(water, inside, "water image")
    f, w = fat.astype(np.float64), water.astype(np.float64)
    if np.any(f[inside] < 0) or np.any(w[inside] < 0):
        raise InputError("Dixon fat and water magnitude images must be >= 0 inside the labels", reason="negative_magnitude")
    out = {}
    total = f + w
    for lab in np.unique(labels[inside]).tolist():
        region = labels == lab
        ok = region & (total > 0)
        n = int(np.count_nonzero(ok))
        ff = float(np.mean(f[ok] / total[ok])) if n else None
        out[int(lab)] = FatFraction(int(lab), ff, n, int(np.count_nonzero(region)) - n)
    return out


def _tag(ds, name: str, where: str = ""):
    try:
        value = getattr(ds, name, None)
    except (TypeError, ValueError, OverflowError) as exc:  # pydicom converts DS/IS/DA values on access
        raise InputError(f"PET SUV: DICOM tag {name}{where} is malformed ({exc})", reason="invalid_tag") from None
    if value is None or value == "":
        raise InputError(f"PET SUV needs DICOM tag {name}{where}; it is missing", reason="missing_tag")
    return value


def _positive(value, name: str) -> float:
    """A tag's value as a finite number > 0; InputError ``invalid_tag`` otherwise (NaN, inf, text)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    if not (math.isfinite(x) and x > 0):
        raise InputError(f"PET SUV: {name} = {value!r} is not a finite number > 0", reason="invalid_tag")
    return x


def _dicom_datetime(date: str, time: str) -> dt.datetime:
    """A DICOM DA (YYYYMMDD) and TM given to the second (HHMMSS[.ffffff]); InputError ``invalid_tag``
    for anything less precise or malformed (a time read as HH:00:00 would shift the decay by hours)."""
    date, time = str(date).strip(), str(time).strip()
    hms, _, frac = time.partition(".")
    if not (len(date) == 8 and date.isdigit() and len(hms) == 6 and hms.isdigit() and (frac == "" or frac.isdigit())):
        raise InputError(f"PET SUV: date {date!r} / time {time!r} is not YYYYMMDD / HHMMSS[.ffffff]", reason="invalid_tag")
    try:
        base = dt.datetime.strptime(date + hms, "%Y%m%d%H%M%S")
    except ValueError:
        raise InputError(f"PET SUV: date {date!r} / time {time!r} is not a valid date and time", reason="invalid_tag") from None
    return base + dt.timedelta(seconds=float("0." + frac) if frac else 0.0)


@dataclass(frozen=True)
class SuvFactor:
    """``SUVbw = value_Bq_per_mL * factor_g_per_Bq``, and the inputs it came from."""

    factor_g_per_bq: float
    weight_kg: float
    dose_bq: float
    half_life_s: float
    decay_correction: str
    delay_s: float  # injection to series time (0 meaning not used for ADMIN)


def suv_bw_factor(ds) -> SuvFactor:
    """The body-weight SUV factor of a PET DICOM dataset (pydicom), with decay correction.

    Raises InputError (reason ``missing_tag``, ``invalid_tag`` or ``unsupported_pet``) when any
    needed tag is missing or malformed (non-finite or non-positive numbers, times not given to the
    second), or when units, corrections or times make the SUV undefined.
    """
    if getattr(ds, "Modality", None) != "PT":
        raise InputError(f"not a PET image (Modality {getattr(ds, 'Modality', None)!r})", reason="unsupported_pet")
    if _tag(ds, "Units") != "BQML":
        raise InputError(f"PET Units {ds.Units!r}: SUV needs activity concentration in BQML", reason="unsupported_pet")
    corrected = set(_tag(ds, "CorrectedImage"))
    if not {"ATTN", "DECY"} <= corrected:
        raise InputError(f"CorrectedImage {sorted(corrected)} lacks ATTN and/or DECY", reason="unsupported_pet")
    decay_mode = _tag(ds, "DecayCorrection")
    if decay_mode not in ("START", "ADMIN"):
        raise InputError(f"DecayCorrection {decay_mode!r} not supported (START or ADMIN)", reason="unsupported_pet")
    weight_kg = _positive(_tag(ds, "PatientWeight"), "PatientWeight")
    seq = _tag(ds, "RadiopharmaceuticalInformationSequence")
    if len(seq) != 1:
        raise InputError(f"{len(seq)} radiopharmaceutical items; SUV needs exactly one", reason="unsupported_pet")
    rp, where = seq[0], " (RadiopharmaceuticalInformationSequence)"
    dose_bq = _positive(_tag(rp, "RadionuclideTotalDose", where), "RadionuclideTotalDose")
    half_life_s = _positive(_tag(rp, "RadionuclideHalfLife", where), "RadionuclideHalfLife")
    delay_s = 0.0
    decay = 1.0
    if decay_mode == "START":
        series = _dicom_datetime(_tag(ds, "SeriesDate"), _tag(ds, "SeriesTime"))
        acq_time = getattr(ds, "AcquisitionTime", None)
        if acq_time and _dicom_datetime(getattr(ds, "AcquisitionDate", None) or ds.SeriesDate, acq_time) < series:
            raise InputError("AcquisitionTime before SeriesTime: series time altered after acquisition; "
                             "the scan start is unknown", reason="unsupported_pet")  # fmt: skip
        start_dt = getattr(rp, "RadiopharmaceuticalStartDateTime", None)
        if start_dt:  # DT: YYYYMMDDHHMMSS[.ffffff][&ZZXX]; the offset is the series' own, so it is dropped
            injection = _dicom_datetime(str(start_dt)[:8], re.split(r"[+-]", str(start_dt)[8:])[0])
        else:
            injection = _dicom_datetime(ds.SeriesDate, _tag(rp, "RadiopharmaceuticalStartTime", where))
        delay_s = (series - injection).total_seconds()
        if delay_s < 0:
            raise InputError(f"injection {delay_s:.0f} s after the series start", reason="unsupported_pet")
        decay = 2.0 ** (-delay_s / half_life_s)
    factor = weight_kg * 1000.0 / (dose_bq * decay)
    return SuvFactor(factor, weight_kg, dose_bq, half_life_s, decay_mode, delay_s)


def pet_suv_volume(path: Path | str) -> tuple[LoadedVolume, SuvFactor]:
    """SUVbw volume (float64, (K, J, I)) of a PET DICOM file or series folder, and the factor used.

    Every file of a series must give the same factor (same patient weight, dose and times).
    """
    import pydicom

    path = Path(path)
    if path.is_dir():
        from mmstream.volumes.load import dicom_files_by_series

        series = dicom_files_by_series(path)
        if len(series) != 1:
            raise InputError(f"{path}: the folder holds {len(series)} DICOM series; give a folder (or file) of one "
                             "PET series", reason="series_count")  # fmt: skip
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    factors = set()
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            if path.is_dir():
                continue  # not every file of a folder need be DICOM
            raise ReadError(f"{f}: cannot read PET DICOM: {exc}", reason="unreadable") from None
        factors.add(suv_bw_factor(ds))
    if not factors:
        raise ReadError(f"{path}: no DICOM file", reason="unreadable")
    if len(factors) > 1:
        raise InputError(f"{path}: files disagree on weight, dose or times ({len(factors)} SUV factors)", reason="unsupported_pet")
    factor = factors.pop()
    vol = read_volume(path)  # activity concentration, rescaled to Bq/mL
    return replace(vol, voxels=vol.voxels.astype(np.float64) * factor.factor_g_per_bq), factor
