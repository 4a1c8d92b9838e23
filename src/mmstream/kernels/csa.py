"""Nerve cross-sectional area (CSA) from one click, and frame-to-frame tracking.

Method (and why)
----------------
The outline of a peripheral nerve in a transverse B-mode image is close to an ellipse; what is hard
is its *size*: the epineurial rim is discontinuous, fascicles inside are dark like the fat or the
vessels outside, and speckle produces edges everywhere. Free-form boundary searches (flood fill,
random walker, learned radial cost + closed minimal path) get the shape roughly right and the size
wrong. This module therefore searches a small family of ellipses directly and lets a learned linear
score pick the one whose rim is most nerve-like:

1. **Polar unwrap around the seed** (:func:`_box_integral`, :func:`_polar_sample`): ``N_ANGLES``
   rays, one sample per pixel of radius, each sample the mean of a ``(2*BOX_HALF+1)**2`` box
   (speckle reduction) read from an integral image of the region of interest. Pixels outside the
   image count as 0 (black, as the B-mode sector border).
2. **Radial feature maps** (:func:`_polar_features`): grey levels normalised by the disc around the
   seed (z-scores), step edges at two scales, the rim maximum just outside, the level further out,
   the running mean inside, and three 0/1 rim indicators (a local maximum of the profile, resp. of
   the step edge, within +-2 px; brightening outwards), each at every (angle, radius). The sector
   means of the indicators are rim completeness: the share of rays that see a rim at the outline.
3. **Ellipse candidates** centred on the seed (the seed is the most interior point, i.e. the
   centre of the inscribed circle, so the minor semi-axis is the seed's depth): minor semi-axis on
   a geometric grid, aspect ratio and tilt on small grids. :func:`_candidate_features` averages
   each feature map along the candidate outline in four sectors (right, bottom, left, top: the top
   and bottom rims are specular, the sides are not), and adds shape-prior terms.
4. **Learned conditional-logit score**: one weight per candidate feature, trained by
   ``tools/train_csa.py`` (softmax over the candidates of an image, soft target from the Dice of
   each candidate against the expert mask) on ``../shared/data/usgra-seg``; the weights are a few
   dozen floats written into :mod:`mmstream.kernels._csa_model` (the networks of step 5 are the
   data files, ``mmstream/data/csa_net_m*.npz``). Figures are
   reported k-fold cross-validated by image (see ``tools/train_csa.py`` and
   ``tools/accuracy_nerve.py --cv``).
   At run time the weights are applied first (:func:`_polar_score`): each ray's feature maps,
   dotted with its sector's weights, make a score map (ray, radius), and a candidate's score is
   that map summed along its outline (:func:`_candidate_scores`), the same number as its features
   times the weights, without storing the feature maps or the features (only the trainer needs
   them: :func:`_features_at`).
5. **Context from a small network** (first click only): :mod:`mmstream.kernels.csa_net` gives a
   nerve probability over the 384 px around the click, and ``N_NET_FEATURES`` numbers per
   candidate (soft Dice with that map, ...) that enter the same score with their own weights. The
   outline features see a rim; the network sees the whole structure, and mistakes the size less
   often (cross-validated gain: README).
6. The best candidate becomes a ``N_ANGLES``-vertex polygon.

:func:`track` re-runs steps 1-4 on the next frame around the previous centroid, on a few centre
offsets (coordinate descent) and with the candidates restricted to sizes and shapes near the
previous contour's (its ellipse is recovered from the polygon's second moments), so the per-frame
cost stays in the tenths of a millisecond. It does not run the network (the previous outline gives
the size) and has its own weights, fitted without the network features.

Conventions: axes are (row, col); ray ``k`` points along angle ``theta_k = 2*pi*k/N_ANGLES`` with
``d_row = sin(theta)``, ``d_col = cos(theta)`` (``k = N_ANGLES/4`` points down, towards +row).
Ellipse tilt ``phi`` is the angle of the major axis from the +col axis, towards +row. All lengths
are pixels; conversion to mm is the caller's business.

Code: the Numba kernels of steps 1, 2 and 4 and of the tracking search are in :mod:`._csa_polar`,
the candidate family and its scoring at a centre in :mod:`._csa_candidates`; this module holds the
public API and the polygon geometry of the outline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmstream.errors import InputError
from mmstream.kernels import csa_net
from mmstream.kernels._csa_candidates import (  # the constants not used here: re-exported
    CAND_PARAMS,
    CAND_RADII,
    CAND_STATIC,
    N_DYNAMIC,
    N_OUTLINE,
    R_MAX,
    TRACK_MOVE_COST,
    TRACK_SIZE_TOL,
    TRACK_STEP_PX,
    _RAY_WEIGHT,
    _TRACK_EXTRA_PX,
    _n_radii,
    _roi_integral,
    _score_at,
    _split_weights,
    _track_candidates,
    _workspace,
)
from mmstream.kernels._csa_polar import (  # the constants not used here: re-exported
    BOX_HALF,
    COS_T,
    N_ANGLES,
    N_FMAPS,
    N_NORM,
    SECTOR,
    SIN_T,
    _agreeing_mass,
    _track_search,
)
from mmstream.kernels._jit import kernel
from mmstream.kernels._points import check_point

__all__ = ["CsaContour", "segment_from_seed", "track"]


@dataclass(frozen=True)
class CsaContour:
    """A nerve outline in one frame.

    Attributes
    ----------
    contour_rc : ndarray of shape (K, 2), float64
        Closed polygon (the last vertex joins the first, it is not repeated), (row, col) pixel
        coordinates (pixel centres at integers).
    area_px : float
        Polygon (shoelace) area in px^2. The pixels whose centres fall inside the polygon (the
        rule of :mod:`mmstream.kernels.echogenicity`, also used for Dice in the accuracy tool) number
        the same up to the rasterisation of the outline.
    perimeter_px : float
        Polygon perimeter in px.
    centroid_rc : tuple of float
        Polygon (area) centroid, (row, col) px.
    confidence : float
        In [0, 1]: probability mass, under the softmax of the learned score over the candidates
        searched, of the candidates that agree with the returned outline (polar Dice >= 0.9).
        Near 1: the image singles out this size and shape; near 0: many different outlines score
        alike (weak or ambiguous rim). In :func:`track` the search is restricted to the
        neighbourhood of the previous outline and the score has no network terms (its own
        weights), so values are on another scale and run higher than after a click.
    """

    contour_rc: np.ndarray
    area_px: float
    perimeter_px: float
    centroid_rc: tuple[float, float]
    confidence: float


MIN_SIDE = 16  # smallest accepted image side (px)


def _check_image(image) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise InputError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim != 2:
        raise InputError(f"image must be 2-D (H, W) grey, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise InputError(f"image must be uint8, got {image.dtype}")
    if image.size == 0:
        raise InputError("image is empty")
    if min(image.shape) < MIN_SIDE:
        raise InputError(f"image {image.shape} is too small (each side must be >= {MIN_SIDE} px)")
    return np.ascontiguousarray(image)


def _check_point(point, shape: tuple[int, int], what: str) -> tuple[float, float]:
    r, c = check_point(point, what)
    if not (0.0 <= r <= shape[0] - 1 and 0.0 <= c <= shape[1] - 1):
        raise InputError(f"{what} {(r, c)} lies outside the {shape[0]}x{shape[1]} image")
    return r, c


# --------------------------------------------------------------------------------------------
# Outline geometry (the kernel has a twin in tests/twins/csa.py).


@kernel("void(float64[:, ::1], float64, float64, float64[::1])")
def _polygon_moments(poly, o_r, o_c, out):
    """Green's-theorem sums of a closed polygon, coordinates taken relative to ``(o_r, o_c)``.

    With ``x = col - o_c``, ``y = row - o_r``, vertex ``i`` joined to ``i+1`` (cyclic) and
    ``cr_i = x_i*y_{i+1} - x_{i+1}*y_i``: ``out = [sum cr, sum (y_i+y_{i+1}) cr,
    sum (x_i+x_{i+1}) cr, sum (y_i^2+y_i*y_{i+1}+y_{i+1}^2) cr, sum (x_i^2+x_i*x_{i+1}+x_{i+1}^2) cr,
    sum (x_i*y_{i+1}+2*x_i*y_i+2*x_{i+1}*y_{i+1}+x_{i+1}*y_i) cr, perimeter]``: twice the signed
    area, 6x and 12x (24x for the mixed term) the signed first and second moment integrals.
    """
    n = poly.shape[0]
    for j in range(7):
        out[j] = 0.0
    for i in range(n):
        y0 = poly[i, 0] - o_r
        x0 = poly[i, 1] - o_c
        y1 = poly[(i + 1) % n, 0] - o_r
        x1 = poly[(i + 1) % n, 1] - o_c
        cr = x0 * y1 - x1 * y0
        out[0] += cr
        out[1] += (y0 + y1) * cr
        out[2] += (x0 + x1) * cr
        out[3] += (y0 * y0 + y0 * y1 + y1 * y1) * cr
        out[4] += (x0 * x0 + x0 * x1 + x1 * x1) * cr
        out[5] += (x0 * y1 + 2.0 * x0 * y0 + 2.0 * x1 * y1 + x1 * y0) * cr
        out[6] += np.sqrt((x1 - x0) ** 2 + (y1 - y0) ** 2)


def _moments(contour: np.ndarray):
    """(area, perimeter, (cr, cc), (m_rr, m_cc, m_rc) central normalised second moments)."""
    out = np.empty(7)
    o_r, o_c = float(contour[0, 0]), float(contour[0, 1])
    _polygon_moments(contour, o_r, o_c, out)
    a2 = out[0]
    if a2 == 0.0:
        return 0.0, float(out[6]), (float(contour[:, 0].mean()), float(contour[:, 1].mean())), None
    yr, xc = out[1] / (3.0 * a2), out[2] / (3.0 * a2)
    m_rr = out[3] / (6.0 * a2) - yr * yr
    m_cc = out[4] / (6.0 * a2) - xc * xc
    m_rc = out[5] / (12.0 * a2) - yr * xc
    return 0.5 * abs(a2), float(out[6]), (o_r + yr, o_c + xc), (m_rr, m_cc, m_rc)


def _polygon_props(contour: np.ndarray) -> tuple[float, float, tuple[float, float]]:
    area, perim, centroid, _ = _moments(contour)
    return area, perim, centroid


def _confidence(scores: np.ndarray, radii: np.ndarray, best: int) -> float:
    return float(min(max(_agreeing_mass(scores, radii, best), 0.0), 1.0))


def _make_contour(center_r, center_c, radii_best, confidence) -> CsaContour:
    """The outline of radii ``radii_best`` (a centred ellipse: r(theta + pi) = r(theta)) around the
    centre. Its centroid is the centre itself: the polygon's moments give it only to ~1e-14, which
    put a centre on the image border (0 or H - 1) just outside, and the next frame refused it."""
    contour = np.empty((N_ANGLES, 2), np.float64)
    contour[:, 0] = center_r + radii_best * SIN_T
    contour[:, 1] = center_c + radii_best * COS_T
    area, perim, _ = _polygon_props(contour)
    return CsaContour(contour, area, perim, (float(center_r), float(center_c)), confidence)


def _segment(image, seed_rc, weights, nets: tuple[csa_net.NetParams, ...]) -> CsaContour:
    """One click: ``weights`` are the ``N_DYNAMIC + N_STATIC`` outline weights then
    ``N_NET_FEATURES`` weights of the features of the network ensemble ``nets``
    (:mod:`mmstream.kernels.csa_net`)."""
    ws = _workspace()
    scores = _score_at(image, seed_rc[0], seed_rc[1], weights, ws)
    scores += csa_net.net_features(image, seed_rc, CAND_RADII, SIN_T, COS_T, nets) @ weights[N_OUTLINE:]
    best = int(np.argmax(scores))
    conf = _confidence(scores, CAND_RADII, best)
    return _make_contour(seed_rc[0], seed_rc[1], CAND_RADII[best], conf)


def _click_weights() -> np.ndarray:
    from mmstream.kernels._csa_model import CLICK_WEIGHTS

    return CLICK_WEIGHTS


def _track_weights() -> np.ndarray:
    from mmstream.kernels._csa_model import TRACK_WEIGHTS

    return TRACK_WEIGHTS


def segment_from_seed(image: np.ndarray, seed_rc: tuple[float, float]) -> CsaContour:
    """Outline the nerve around one click.

    Parameters
    ----------
    image : ndarray of shape (H, W), uint8
        Grey B-mode frame (H, W >= 16).
    seed_rc : (row, col)
        Click inside the nerve, in pixels, ideally at its most interior point (the centre of the
        largest inscribed circle): the outline is centred on it.

    Returns
    -------
    CsaContour
        Polygon of ``N_ANGLES`` vertices with its area (px^2), perimeter (px), centroid and a
        confidence in [0, 1].

    Raises
    ------
    InputError
        Wrong type, dtype or dimensions, empty or tiny image, seed not finite or outside the image.
    ReadError
        An installed network file (``mmstream/data/csa_net_m*.npz``) is unreadable or damaged.
    """
    image = _check_image(image)
    seed = _check_point(seed_rc, image.shape, "seed_rc")
    return _segment(image, seed, _click_weights(), csa_net.shipped_nets())


def _ellipse_of(contour: np.ndarray) -> tuple[float, float, float]:
    """(b, aspect, phi_deg) of the ellipse with the polygon's second moments."""
    _, _, _, m = _moments(np.ascontiguousarray(contour, dtype=np.float64))
    if m is None:
        raise InputError("previous contour has zero area")
    m_rr, m_cc, m_rc = m
    tr = 0.5 * (m_cc + m_rr)
    dt = np.sqrt(max(0.25 * (m_cc - m_rr) ** 2 + m_rc**2, 0.0))
    l1, l2 = tr + dt, max(tr - dt, 1e-12)
    # for an ellipse of semi-axes (A, B) the normalised second moments are A^2/4, B^2/4
    big, small = 2.0 * np.sqrt(l1), 2.0 * np.sqrt(l2)
    phi = 0.5 * np.degrees(np.arctan2(2.0 * m_rc, m_cc - m_rr))
    return float(small), float(big / small), float(phi)


