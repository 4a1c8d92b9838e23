"""Per-site assessment: stored values with z-scores, involvement score, disagreements, biopsy order.

Pure functions (no store, no sockets). The rules, with their literature sources, are in
``docs/biomarkers.md``; every number they use comes from the user's reference table or
configuration, none is built in except the 2-SD convention (:data:`mmstream.calibration.ABNORMAL_Z`).
"""

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from mmstream.biomarkers.records import BiomarkerRecord
from mmstream.calibration import ABNORMAL_Z, ReferenceTable, Sex, z_score
from mmstream.messages import BiopsyCandidate, FusedValue

SCORE_FORMULA = "mean of the oriented z-scores (positive = abnormal direction) of score_inputs"
CATEGORY_ORDER = {"affected": 0, "unknown": 1, "normal": 2, "end_stage": 3}


@dataclass(frozen=True)
class FusionRules:
    """``end_stage_fat_fraction``: fat fraction from which a muscle counts as end-stage (no default:
    the rule is off until the user sets it); ``stale_after_days``: a stored value older than this is
    flagged stale (off when None)."""

    references: ReferenceTable | None = None
    end_stage_fat_fraction: float | None = None
    stale_after_days: float | None = None


def reference_z(name: str, value: float, site: str, rules: FusionRules, age_years, sex) -> tuple[float | None, bool | None]:
    """(oriented z, abnormal) of ``value`` against the reference table, or (None, None) without an entry."""
    entry = None if rules.references is None else rules.references.lookup(name, site, age_years, sex)
    if entry is None:
        return None, None
    z = z_score(value, entry, age_years, sex)
    return z.oriented, z.abnormal


def stored_values(records: Iterable[BiomarkerRecord], site: str, side: str | None, rules: FusionRules,
                  age_years: float | None, sex: Sex | None, today: dt.date) -> tuple[FusedValue, ...]:  # fmt: skip
    """The newest stored value of each (biomarker, modality, tracer) at ``site``, with its age,
    staleness and z-score. With a ``side``: records of that side or of no stated side; without one:
    records of no stated side only (never the newest of either leg). A stored raw
    ``us_echo_intensity`` (grey levels of an unknown device) gets no z-score; a stored
    ``us_echo_calibrated`` is scored against the ``us_echo_intensity`` references."""
    newest: dict[tuple, BiomarkerRecord] = {}
    for r in records:
        if r.site != site or r.side not in (side, None):
            continue
        k = (r.biomarker, r.modality, r.tracer)
        if k not in newest or (r.acquired_on, r.side is not None) > (newest[k].acquired_on, newest[k].side is not None):
            newest[k] = r  # the newest; on one date, the record of the stated side
    out = []
    for r in sorted(newest.values(), key=lambda r: (r.biomarker, r.modality, r.tracer or "")):
        age_days = float((today - r.acquired_on).days)
        if r.biomarker == "us_echo_intensity":
            z, abnormal = None, None
        else:
            ref = "us_echo_intensity" if r.biomarker == "us_echo_calibrated" else r.biomarker
            z, abnormal = reference_z(ref, r.value, site, rules, age_years, sex)
        out.append(FusedValue(
            name=r.biomarker, source="stored", modality=r.modality, value=r.value, unit=r.unit,
            acquired_on=r.acquired_on.isoformat(), age_days=age_days,
            stale=None if rules.stale_after_days is None else age_days > rules.stale_after_days,
            tracer=r.tracer, z=z, abnormal=abnormal,
        ))  # fmt: skip
    return tuple(out)


@dataclass(frozen=True)
class SiteAssessment:
    site: str
    side: str | None
    score: float | None
    score_inputs: tuple[str, ...]
    disagreements: tuple[str, ...]
    category: str
    reason: str
    sort_key: tuple


def _input_name(v: FusedValue) -> str:
    return v.name if v.source == "stored" else f"{v.source}:{v.name}"


def _reason(category: str, values: tuple[FusedValue, ...], scored: list[FusedValue], ff, edema: bool,
            disagreements: tuple[str, ...], rules: FusionRules) -> str:  # fmt: skip
    """Why the site has its category, with what weakens it: stale values, disagreements."""
    notes = [f"stale: {', '.join(_input_name(v) for v in values if v.stale)}"] if any(v.stale for v in values) else []
    if disagreements:
        notes.append(f"{len(disagreements)} disagreement(s) between modalities")
    text = _category_reason(category, bool(values), scored, ff, edema, rules)
    return "; ".join([text, *notes])


def _category_reason(category: str, any_values: bool, scored: list[FusedValue], ff, edema: bool, rules: FusionRules) -> str:
    zs = ", ".join(f"{_input_name(v)} z={v.z:.2f}" for v in scored if v.abnormal or category == "normal")
    if category == "end_stage":
        return f"fat fraction {ff:.2f} >= end-stage limit {rules.end_stage_fat_fraction:.2f} (configured): little muscle left"
    if category == "affected":
        reason = f"abnormal ({zs})" + ("; raised water T2 suggests active disease" if edema else "")
        if ff is not None and rules.end_stage_fat_fraction is None:
            reason += "; end-stage rule off (set [biomarkers] end_stage_fat_fraction or --end-stage-fat-fraction)"
        return reason
    if category == "normal":
        return f"no value beyond its abnormal limit (by default {ABNORMAL_Z:g} SD on the abnormal side): {zs}"
    return ("no value with a reference entry for this site (or age/sex needed by it unknown)" if any_values
            else "no values")  # fmt: skip


