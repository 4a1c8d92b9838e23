"""Numba kernels of the CSA search of :mod:`mmstream.kernels.csa` (steps 1, 2 and 4 of its method).

Polar unwrap around a centre (integral image, box means along ``N_ANGLES`` rays), the radial
feature maps (ray, radius, feature) and the score map (ray, radius) they give under sector weights,
candidate outline sums (features or scores), the softmax mass of the candidates agreeing with the
best one (confidence) and the coordinate-descent tracking search. Each kernel has an independent
plain-numpy twin in ``tests/twins/csa.py``. Axes (row, col), lengths in pixels; ray ``k`` points
along ``theta_k = 2*pi*k/N_ANGLES`` with ``d_row = sin(theta)``, ``d_col = cos(theta)``.
"""

import numpy as np
from numba import types as _nbt

from mmstream.kernels._jit import kernel

N_ANGLES = 64  # rays of the polar unwrap (multiple of 4: four sectors)
BOX_HALF = 3  # speckle box: (2*BOX_HALF+1)^2 pixels
N_NORM = 48  # z-score normalisation over radii 0..N_NORM-1 of every ray
N_FMAPS = 10  # feature maps of _polar_features
N_SECTORS = 4

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


# --------------------------------------------------------------------------------------------
# The tracking search.


TRACK_MOVES = 5  # track: the centre, then +-step along rows, then +-step along cols


@kernel(
    "int64(int64[:, ::1], int64, int64, float64, float64, float64, float64, int64, int64, float64[:, ::1],"
    " float64[::1], float64[::1], int64[::1], float64[::1], float64[:, ::1], float64[::1], float64[:, ::1],"
    " float64[:, ::1], float64[:, ::1], float64[::1], float64[::1], float64[::1])",
    readonly_args=(),
)
def _track_search(integ, r0, c0, pr, pc, step, move_cost, height, width, radii, sin_t, cos_t, sector, ray_weight,
                  w_sector, static_score, polar, scratch, score_map, scores, best_scores, best_rc):  # fmt: skip
    """Coordinate-descent search of the best (centre, candidate) around ``(pr, pc)``.

    Moves, each scored by :func:`_polar_sample` -> :func:`_polar_score` ->
    :func:`_candidate_scores` (the score ``feats @ w_sector.ravel() + static_score`` of the sector
    features of :func:`_candidate_features`): the centre; then ``+-step`` along rows, both from
    the centre; then ``+-step`` along cols, both from the best centre so far; each moved centre is
    clamped to ``[0, height-1] x [0, width-1]``. A centre's value is its maximum score less
    ``move_cost`` per pixel of its distance from ``(pr, pc)``; a move replaces the best only with
    a strictly higher value. ``integ`` (origin ``(r0, c0)``) must cover every box sample; ``polar``,
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
        value = scores[j_max] - move_cost * np.sqrt((cr - pr) ** 2 + (cc - pc) ** 2)
        if best_j < 0 or value > best:
            best = value
            best_j = j_max
            br = cr
            bc = cc
            for j in range(n_c):
                best_scores[j] = scores[j]
    best_rc[0] = br
    best_rc[1] = bc
    return best_j