def _track(image, previous: CsaContour, weights) -> CsaContour:
    ws = _workspace()
    prev = _ellipse_of(previous.contour_rc)
    cand, shape_cost = _track_candidates(prev)
    radii = CAND_RADII[cand]
    n_out, n_r = _n_radii(radii)
    pr, pc = previous.centroid_rc
    integ, r0, c0 = _roi_integral(image, pr, pc, n_r, _TRACK_EXTRA_PX, ws)
    polar = ws.polar[: N_ANGLES * n_r].reshape(N_ANGLES, n_r)
    scratch, score_map = ws.score_views(n_out)
    scores, best_scores = np.empty(len(cand)), np.empty(len(cand))
    best_rc = np.empty(2)
    h, w = image.shape
    w_sector, static_score = _split_weights(weights, cand)
    static_score -= shape_cost
    j = _track_search(integ, r0, c0, float(pr), float(pc), TRACK_STEP_PX, TRACK_MOVE_COST, h, w, radii, SIN_T,
                      COS_T, SECTOR, _RAY_WEIGHT, w_sector, static_score, polar, scratch, score_map, scores,
                      best_scores, best_rc)  # fmt: skip
    conf = _confidence(best_scores, radii, j)
    return _make_contour(best_rc[0], best_rc[1], radii[j], conf)


