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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import types as _nbt

from mmstream.errors import InputError
from mmstream.kernels import csa_net
from mmstream.kernels._jit import kernel
from mmstream.kernels._points import check_point

__all__ = ["CsaContour", "segment_from_seed", "track"]

# --------------------------------------------------------------------------------------------
# Constants shared by the kernels, the trainer and the tests.
N_ANGLES = 64  # rays of the polar unwrap (multiple of 4: four sectors)
BOX_HALF = 3  # speckle box: (2*BOX_HALF+1)^2 pixels
R_MAX = 160  # largest candidate radius (px)
MARGIN = 12  # radial samples beyond the largest candidate radius needed by the feature maps
N_NORM = 48  # z-score normalisation over radii 0..N_NORM-1 of every ray
N_FMAPS = 10  # feature maps of _polar_features
N_SECTORS = 4
B_GRID = 3.0 * 1.06 ** np.arange(62)  # minor semi-axis (px), 3..110
ASPECT_GRID = np.array([1.0, 1.2, 1.45, 1.7, 2.0, 2.35, 2.75, 3.2, 3.8])
PHI_GRID_DEG = np.array([-30.0, -15.0, 0.0, 15.0, 30.0])
N_STATIC = 6  # shape-prior features per candidate

THETA = 2.0 * np.pi * np.arange(N_ANGLES) / N_ANGLES
SIN_T = np.ascontiguousarray(np.sin(THETA))
COS_T = np.ascontiguousarray(np.cos(THETA))
SECTOR = ((np.arange(N_ANGLES) + N_ANGLES // 8) // (N_ANGLES // 4) % 4).astype(np.int64)


# --------------------------------------------------------------------------------------------
# Private kernels (each has an independent twin in tests/twins/csa.py).


@kernel(
    "void(uint8[:, ::1], int64, int64, int64[:, ::1])",
    _nbt.void(_nbt.Array(_nbt.uint8, 2, "C", readonly=True), _nbt.int64, _nbt.int64, _nbt.int64[:, ::1]),
)
def _box_integral(image, r0, c0, out):
    """Integral image of ``image[r0:r0+h, c0:c0+w]`` with ``(h+1, w+1) = out.shape``.

    ``out[i, j]`` is the sum of the ROI pixels with local row < i and local col < j; ROI pixels
    outside the image count as 0.
    """
    h = out.shape[0] - 1
    w = out.shape[1] - 1
    height = image.shape[0]
    width = image.shape[1]
    for j in range(w + 1):
        out[0, j] = 0
    for i in range(h):
        out[i + 1, 0] = 0
        r = r0 + i
        acc = 0
        if r >= 0 and r < height:
            lo = min(max(-c0, 0), w)
            hi = max(min(width - c0, w), lo)
            for j in range(lo):
                out[i + 1, j + 1] = out[i, j + 1]
            row = image[r]
            for j in range(lo, hi):
                acc += np.int64(row[c0 + j])  # widen before summing (also without the JIT)
                out[i + 1, j + 1] = out[i, j + 1] + acc
            for j in range(hi, w):
                out[i + 1, j + 1] = out[i, j + 1] + acc
        else:
            for j in range(w):
                out[i + 1, j + 1] = out[i, j + 1]


@kernel(
    "void(int64[:, ::1], int64, int64, float64, float64, float64[::1], float64[::1], int64,"
    " float64[:, ::1])"
)
def _polar_sample(integ, r0, c0, center_r, center_c, sin_t, cos_t, half, out):
    """Polar unwrap: ``out[k, i]`` = box mean around ray ``k`` at radius ``i`` (px).

    The sample pixel is ``(floor(center_r + i*sin_t[k] + 0.5), floor(center_c + i*cos_t[k] + 0.5))``;
    the box mean divides the sum of the ``(2*half+1)**2`` box (pixels outside the ROI of ``integ``,
    whose origin is ``(r0, c0)``, count as 0) by the full box size.
    """
    hh = integ.shape[0] - 1
    ww = integ.shape[1] - 1
    inv = 1.0 / ((2 * half + 1) * (2 * half + 1))
    for k in range(out.shape[0]):
        s = sin_t[k]
        c = cos_t[k]
        for i in range(out.shape[1]):
            pr = int(np.floor(center_r + i * s + 0.5)) - r0
            pc = int(np.floor(center_c + i * c + 0.5)) - c0
            a0 = min(max(pr - half, 0), hh)
            a1 = min(max(pr + half + 1, 0), hh)
            b0 = min(max(pc - half, 0), ww)
            b1 = min(max(pc + half + 1, 0), ww)
            tot = integ[a1, b1] - integ[a0, b1] - integ[a1, b0] + integ[a0, b0]
            out[k, i] = tot * inv


@kernel("UniTuple(float64, 2)(float64[:, ::1], int64)")
def _polar_stats(polar, n_norm):
    """``(mu, 1 / sd)``: mean and inverse population standard deviation (``sd`` floored at 1 grey
    level) of ``polar[:, :n_norm]``, the z-score normalisation of the feature maps."""
    n_k = polar.shape[0]
    s1 = 0.0
    s2 = 0.0
    for k in range(n_k):
        for i in range(n_norm):
            v = polar[k, i]
            s1 += v
            s2 += v * v
    cnt = n_k * n_norm
    mu = s1 / cnt
    var = s2 / cnt - mu * mu
    return mu, 1.0 / np.sqrt(max(var, 1.0))


@kernel("void(float64[:, ::1], int64, float64, float64, float64[:, ::1])")
def _ray_features(polar, k, mu, inv, out):
    """The feature maps of ray ``k`` (see :func:`_polar_features`): ``out[i, f]`` for radius
    ``i < out.shape[0]``, z-scores from ``(polar - mu) * inv``."""
    n = polar.shape[1]
    n_out = out.shape[0]
    run = 0.0
    # sliding sums of the 8 samples after / before i (indices clipped to the ray)
    so = 0.0
    si = 0.0
    for j in range(1, 9):
        so += polar[k, min(j, n - 1)]
        si += polar[k, 0]
    nxt = 1
    last_peak = -3
    last_step = -3
    d_a = polar[k, min(2, n - 1)] - polar[k, 0]
    d_b = polar[k, min(3, n - 1)] - polar[k, 0]
    d_c = polar[k, min(4, n - 1)] - polar[k, 0]
    for i in range(n_out):
        run += (polar[k, i] - mu) * inv
        out[i, 6] = run / (i + 1)
        out[i, 0] = (polar[k, min(i + 3, n - 1)] - mu) * inv
        out[i, 1] = (polar[k, max(i - 3, 0)] - mu) * inv
        out[i, 2] = (polar[k, min(i + 2, n - 1)] - polar[k, max(i - 2, 0)]) * inv
        out[i, 3] = (so - si) * (inv / 8.0)
        so += polar[k, min(i + 9, n - 1)] - polar[k, min(i + 1, n - 1)]
        si += polar[k, i] - polar[k, max(i - 8, 0)]
        m = polar[k, min(i, n - 1)]
        for j in range(1, 7):
            m = max(m, polar[k, min(i + j, n - 1)])
        out[i, 4] = (m - mu) * inv
        out[i, 5] = (polar[k, min(i + 10, n - 1)] - mu) * inv
        d_i = polar[k, min(i + 2, n - 1)] - polar[k, max(i - 2, 0)]
        out[i, 8] = 1.0 if d_i > 0.0 else 0.0
        # local maxima at j = 1..min(i+2, N-2), each tested once; remember the last of each kind
        lim = min(i + 2, n - 2)
        while nxt <= lim:
            if polar[k, nxt - 1] <= polar[k, nxt] and polar[k, nxt] > polar[k, nxt + 1]:
                last_peak = nxt
            if d_b > 0.0 and d_a <= d_b and d_b > d_c:
                last_step = nxt
            d_a = d_b  # slide (d[nxt-1], d[nxt], d[nxt+1]) one sample outwards
            d_b = d_c
            d_c = polar[k, min(nxt + 4, n - 1)] - polar[k, max(nxt, 0)]
            nxt += 1
        out[i, 7] = 1.0 if last_peak >= i - 2 else 0.0
        out[i, 9] = 1.0 if last_step >= i - 2 else 0.0


@kernel("void(float64[:, ::1], int64, float64[:, :, ::1])")
def _polar_features(polar, n_norm, out):
    """Radial feature maps ``out[k, i, f]`` for radius ``i < out.shape[1]`` from ``polar (K, N)``
    (features last: a candidate reads all of them at one (ray, radius)).

    With ``z = (polar - mu) / sd`` (``mu``, ``sd``: mean and population standard deviation of
    ``polar[:, :n_norm]``, ``sd`` floored at 1 grey level) and ``zc[j] = z[k, min(max(j, 0), N-1)]``:

    0. ``zc[i+3]`` (outside level)
    1. ``zc[i-3]`` (inside level)
    2. ``zc[i+2] - zc[i-2]`` (fine step edge)
    3. mean ``zc[i+1..i+8]`` - mean ``zc[i-8..i-1]`` (coarse step edge)
    4. max ``zc[i..i+6]`` (bright rim just outside)
    5. ``zc[i+10]`` (level further out)
    6. mean ``z[k, 0..i]`` (running mean inside)
    7. 1.0 if a local maximum of the profile lies within +-2 px: some ``j = min(max(i+o, 0), N-1)``,
       ``o`` in -2..2, with ``1 <= j <= N-2`` and ``polar[k, j-1] <= polar[k, j] > polar[k, j+1]``;
       else 0.0 (rim present at this radius)
    8. 1.0 if ``d[i] > 0`` else 0.0, with ``d[j] = polar[k, min(j+2, N-1)] - polar[k, max(j-2, 0)]``
       (brightening outwards)
    9. 1.0 if some ``j`` as in 7 is a positive local maximum of ``d``: ``1 <= j <= N-2``,
       ``d[j] > 0`` and ``d[j-1] <= d[j] > d[j+1]``; else 0.0 (step edge present at this radius)
    """
    mu, inv = _polar_stats(polar, n_norm)
    for k in range(polar.shape[0]):
        _ray_features(polar, k, mu, inv, out[k])


@kernel("void(float64[:, ::1], int64, float64[:, ::1], int64[::1], float64[::1], float64[:, ::1], float64[:, ::1])")
def _polar_score(polar, n_norm, w_sector, sector, ray_weight, scratch, out):
    """Score map: ``out[k, i] = ray_weight[k] * sum_f w_sector[sector[k], f] * fmaps[k, i, f]``
    for radius ``i < out.shape[1]``, with ``fmaps`` the maps of :func:`_polar_features` (computed
    ray by ray into ``scratch``, shape ``(out.shape[1], F)``, never stored whole). A candidate's
    dynamic score is the sum of this map along its outline (:func:`_candidate_scores`): the same as
    its sector-mean features (:func:`_candidate_features`) times ``w_sector.ravel()``."""
    mu, inv = _polar_stats(polar, n_norm)
    n_f = scratch.shape[1]
    for k in range(polar.shape[0]):
        _ray_features(polar, k, mu, inv, scratch)
        sec = sector[k]
        rw = ray_weight[k]
        for i in range(out.shape[1]):
            acc = 0.0
            for f in range(n_f):
                acc += scratch[i, f] * w_sector[sec, f]
            out[k, i] = acc * rw


@kernel("void(float64[:, ::1], float64[:, ::1], float64[::1], float64[::1])", readonly_args=())
def _candidate_scores(score_map, radii, static_score, out):
    """``out[c] = static_score[c] + sum_k score_map[k, i]``, ``i`` the radius index of candidate
    ``c`` on ray ``k`` as in :func:`_candidate_features`."""
    n_r = score_map.shape[1]
    for c in range(radii.shape[0]):
        acc = static_score[c]
        for k in range(radii.shape[1]):
            acc += score_map[k, min(max(int(np.floor(radii[c, k] + 0.5)), 1), n_r - 1)]
        out[c] = acc


@kernel("void(float64[:, :, ::1], float64[:, ::1], int64[::1], float64[::1], float64[:, ::1])")
def _candidate_features(fmaps, radii, sector, ray_weight, out):
    """Sector means of the feature maps along each candidate outline.

    ``radii[c, k]`` is candidate ``c``'s radius on ray ``k``; it is read at radius index
    ``i = min(max(floor(radii[c, k] + 0.5), 1), fmaps.shape[1] - 1)``.
    ``out[c, s * F + f]`` = sum over the rays ``k`` of sector ``s`` of
    ``ray_weight[k] * fmaps[k, i, f]`` (``ray_weight = 1 / rays in the sector``: a sector mean).
    """
    n_k = fmaps.shape[0]
    n_r = fmaps.shape[1]
    n_f = fmaps.shape[2]
    for c in range(radii.shape[0]):
        for j in range(out.shape[1]):
            out[c, j] = 0.0
        for k in range(n_k):
            i = min(max(int(np.floor(radii[c, k] + 0.5)), 1), n_r - 1)
            base = sector[k] * n_f
            w = ray_weight[k]
            for f in range(n_f):
                out[c, base + f] += fmaps[k, i, f] * w


@kernel("float64(float64[::1], float64[:, ::1], int64)", readonly_args=())
def _agreeing_mass(scores, radii, best):
    """Softmax mass of the candidates that agree with candidate ``best``: the sum of
    ``exp(scores[c] - max) / sum exp(scores - max)`` over the ``c`` whose polar Dice with ``best``,
    ``2 * sum_k min(radii[c, k], radii[best, k])**2 / (sum_k radii[c, k]**2 + sum_k radii[best, k]**2)``,
    is >= 0.9."""
    n_c = radii.shape[0]
    n_k = radii.shape[1]
    top = scores[0]
    for c in range(1, n_c):
        top = max(top, scores[c])
    sb = 0.0
    for k in range(n_k):
        sb += radii[best, k] * radii[best, k]
    total = 0.0
    agree = 0.0
    for c in range(n_c):
        e = np.exp(scores[c] - top)
        total += e
        inter = 0.0
        sc = 0.0
        for k in range(n_k):
            m = min(radii[c, k], radii[best, k])
            inter += m * m
            sc += radii[c, k] * radii[c, k]
        if 2.0 * inter / (sc + sb) >= 0.9:
            agree += e
    return agree / total


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


# --------------------------------------------------------------------------------------------
# Candidate ellipses (fixed tables built once at import).


def _ellipse_radii(b: np.ndarray, aspect: np.ndarray, phi_deg: np.ndarray) -> np.ndarray:
    """Radius along every ray of ellipses centred on the seed: shape (len(b), N_ANGLES)."""
    b = np.asarray(b, np.float64)[:, None]
    a = b * np.asarray(aspect, np.float64)[:, None]
    psi = THETA[None, :] - np.radians(np.asarray(phi_deg, np.float64))[:, None]
    return a * b / np.sqrt((b * np.cos(psi)) ** 2 + (a * np.sin(psi)) ** 2)


def _static_features(params: np.ndarray) -> np.ndarray:
    """Shape-prior features of candidates ``params (n, 3) = (b, aspect, phi_deg)``."""
    lb = np.log(params[:, 0] / 20.0)
    la = np.log(params[:, 1])
    ph = params[:, 2] / 30.0
    return np.stack([lb, lb * lb, la, la * la, ph * ph, lb * la], axis=1)


def _build_candidates() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    b, asp, phi = np.meshgrid(B_GRID, ASPECT_GRID, PHI_GRID_DEG, indexing="ij")
    params = np.stack([b.ravel(), asp.ravel(), phi.ravel()], axis=1)
    params = params[params[:, 0] * params[:, 1] <= R_MAX]
    radii = np.ascontiguousarray(_ellipse_radii(params[:, 0], params[:, 1], params[:, 2]))
    return params, radii, np.ascontiguousarray(_static_features(params))


CAND_PARAMS, CAND_RADII, CAND_STATIC = _build_candidates()
_RAY_WEIGHT = np.ascontiguousarray(
    1.0 / np.bincount(SECTOR, minlength=N_SECTORS)[SECTOR].astype(np.float64)
)
N_DYNAMIC = N_SECTORS * N_FMAPS
N_OUTLINE = N_DYNAMIC + N_STATIC  # weights of the outline score (tracking uses only these)


# --------------------------------------------------------------------------------------------
# The tracking search.


TRACK_MOVES = 5  # track: the centre, then +-step along rows, then +-step along cols


@kernel(
    "int64(int64[:, ::1], int64, int64, float64, float64, float64, int64, int64, float64[:, ::1],"
    " float64[::1], float64[::1], int64[::1], float64[::1], float64[:, ::1], float64[::1], float64[:, ::1],"
    " float64[:, ::1], float64[:, ::1], float64[::1], float64[::1], float64[::1])",
    readonly_args=(),
)
def _track_search(integ, r0, c0, pr, pc, step, height, width, radii, sin_t, cos_t, sector, ray_weight, w_sector,
                  static_score, polar, scratch, score_map, scores, best_scores, best_rc):  # fmt: skip
    """Coordinate-descent search of the best (centre, candidate) around ``(pr, pc)``.

    Moves, each scored by :func:`_polar_sample` -> :func:`_polar_score` ->
    :func:`_candidate_scores` (the score ``feats @ w_sector.ravel() + static_score`` of the sector
    features of :func:`_candidate_features`): the centre; then ``+-step`` along rows, both from
    the centre; then ``+-step`` along cols, both from the best centre so far; each moved centre is
    clamped to ``[0, height-1] x [0, width-1]``. A move replaces the best only with a strictly
    higher maximum score. ``integ`` (origin ``(r0, c0)``) must cover every box sample; ``polar``,
    ``scratch``, ``score_map``, ``scores`` are scratch. Writes the best centre to ``best_rc``, its
    candidates' scores to ``best_scores``; returns the index of the best candidate.
    """
    n_c = radii.shape[0]
    best = -np.inf
    best_j = -1
    br = pr
    bc = pc
    base_r = pr
    base_c = pc
    for move in range(TRACK_MOVES):
        if move == 1 or move == 3:
            base_r = br
            base_c = bc
        cr = base_r
        cc = base_c
        if move == 1 or move == 2:
            cr = min(max(cr + (step if move == 2 else -step), 0.0), height - 1.0)
        elif move == 3 or move == 4:
            cc = min(max(cc + (step if move == 4 else -step), 0.0), width - 1.0)
        _polar_sample(integ, r0, c0, cr, cc, sin_t, cos_t, BOX_HALF, polar)
        _polar_score(polar, N_NORM, w_sector, sector, ray_weight, scratch, score_map)
        _candidate_scores(score_map, radii, static_score, scores)
        j_max = 0
        for j in range(n_c):
            if scores[j] > scores[j_max]:
                j_max = j
        if best_j < 0 or scores[j_max] > best:
            best = scores[j_max]
            best_j = j_max
            br = cr
            bc = cc
            for j in range(n_c):
                best_scores[j] = scores[j]
    best_rc[0] = br
    best_rc[1] = bc
    return best_j


# --------------------------------------------------------------------------------------------
# Public API.


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


class _Workspace:
    """Reusable buffers (one per thread) so tracking allocates only its outputs."""

    def __init__(self) -> None:
        n_r = R_MAX + MARGIN + 2
        side = 2 * (n_r + BOX_HALF + 1 + _TRACK_EXTRA_PX) + 3  # the largest ROI of _roi_integral
        self.integ = np.empty(side * side, np.int64)
        self.polar = np.empty(N_ANGLES * n_r, np.float64)
        self.score_map = np.empty(N_ANGLES * n_r, np.float64)
        self.scratch = np.empty(n_r * N_FMAPS, np.float64)  # one ray's feature maps
        self.fmaps = self.feats = None  # all feature maps and features: the trainer's, made on demand

    def score_views(self, n_out: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scratch (n_out, N_FMAPS), score_map (N_ANGLES, n_out))`` of :func:`_polar_score`."""
        return (self.scratch[: n_out * N_FMAPS].reshape(n_out, N_FMAPS),
                self.score_map[: N_ANGLES * n_out].reshape(N_ANGLES, n_out))  # fmt: skip


import functools  # noqa: E402
import threading  # noqa: E402

_TLS = threading.local()


def _workspace() -> _Workspace:
    ws = getattr(_TLS, "ws", None)
    if ws is None:
        ws = _TLS.ws = _Workspace()
    return ws


def _roi_integral(image, center_r, center_c, n_r, extra, ws):
    """Integral image (workspace view) of the ROI holding every box sample of radius < n_r."""
    reach = n_r + BOX_HALF + 1 + extra
    h, w = image.shape
    r0 = max(int(np.floor(center_r)) - reach, 0)
    c0 = max(int(np.floor(center_c)) - reach, 0)
    r1 = min(int(np.floor(center_r)) + reach + 2, h)
    c1 = min(int(np.floor(center_c)) + reach + 2, w)
    integ = ws.integ[: (r1 - r0 + 1) * (c1 - c0 + 1)].reshape(r1 - r0 + 1, c1 - c0 + 1)
    _box_integral(image, r0, c0, integ)
    return integ, r0, c0


def _n_radii(radii) -> tuple[int, int]:
    n_out = int(np.ceil(radii.max())) + 2
    return n_out, max(n_out + MARGIN, N_NORM)


def _polar_at(image, center_r, center_c, n_r, ws) -> np.ndarray:
    """Polar unwrap ``(N_ANGLES, n_r)`` (a view into the workspace) around a centre."""
    integ, r0, c0 = _roi_integral(image, center_r, center_c, n_r, 0, ws)
    polar = ws.polar[: N_ANGLES * n_r].reshape(N_ANGLES, n_r)
    _polar_sample(integ, r0, c0, center_r, center_c, SIN_T, COS_T, BOX_HALF, polar)
    return polar


def _features_at(image, center_r, center_c, radii, ws) -> np.ndarray:
    """Dynamic candidate features (a view into the workspace) of outlines ``radii`` at a centre
    (the design matrix of ``tools/train_csa.py``)."""
    n_out, n_r = _n_radii(radii)
    polar = _polar_at(image, center_r, center_c, n_r, ws)
    if ws.fmaps is None:
        ws.fmaps = np.empty(N_FMAPS * ws.polar.size, np.float64)
        ws.feats = np.empty(len(CAND_PARAMS) * N_DYNAMIC, np.float64)
    fmaps = ws.fmaps[: N_ANGLES * n_out * N_FMAPS].reshape(N_ANGLES, n_out, N_FMAPS)
    _polar_features(polar, N_NORM, fmaps)
    feats = ws.feats[: len(radii) * N_DYNAMIC].reshape(len(radii), N_DYNAMIC)
    _candidate_features(fmaps, radii, SECTOR, _RAY_WEIGHT, feats)
    return feats


def _split_weights(weights: np.ndarray, cand=slice(None)) -> tuple[np.ndarray, np.ndarray]:
    """``(w_sector (N_SECTORS, N_FMAPS), static score of the candidates cand)`` of a weight vector
    (its first ``N_DYNAMIC + N_STATIC`` entries)."""
    w_static = weights[N_DYNAMIC : N_DYNAMIC + N_STATIC]
    return weights[:N_DYNAMIC].reshape(N_SECTORS, N_FMAPS), CAND_STATIC[cand] @ w_static


def _score_at(image, center_r, center_c, weights, ws):
    """Outline score of every candidate centred at a point: ``_features_at(...) @ weights[:N_DYNAMIC]
    + CAND_STATIC @ weights[N_DYNAMIC:N_OUTLINE]``, summed along each outline from the score map."""
    n_out, n_r = _n_radii(CAND_RADII)
    polar = _polar_at(image, center_r, center_c, n_r, ws)
    scratch, score_map = ws.score_views(n_out)
    w_sector, static_score = _split_weights(weights)
    _polar_score(polar, N_NORM, w_sector, SECTOR, _RAY_WEIGHT, scratch, score_map)
    scores = np.empty(len(CAND_RADII))
    _candidate_scores(score_map, CAND_RADII, static_score, scores)
    return scores


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
    contour = np.empty((N_ANGLES, 2), np.float64)
    contour[:, 0] = center_r + radii_best * SIN_T
    contour[:, 1] = center_c + radii_best * COS_T
    area, perim, centroid = _polygon_props(contour)
    return CsaContour(contour, area, perim, centroid, confidence)


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


TRACK_SIZE_TOL = 0.13  # track: minor semi-axis within +-13 % of the previous one
TRACK_STEP_PX = 2.0  # track: centre offsets searched (0, +-step along rows and cols)
_TRACK_EXTRA_PX = int(np.ceil(TRACK_STEP_PX)) + 1  # track: ROI margin for the moved centres


def _track_candidates(prev: tuple[float, float, float]) -> np.ndarray:
    b, asp, phi = prev
    ia = int(np.argmin(np.abs(np.log(ASPECT_GRID / asp))))
    ip = int(np.argmin(np.abs(PHI_GRID_DEG - np.clip(phi, -90.0, 90.0))))
    return _track_candidates_cached(round(float(b), 3), ia, ip)


@functools.lru_cache(maxsize=256)
def _track_candidates_cached(b: float, ia: int, ip: int) -> np.ndarray:
    asp = ASPECT_GRID[ia]
    keep = (
        (np.abs(np.log(CAND_PARAMS[:, 0] / b)) <= np.log1p(TRACK_SIZE_TOL))
        & np.isin(CAND_PARAMS[:, 1], ASPECT_GRID[max(ia - 1, 0) : ia + 2])
        & np.isin(CAND_PARAMS[:, 2], PHI_GRID_DEG[max(ip - 1, 0) : ip + 2])
    )
    idx = np.flatnonzero(keep)
    if idx.size == 0:  # previous outline outside the searched family: nearest candidates
        d = np.abs(np.log(CAND_PARAMS[:, 0] / b)) + np.abs(np.log(CAND_PARAMS[:, 1] / asp))
        idx = np.argsort(d, kind="stable")[:9]
    idx.flags.writeable = False
    return idx


def _track(image, previous: CsaContour, weights) -> CsaContour:
    ws = _workspace()
    cand = _track_candidates(_ellipse_of(previous.contour_rc))
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
    j = _track_search(integ, r0, c0, float(pr), float(pc), TRACK_STEP_PX, h, w, radii, SIN_T, COS_T, SECTOR,
                      _RAY_WEIGHT, w_sector, static_score, polar, scratch, score_map, scores, best_scores,
                      best_rc)  # fmt: skip
    conf = _confidence(best_scores, radii, j)
    return _make_contour(best_rc[0], best_rc[1], radii[j], conf)


def track(image: np.ndarray, previous: CsaContour) -> CsaContour:
    """Follow the nerve outlined in the previous frame of the same stream into ``image``.

    The outline stays an ellipse centred on the search centre. The centre starts at
    ``previous.centroid_rc`` and moves by ``TRACK_STEP_PX`` along rows, then along cols, where the
    learned score is higher (5 centres per frame: motion up to ~2 px per axis per frame is followed
    at once, faster motion over several frames). Candidates are restricted to a minor semi-axis
    within ``TRACK_SIZE_TOL`` of the previous outline's and the neighbouring aspect ratios and tilts
    (the previous ellipse comes from the polygon's second moments).

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
