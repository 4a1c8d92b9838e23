"""Per-frame analysis: echogenicity, CSA, thickness and quality of one B-mode frame.

:func:`analyze_frame` is the one public entry point, used alike by the live analyzer and by
``mmstream analyze``. Results are frozen pydantic models; every length is in pixels in a ``*_px``
field and, when the pixel spacing is known, in millimetres in the matching ``*_mm`` field (null
otherwise: mmstream never guesses a spacing). Axes are (row, col).

Tracking: pass the previous frame's result as ``previous`` and, with no new ``seed``, the CSA contour
follows the structure from that result (cheaper than a new segmentation, and the previous size is
a strong prior); the thickness lines and the frozen-frame check use it likewise.

Probe contact: a frame the quality check finds without probe contact (almost all pixels dark: the
probe lifted, or no gel) is not measured. Its echogenicity, CSA and thickness are null and its
``quality`` is reported (even when not asked for) to say why; a seed or line click on it is
refused. The CSA contour and thickness lines (with their held clicks) of the last frame with
contact carry over, so tracking resumes when the probe touches again.
"""

from collections.abc import Iterable
from typing import Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, PrivateAttr

from mmstream.errors import InputError
from mmstream.io._common import validate_spacing as _validate_spacing
from mmstream.kernels import csa as csa_k
from mmstream.kernels import echogenicity as echo_k
from mmstream.kernels import quality as quality_k
from mmstream.kernels import thickness as thickness_k
from mmstream.kernels._points import check_point
from mmstream.ndarray import Counts, Points

__all__ = [
    "METRICS",
    "NOT_MEASURED",
    "SCHEMA_VERSION",
    "FrameAnalysis",
    "EchoResult",
    "CsaResult",
    "ThicknessResult",
    "QualityResult",
    "analyze_frame",
    "validate_spacing",
]