def track(image: np.ndarray, previous: CsaContour) -> CsaContour:
    """Follow the nerve outlined in the previous frame of the same stream into ``image``.

    The outline stays an ellipse centred on the search centre. The centre starts at
    ``previous.centroid_rc`` and moves by ``TRACK_STEP_PX`` along rows, then along cols, where the
    learned score is higher (5 centres per frame: motion up to ~2 px per axis per frame is followed
    at once, faster motion over several frames). Candidates are restricted to a minor semi-axis
    within ``TRACK_SIZE_TOL`` of the previous outline's and the neighbouring aspect ratios and tilts
    (the previous ellipse comes from the polygon's second moments). The previous outline is also a
    prior: each candidate's score loses ``TRACK_SHAPE_COST`` per unit of its mean absolute log
    radius ratio to the previous ellipse, each centre ``TRACK_MOVE_COST`` per pixel moved, so an
    unchanged image keeps the outline, and size or position change only where the image does.

    Parameters
    ----------
    image : ndarray of shape (H, W), uint8
        Next grey B-mode frame.
    previous : CsaContour
        Result of :func:`segment_from_seed` or :func:`track` on the previous frame.

    Returns
    -------
    CsaContour

    Raises
    ------
    InputError
        Bad image (as :func:`segment_from_seed`), ``previous`` not a CsaContour, degenerate
        previous contour, or previous centroid outside the image.
    """
    image = _check_image(image)
    if not isinstance(previous, CsaContour):
        raise InputError(f"previous must be a CsaContour, got {type(previous).__name__}")
    poly = np.asarray(previous.contour_rc, dtype=np.float64)
    if poly.ndim != 2 or poly.shape[1] != 2 or poly.shape[0] < 3 or not np.isfinite(poly).all():
        raise InputError("previous.contour_rc must be a finite (K >= 3, 2) polygon")
    _check_point(previous.centroid_rc, image.shape, "previous.centroid_rc")
    if not previous.area_px > 0:
        raise InputError("previous contour has zero area")
    return _track(image, previous, _track_weights())