def assess_site(site: str, side: str | None, values: Iterable[FusedValue], rules: FusionRules,
                explain: bool = True) -> SiteAssessment:  # fmt: skip
    """Score, disagreements and biopsy category of one site from its values (``reason`` left empty
    unless ``explain``: the live path does not need it).

    A live per-frame echo value is used only when no captured (three-image) value with a z-score
    exists (a raw capture, from an uncalibrated device, has none and does not hide a live one).
    """
    values = tuple(values)
    has_capture = any(v.source == "captured" and v.z is not None for v in values)  # a raw capture has no score
    scored = [v for v in values if v.z is not None and not (v.source == "live" and has_capture and v.name.startswith("us_echo"))]
    score = sum(v.z for v in scored) / len(scored) if scored else None
    abnormal = [v for v in scored if v.abnormal]
    normal = [v for v in scored if not v.abnormal]
    disagreements = tuple(
        f"{a.modality} {_input_name(a)} abnormal (z={a.z:.2f}) but {b.modality} {_input_name(b)} normal (z={b.z:.2f})"
        for a in abnormal for b in normal if a.modality != b.modality
    )  # fmt: skip
    ff = next((v.value for v in values if v.name == "fat_fraction" and v.source == "stored"), None)
    edema = any(v.name == "t2_water_ms" and v.abnormal for v in scored)
    if rules.end_stage_fat_fraction is not None and ff is not None and ff >= rules.end_stage_fat_fraction:
        category = "end_stage"
    else:
        category = "affected" if abnormal else ("normal" if scored else "unknown")
    reason = _reason(category, values, scored, ff, edema, disagreements, rules) if explain else ""
    sort_key = (CATEGORY_ORDER[category], not edema, -len({v.modality for v in abnormal}), ff if ff is not None else 2.0,
                -(score or 0.0), site, side or "")  # fmt: skip
    return SiteAssessment(site, side, score, tuple(_input_name(v) for v in scored), disagreements, category, reason,
                          sort_key)  # fmt: skip


def rank_sites(assessments: Iterable[SiteAssessment]) -> tuple[BiopsyCandidate, ...]:
    """Biopsy order: affected (raised water T2 first, then more modalities abnormal, then lower fat
    fraction), then unknown, normal, end-stage."""
    ordered = sorted(assessments, key=lambda a: a.sort_key)
    return tuple(
        BiopsyCandidate(rank=i, site=a.site, side=a.side, category=a.category,
                        score=None if a.score is None else round(a.score, 4), reason=a.reason[:500])
        for i, a in enumerate(ordered, start=1)
    )  # fmt: skip


def biopsy_sites(keys: Iterable[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    """The (site, side) pairs ranked for biopsy among ``keys`` (those of a patient's records and
    captures): a site with a side is ranked per side, and its values without a side belong to each
    of those (:func:`stored_values`); a (site, no side) is ranked only for a site with no side at all
    (else one muscle would be ranked twice, once through its side-less copy)."""
    keys = set(keys)
    sided = {site for site, side in keys if side is not None}
    return sorted((k for k in keys if k[1] is not None or k[0] not in sided), key=lambda k: (k[0], k[1] or ""))


def own_or_sideless(values: Mapping[tuple[str, str | None], FusedValue], site: str, side: str | None) -> FusedValue | None:
    """The value of (``site``, ``side``); for a side without one of its own, the site's value without
    a side (the rule of :func:`stored_values`, for captures); None when neither exists."""
    got = values.get((site, side))
    return values.get((site, None)) if got is None and side is not None else got


def rank_patient(records: Iterable[BiomarkerRecord], rules: FusionRules, age_years: float | None, sex: Sex | None,
                 today: dt.date, captured: Mapping[tuple[str, str | None], FusedValue] | None = None,
                 ) -> tuple[BiopsyCandidate, ...]:  # fmt: skip
    """The biopsy ranking of one patient: each site of :func:`biopsy_sites` assessed from its stored
    values and its three-image capture (``captured``, by (site, side), already scored), in the order
    of :func:`rank_sites`. ``mmstream biopsy`` and the fusion node both rank with this."""
    records, captured = tuple(records), captured or {}
    assessments = []
    for site, side in biopsy_sites({(r.site, r.side) for r in records} | set(captured)):
        capture = own_or_sideless(captured, site, side)
        values = (*stored_values(records, site, side, rules, age_years, sex, today), *((capture,) if capture else ()))
        assessments.append(assess_site(site, side, values, rules))
    return rank_sites(assessments)