SCHEMA_VERSION = 1
METRICS = ("echogenicity", "csa", "thickness", "quality")
Metric = Literal["echogenicity", "csa", "thickness", "quality"]
EchoRegion = Literal["auto", "roi", "csa", "frame"]
NOT_MEASURED = ("no_contact", "featureless")
"""Reasons of the InputError for a tap on a frame that is not measured at all (a tap waits for
a measured frame)."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)


class EchoResult(_Model):
    """Grey-level statistics (grey levels 0-255) inside ``region``."""

    region: Literal["roi", "csa", "frame"]
    mean: float | None
    std: float | None
    n_px: int
    histogram: Counts


class CsaResult(_Model):
    """Cross-sectional area of the structure containing the seed."""

    seed_rc: tuple[float, float]
    tracked: bool
    area_px: float
    area_mm2: float | None
    perimeter_px: float
    perimeter_mm: float | None
    centroid_rc: tuple[float, float]
    contour_rc: Points
    confidence: float


class ThicknessResult(_Model):
    """Muscle thickness: vertical distance between the superficial and deep boundary lines.
    ``tracked``: the lines were followed from the previous frame (False: found on this frame).
    ``superficial_at_rc`` / ``deep_at_rc``: where a clicked line is held, its point at the column
    of the click, on that frame and every frame tracked from it (null: chosen automatically)."""

    region_rc: tuple[int, int, int, int]
    thickness_px: float
    thickness_mm: float | None
    superficial_rc: Points
    deep_rc: Points
    confidence: float
    tracked: bool = False
    superficial_at_rc: tuple[float, float] | None = None
    deep_at_rc: tuple[float, float] | None = None


class QualityResult(_Model):
    """Acquisition quality flags (see :mod:`mmstream.kernels.quality`)."""

    saturated_fraction: float
    dark_fraction: float
    active_fraction: float | None = None  # null in results written before it existed
    thumb_mean_abs_diff: float | None
    duplicate: bool
    frozen: bool
    saturated: bool
    no_contact: bool
    featureless: bool = False


class FrameAnalysis(_Model):
    """All metrics of one frame. Metrics not asked for, or not computable (CSA without a seed, a
    frame without probe contact or featureless), are null."""

    schema_version: Literal[1] = SCHEMA_VERSION
    shape: tuple[int, int]
    spacing_mm: tuple[float, float] | None
    roi: tuple[int, int, int, int] | None
    echogenicity: EchoResult | None = None
    csa: CsaResult | None = None
    thickness: ThicknessResult | None = None
    quality: QualityResult | None = None
    _signature: quality_k.FrameSignature | None = PrivateAttr(default=None)
    _carried: "FrameAnalysis | None" = PrivateAttr(default=None)

    @property
    def tracking_state(self) -> "FrameAnalysis":
        """The result whose CSA contour and thickness lines the next frame tracks: this one, or
        for a frame without probe contact the last one with contact (itself if none)."""
        return self if self._carried is None else self._carried

    def with_tracking(self, **update) -> "FrameAnalysis":
        """A copy whose :attr:`tracking_state` has the fields ``update`` (e.g. ``csa=None``)."""
        if self._carried is None:
            return self.model_copy(update=update)
        new = self.model_copy()
        new._carried = self._carried.model_copy(update=update)
        return new


def validate_spacing(spacing_mm) -> tuple[float, float] | None:
    """``(row_mm, col_mm)`` as floats, or None; SpacingError when not two finite values in
    [``MIN_SPACING_MM`` = 1e-4, ``MAX_SPACING_MM`` = 100] mm (:mod:`mmstream.io._common`)."""
    return None if spacing_mm is None else _validate_spacing(spacing_mm, what="spacing_mm")


def _validate_roi(roi, shape) -> tuple[int, int, int, int] | None:
    if roi is None:
        return None
    try:
        r0, c0, r1, c1 = (int(v) for v in roi)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InputError(f"roi must be four integers (r0, c0, r1, c1), got {roi!r}", reason="bad_roi") from exc
    h, w = shape
    if not (0 <= r0 < r1 <= h and 0 <= c0 < c1 <= w):
        raise InputError(
            f"roi ({r0}, {c0}, {r1}, {c1}) must satisfy 0 <= r0 < r1 <= {h} and 0 <= c0 < c1 <= {w}",
            reason="bad_roi",
        )
    return r0, c0, r1, c1


def _polyline_length_mm(points_rc: np.ndarray, spacing_mm, closed: bool) -> float:
    pts = np.vstack([points_rc, points_rc[:1]]) if closed else points_rc
    d = np.diff(pts, axis=0) * np.asarray(spacing_mm)
    return float(np.hypot(d[:, 0], d[:, 1]).sum())


def _visible_area_px(contour_rc: np.ndarray, shape: tuple[int, int]) -> float:
    """Area (px²) of the polygon ``contour_rc`` (K, 2) inside the image: clipped to the pixels'
    outer edges, rows -0.5 .. H - 0.5 and cols -0.5 .. W - 0.5 (Sutherland-Hodgman)."""
    poly = [tuple(p) for p in np.asarray(contour_rc, np.float64)]
    for axis, limit, keep_below in ((0, -0.5, False), (0, shape[0] - 0.5, True), (1, -0.5, False), (1, shape[1] - 0.5, True)):
        inside = (lambda p: p[axis] <= limit) if keep_below else (lambda p: p[axis] >= limit)  # noqa: E731
        out = []
        for a, b in zip(poly, poly[1:] + poly[:1]):
            if inside(b):
                if not inside(a):
                    out.append(_cross(a, b, axis, limit))
                out.append(b)
            elif inside(a):
                out.append(_cross(a, b, axis, limit))
        poly = out
        if not poly:
            return 0.0
    r, c = np.array(poly).T
    return float(0.5 * abs(np.dot(r, np.roll(c, -1)) - np.dot(c, np.roll(r, -1))))


def _cross(a, b, axis: int, limit: float) -> tuple[float, float]:
    t = (limit - a[axis]) / (b[axis] - a[axis])
    return (a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]))


def _csa_result(c: csa_k.CsaContour, seed_rc, tracked: bool, spacing, shape: tuple[int, int]) -> CsaResult:
    """The CSA of the outline's part inside the image: an outline leaving the picture (a structure
    cut by its edge) counts only what is seen, and its confidence falls by the share left outside."""
    lo, hi = c.contour_rc.min(axis=0), c.contour_rc.max(axis=0)
    inside = lo.min() >= -0.5 and hi[0] <= shape[0] - 0.5 and hi[1] <= shape[1] - 0.5
    # the clip (pure Python, ~0.1 ms) only for an outline that leaves the picture
    area = c.area_px if inside or c.area_px <= 0 else _visible_area_px(c.contour_rc, shape)
    return CsaResult(
        seed_rc=seed_rc,
        tracked=tracked,
        area_px=area,
        area_mm2=None if spacing is None else area * spacing[0] * spacing[1],
        perimeter_px=c.perimeter_px,
        perimeter_mm=None if spacing is None else _polyline_length_mm(c.contour_rc, spacing, True),
        centroid_rc=c.centroid_rc,
        contour_rc=c.contour_rc,
        confidence=c.confidence * (min(area / c.area_px, 1.0) if c.area_px > 0 else 0.0),
    )


def _previous_contour(prev: CsaResult) -> csa_k.CsaContour:
    return csa_k.CsaContour(
        contour_rc=np.asarray(prev.contour_rc, np.float64),
        area_px=prev.area_px,
        perimeter_px=prev.perimeter_px,
        centroid_rc=prev.centroid_rc,
        confidence=prev.confidence,
    )


def _previous_lines(prev: ThicknessResult) -> thickness_k.ThicknessLines:
    return thickness_k.ThicknessLines(
        superficial_rc=np.asarray(prev.superficial_rc, np.float64),
        deep_rc=np.asarray(prev.deep_rc, np.float64),
        thickness_px=prev.thickness_px,
        confidence=prev.confidence,
        region_rc=prev.region_rc,
        tracked=prev.tracked,
        superficial_at_rc=prev.superficial_at_rc,
        deep_at_rc=prev.deep_at_rc,
    )


def analyze_frame(
    frame: np.ndarray,
    spacing_mm: tuple[float, float] | None = None,
    roi: tuple[int, int, int, int] | None = None,
    seed: tuple[float, float] | None = None,
    previous: FrameAnalysis | None = None,
    metrics: Iterable[Metric] = METRICS,
    *,
    superficial_at_rc: tuple[float, float] | None = None,
    deep_at_rc: tuple[float, float] | None = None,
    echo_region: EchoRegion = "auto",
    quality_limits: quality_k.QualityLimits = quality_k.QualityLimits(),
) -> FrameAnalysis:
    """Compute the requested metrics of one B-mode frame.

    Parameters
    ----------
    frame : ndarray of shape (H, W), uint8
        Grey B-mode frame, H >= 64 and W >= 16 (the quality pass that any metric runs); W >= 32 too
        when ``"thickness"`` is asked for (its search region is at least 32 x 32).
    spacing_mm : (row_mm, col_mm), optional
        Pixel spacing; None leaves every ``*_mm`` field null.
    roi : (r0, c0, r1, c1), optional
        End-exclusive rectangle: the echogenicity region (``echo_region="auto"``) and where the
        thickness boundaries are searched (in the B-mode picture found inside it; default: in the
        whole frame). An ROI under 32 px
        in either direction is an echogenicity region only: thickness is then found automatically.
    seed : (row, col), optional
        A click inside the structure whose CSA is wanted. Without a seed the CSA is tracked from
        ``previous``; with neither, ``csa`` is null.
    previous : FrameAnalysis, optional
        The result for the previous frame of the same stream (after frames without probe contact
        or featureless it carries the last tracked contour and lines).
    metrics : iterable of {"echogenicity", "csa", "thickness", "quality"}
    superficial_at_rc, deep_at_rc : (row, col), optional
        A click on the superficial or deep aponeurosis: the thickness line passes through it
        and only the other line is chosen, unless ``previous`` holds it at an earlier click (see
        :mod:`mmstream.kernels.thickness`). A click starts the lines afresh; without one they
        are tracked from ``previous``, and found again through the held points if lost.
    echo_region : {"auto", "roi", "csa", "frame"}
        Region of the echogenicity statistics; "auto" takes the ROI when given, else the CSA
        contour when there is one, else the whole frame.

    Returns
    -------
    FrameAnalysis

    Raises
    ------
    InputError
        Bad frame, ROI, seed, line click, metric name or region; a seed or line click on a frame
        without probe contact (reason ``no_contact``) or featureless (reason ``featureless``).
    SpacingError
        Spacing given but not two finite values in [0.0001, 100] mm.
    """
    if not isinstance(frame, np.ndarray) or frame.ndim != 2 or frame.dtype != np.uint8:
        raise InputError(
            f"frame must be a 2-D uint8 array, got {getattr(frame, 'dtype', type(frame).__name__)} "
            f"of shape {getattr(frame, 'shape', None)}",
            reason="bad_frame",
        )
    frame = np.ascontiguousarray(frame)
    try:
        wanted = set(metrics)
    except TypeError:
        raise InputError(f"metrics must be a list of metric names, got {metrics!r}", reason="bad_metric") from None
    unknown = wanted - set(METRICS)
    if unknown:
        raise InputError(f"unknown metric(s) {sorted(unknown)}; known: {', '.join(METRICS)}", reason="bad_metric")
    if echo_region not in get_args(EchoRegion):
        raise InputError(f"echo_region must be auto, roi, csa or frame, got {echo_region!r}", reason="bad_region")
    if previous is not None and not isinstance(previous, FrameAnalysis):
        raise InputError(f"previous must be a FrameAnalysis, got {type(previous).__name__}", reason="bad_previous")
    spacing = validate_spacing(spacing_mm)
    roi_t = _validate_roi(roi, frame.shape)
    if previous is not None and tuple(previous.shape) != frame.shape:
        previous = None  # a new frame size (new probe or depth) starts afresh
    state = None if previous is None else previous.tracking_state

    q = None
    if wanted:  # the quality pass also decides whether the frame is measured at all
        q = quality_k.frame_quality(frame, None if previous is None else previous._signature, quality_limits)
    if q is not None and (q.no_contact or q.featureless):
        return _not_measured(frame, spacing, roi_t, q, state, seed, superficial_at_rc, deep_at_rc)

    csa = None
    if "csa" in wanted or echo_region == "csa":
        if seed is not None:
            sr_, sc_ = check_point(seed, "seed")
            contour = csa_k.segment_from_seed(frame, (sr_, sc_))
            csa = _csa_result(contour, (sr_, sc_), False, spacing, frame.shape)
        elif state is not None and state.csa is not None:
            contour = csa_k.track(frame, _previous_contour(state.csa))
            csa = _csa_result(contour, contour.centroid_rc, True, spacing, frame.shape)

    echo = None
    if "echogenicity" in wanted:
        region = echo_region
        if region == "auto":
            region = "roi" if roi_t is not None else ("csa" if csa is not None else "frame")
        if region == "roi":
            if roi_t is None:
                raise InputError("echo_region='roi' needs an roi", reason="bad_region")
            st = echo_k.echogenicity(frame, rect=roi_t)
        elif region == "csa":
            if csa is None:
                raise InputError("echo_region='csa' needs a seed or a tracked contour", reason="bad_region")
            st = echo_k.echogenicity(frame, polygon_rc=csa.contour_rc)
        else:
            st = echo_k.echogenicity(frame)
        echo = EchoResult(
            region=region,
            mean=None if st.n_px == 0 else st.mean,
            std=None if st.n_px == 0 else st.std,
            n_px=st.n_px,
            histogram=st.histogram,
        )

    thick = None
    if "thickness" in wanted:
        prev_t = None if state is None else state.thickness
        small = roi_t is not None and min(roi_t[2] - roi_t[0], roi_t[3] - roi_t[1]) < thickness_k.MIN_SIZE
        lines = thickness_k.measure_thickness(
            frame,
            roi=None if small else roi_t,  # an ROI too small to hold two aponeuroses is an echogenicity region only
            previous=None if prev_t is None else _previous_lines(prev_t),
            superficial_at_rc=superficial_at_rc,
            deep_at_rc=deep_at_rc,
            track=prev_t is not None and state.roi == roi_t,  # a new ROI: only the held points carry over
        )
        thick = ThicknessResult(
            region_rc=lines.region_rc,
            thickness_px=lines.thickness_px,
            thickness_mm=None if spacing is None else lines.thickness_px * spacing[0],
            superficial_rc=lines.superficial_rc,
            deep_rc=lines.deep_rc,
            confidence=lines.confidence,
            tracked=lines.tracked,
            superficial_at_rc=lines.superficial_at_rc,
            deep_at_rc=lines.deep_at_rc,
        )

    result = FrameAnalysis(
        shape=frame.shape,
        spacing_mm=spacing,
        roi=roi_t,
        echogenicity=echo,
        csa=csa if "csa" in wanted else None,
        thickness=thick,
        quality=_quality_result(q) if "quality" in wanted else None,
    )
    result._signature = None if q is None else q.signature
    if csa is not None and "csa" not in wanted:  # a contour only for echo_region="csa": tracked, not reported
        result._carried = result.model_copy(update={"csa": csa})
    return result


def _quality_result(q: quality_k.Quality) -> QualityResult:
    return QualityResult(**{k: getattr(q, k) for k in QualityResult.model_fields})


def _not_measured(frame, spacing, roi_t, q, state, seed, superficial_at_rc, deep_at_rc) -> FrameAnalysis:
    """The result of a frame without probe contact or featureless: quality only, the tracking
    state carried."""
    clicked = [what for what, at in (("seed", seed), ("superficial line click", superficial_at_rc),
                                     ("deep line click", deep_at_rc)) if at is not None]  # fmt: skip
    if clicked:
        if q.no_contact:
            raise InputError(
                f"{' and '.join(clicked)} on a frame without probe contact ({q.dark_fraction:.0%} of pixels dark)",
                reason="no_contact",
            )
        raise InputError(
            f"{' and '.join(clicked)} on a featureless frame (only {q.active_fraction:.1%} of its pixels "
            "differ from their neighbour: no image)",
            reason="featureless",
        )
    result = FrameAnalysis(shape=frame.shape, spacing_mm=spacing, roi=roi_t, quality=_quality_result(q))
    result._signature = q.signature
    result._carried = state
    return result
