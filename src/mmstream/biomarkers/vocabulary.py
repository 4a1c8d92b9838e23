"""Controlled vocabulary of biomarkers: name, canonical unit, modalities, physical range.

Every stored value is in its biomarker's canonical unit. An input unit is accepted when it is the
canonical unit or one of the exact unit conversions in :data:`UNIT_FACTORS` (SI prefixes only: no
clinical or empirical factor); anything else is refused as an unknown unit. The physical ranges
are definitions (a fraction lies in [0, 1]), never clinical limits.
"""

import math
from dataclasses import dataclass

from mmstream.errors import InputError

Modality = str  # one of MODALITIES
MODALITIES = ("MRI", "PET", "CT", "US")


@dataclass(frozen=True)
class Biomarker:
    """One vocabulary entry. ``low``/``high``: physically possible range of the canonical value."""

    name: str
    unit: str
    modalities: tuple[str, ...]
    description: str
    low: float = -math.inf
    high: float = math.inf
    needs_tracer: bool = False


_ANY = MODALITIES
VOCABULARY: dict[str, Biomarker] = {
    b.name: b
    for b in (
        Biomarker("csa_mm2", "mm2", _ANY, "cross-sectional area of a muscle or nerve", 0.0),
        Biomarker("volume_mm3", "mm3", ("MRI", "PET", "CT", "US"), "volume of a segmented region (muscle; a PET mask)", 0.0),
        Biomarker("fat_fraction", "1", ("MRI",), "Dixon signal fat fraction F/(F+W) (PDFF only with T1 and T2* corrected Dixon)", 0.0, 1.0),
        Biomarker("t2_water_ms", "ms", ("MRI",), "water T2 relaxation time (fat-separated)", 0.0),
        Biomarker("dti_fa", "1", ("MRI",), "DTI fractional anisotropy (site = muscle or tract, e.g. corticospinal_tract)", 0.0, 1.0),
        Biomarker("dti_md_mm2_per_s", "mm2/s", ("MRI",), "DTI mean diffusivity", 0.0),
        Biomarker("mrs_naa_cr", "1", ("MRI",), "MR spectroscopy N-acetylaspartate / creatine ratio", 0.0),
        Biomarker("qsm_susceptibility_ppm", "ppm", ("MRI",), "QSM magnetic susceptibility (iron), relative to the map's reference"),
        Biomarker("gm_volume_mm3", "mm3", ("MRI",), "grey-matter volume (VBM) of a region", 0.0),
        Biomarker("pet_suv_mean", "g/mL", ("PET",), "mean body-weight SUV in the region", 0.0, needs_tracer=True),
        Biomarker("pet_suv_max", "g/mL", ("PET",), "maximum body-weight SUV in the region", 0.0, needs_tracer=True),
        Biomarker("pet_suvr", "1", ("PET",), "SUV ratio to a reference region (name it in method)", 0.0, needs_tracer=True),
        Biomarker("pet_bp_nd", "1", ("PET",), "non-displaceable binding potential (e.g. 11C-raclopride)", needs_tracer=True),
        Biomarker("ct_diaphragm_thickness_mm", "mm", ("CT",), "diaphragm thickness on CT", 0.0),
        Biomarker("mask_mean", "au", _ANY, "mean voxel value inside a label mask (arbitrary units of the image)"),
        Biomarker("mask_median", "au", _ANY, "median voxel value inside a label mask (arbitrary units of the image)"),
        Biomarker("us_echo_intensity", "grey_level", ("US",), "mean grey level of a muscle region (0-255, device-dependent)", 0.0, 255.0),
        Biomarker("us_echo_calibrated", "grey_level", ("US",), "echo intensity after device calibration to the reference device"),
        Biomarker("us_echo_z", "1", ("US",), "echo intensity z-score against a reference table"),
        Biomarker("thickness_mm", "mm", ("US", "MRI", "CT"), "muscle thickness", 0.0),
    )
}  # fmt: skip

# input unit -> (canonical unit, factor): canonical = value * factor. Exact SI relations only.
UNIT_FACTORS: dict[str, tuple[str, float]] = {
    "cm2": ("mm2", 100.0),
    "cm3": ("mm3", 1000.0),
    "mL": ("mm3", 1000.0),
    "ml": ("mm3", 1000.0),
    "s": ("ms", 1000.0),
    "%": ("1", 0.01),  # fractions only (see accepted_units)
    "ppb": ("ppm", 1e-3),
    "um2/ms": ("mm2/s", 1e-3),
    "1e-3 mm2/s": ("mm2/s", 1e-3),
    "g/ml": ("g/mL", 1.0),
    "kg/L": ("g/mL", 1.0),
}


def accepted_units(b: Biomarker) -> list[str]:
    """Input units converted exactly to ``b``'s canonical unit (``%`` only for fractions in [0, 1])."""
    return sorted(u for u, (c, _) in UNIT_FACTORS.items() if c == b.unit and (u != "%" or (b.low, b.high) == (0.0, 1.0)))


def lookup(name: str) -> Biomarker:
    """The vocabulary entry of ``name``; InputError (reason ``unknown_biomarker``) otherwise."""
    try:
        return VOCABULARY[name]
    except KeyError:
        raise InputError(
            f"unknown biomarker {name!r}; known: {', '.join(sorted(VOCABULARY))}", reason="unknown_biomarker"
        ) from None


def to_canonical(name: str, value: float, unit: str) -> float:
    """``value`` in ``unit`` converted to the canonical unit of biomarker ``name``.

    Raises InputError: ``unknown_biomarker``, ``unknown_unit`` (not the canonical unit nor an exact
    conversion to it), ``out_of_range`` (not finite or outside the physical range).
    """
    b = lookup(name)
    if unit == b.unit:
        factor = 1.0
    elif unit in accepted_units(b):
        factor = UNIT_FACTORS[unit][1]
    else:
        alts = accepted_units(b)
        raise InputError(
            f"unit {unit!r} is not valid for {name} (canonical {b.unit!r}"
            + (f"; also accepted: {', '.join(alts)})" if alts else ")"),
            reason="unknown_unit",
        )
    v = float(value) * factor
    if not math.isfinite(v) or not (b.low <= v <= b.high):
        given = "" if factor == 1.0 else f" ({float(value):g} {unit})"
        raise InputError(f"{name} = {v:.6g} {b.unit}{given} is outside its physical range [{b.low:g}, {b.high:g}]",
                         reason="out_of_range")  # fmt: skip
    return v
