"""Candidate aponeurosis lines and the choice of the pair (steps 4-5 of the method of
:mod:`mmstream.kernels.thickness`).

:func:`_line_candidates` refines the peaks of the line search (:mod:`._thickness_search`) into band
paths, describes each line by :data:`LINE_FEATURES` and each superficial/deep pair by
:data:`PAIR_FEATURES` (dimensionless: relative strength, depth, grey level of the bands beside a
line, coherence, texture of the structure tensor, ...), and :func:`_choose_pair` takes the pair with
the highest linear score under the weights of :mod:`._thickness_model`, which
``tools/train_thickness.py`` fits on these same features.
"""

import numpy as np

from mmstream.kernels._thickness_model import PAIR_MODEL
from mmstream.kernels._thickness_search import (
    BIN_COLS,
    MAX_SLOPE,
    MAX_STEP,
    STEP_FINE,
    _band_path,
    _line_peaks,
    _line_search,
    _peak_through,
    _structure,
)

BAND_HALF = 12  # rows, half-width of the refinement band around a chosen line
GUIDE_HALF = 6  # rows, half-width of the band around a clicked line
LINE_GAP = 2 * STEP_FINE  # rows: with a click, the other line keeps at least this far on its side in every bin
NEAR_BAND = 0.035  # fraction of the region height: bands beside a candidate line (features)
FAR_BAND = 0.09
SUP_MAX_DEPTH = 0.45  # fraction of the region height: deepest superficial candidate (observers' lines: <= 0.33)
N_PEAKS = 12  # candidate lines per edge sign
DEEP_MIN_GAP = 0.2  # fraction of the region height: least superficial-to-deep distance (line search)
COHERENT_EDGE = 3.0  # grey levels: a deep path point on at least this step counts as coherent
END_BINS = 8  # the end coherence of a line is read over 1/END_BINS of its bins at each end
GRAD_STEP = 2  # pixels: central differences I[r, c + d] - I[r, c - d] of the texture tensor
PAIR_MARGIN = 4  # rows: the band between a pair's lines starts and ends this far inside them

LINE_FEATURES = (
    "strength", "coarse_strength", "depth", "depth_rank", "near_above", "near_below", "far_above", "far_below",
    "coherence", "strong_deeper", "tilt", "rule", "oblique_above", "oblique_below", "end_coherence",
    "oblique_ratio",
)  # fmt: skip
PAIR_FEATURES = ("gap", "gap_squared", "oblique_between", "flat_between", "grey_between")


def _cumsum_rows(cm):
    """(H + 1, B) cumulative sum over rows of ``cm`` (H, B), with a leading row of zeros."""
    csum = np.zeros((cm.shape[0] + 1, cm.shape[1]), np.float64)
    np.cumsum(cm, axis=0, out=csum[1:])
    return csum


def _band_sums(csum, a, b):
    """(..., N) sums over rows ``a .. b - 1`` (clipped to the region) and over bins, for row
    bounds ``a``, ``b`` (N, B) and cumulative sums ``csum`` (..., H + 1, B)."""
    h, j = csum.shape[-2] - 1, np.arange(csum.shape[-1])
    a, b = np.clip(a, 0, h), np.clip(b, 0, h)
    return (csum[..., b, j] - csum[..., a, j]).sum(axis=-1)


def _texture(tsum, a, b):
    """(obliqueness, flatness), each (N,), of the structure tensor summed over rows ``a .. b - 1``
    (N, B) of ``tsum`` (3, H + 1, B; :func:`_structure`): ``|Jrc| / (Jcc + Jrr)`` is high on
    tilted fascicle striations and near 0 on speckle or horizontal layers, ``(Jrr - Jcc) / (Jcc +
    Jrr)`` is high on horizontal layers (fat, fasciae)."""
    jcc, jrr, jrc = _band_sums(tsum, a, b)
    tot = jcc + jrr + 1e-9
    return np.abs(jrc) / tot, (jrr - jcc) / tot


def _band_means(csum, paths, lo, hi):
    """(N,) mean grey over rows ``path + lo .. path + hi - 1`` (clipped to the region) of each bin,
    averaged over bins, for paths (N, B); ``csum`` (H + 1, B) is the binned image's cumulative sum
    over rows."""
    h, j = csum.shape[0] - 1, np.arange(csum.shape[1])
    a, b = np.clip(paths + lo, 0, h), np.clip(paths + hi, 0, h)
    return ((csum[b, j] - csum[a, j]) / np.maximum(b - a, 1)).mean(axis=1)


def _candidates(cm, csum, tsum, g, acc_coarse, peaks, slopes, xj, sign, guided=False):
    """Refined paths and features (N, len(LINE_FEATURES)) of candidate lines ``peaks``.

    Each peak (row, slope index, value) of the line search is refined by :func:`_band_path` on
    edges of ``sign`` (-1 bright-to-dark: superficial; +1 dark-to-bright: deep), in a band of
    ``BAND_HALF`` rows, or ``GUIDE_HALF`` for the last peak when ``guided``. Features are
    dimensionless: line strength relative to the best candidate (fine+coarse, and coarse alone),
    depth as a fraction of the region height and its rank among the candidates, mean grey in bands
    just above/below the path (``NEAR_BAND``) and farther (``FAR_BAND``) relative to the region
    mean, coherence (fraction of column bins on a clear edge) and end coherence (the lower of
    that fraction over the first and over the last ``1/END_BINS`` of the bins, at least 2 bins:
    observers measure near one end, where a line that crosses into other structures goes astray),
    fraction of strong candidates deeper than it, tilt, whether a hand-written rule picks it
    (superficial: the deepest line above ``SUP_MAX_DEPTH`` scoring at least 0.7 of the best; deep: best
    coarse strength + coherence),
    and the obliqueness (:func:`_texture`) of the far bands above and below, relative to the
    highest among the candidates (fascicle striations start below the superficial aponeurosis
    and end above the deep one; fat and fasciae are not oblique), and the share of the band
    below in their sum (``oblique_ratio``: high under the superficial aponeurosis, with fat
    above and pennate muscle below; near one half at a septum inside the muscle or a fascia
    inside the fat; 0.5 where a band is clipped away at the region's edge)."""
    hh, nb = g.shape
    j = np.arange(nb)
    mean = float(cm.mean()) + 1e-6
    w = 2 * BAND_HALF + 1
    wacc = np.empty((nb, w), np.float64)
    back = np.empty((nb, w), np.int64)
    vmax = max(max(p[2] for p in peaks), 1e-9)
    cmax = max(max(sign * acc_coarse[r, k] for r, k, _ in peaks), 1e-9)
    depths = sorted(p[0] for p in peaks)
    n = len(peaks)
    near, far = max(int(NEAR_BAND * hh), 4), max(int(FAR_BAND * hh), 8)
    feats = np.zeros((n, len(LINE_FEATURES)), np.float64)
    paths = np.empty((n, nb), np.int64)
    for i, (r, k, v) in enumerate(peaks):
        half = GUIDE_HALF if guided and i == n - 1 else BAND_HALF
        _band_path(g, sign, r + slopes[k] * xj, half, MAX_STEP, wacc, back, paths[i])
        feats[i, :4] = v / vmax, max(sign * acc_coarse[r, k], 0.0) / cmax, r / hh, depths.index(r) / n
        feats[i, 9:11] = sum(1 for q in peaks if q[0] > r and q[2] >= 0.7 * vmax) / n, abs(slopes[k]) / MAX_SLOPE
    for f, (lo, hi) in enumerate(((-near, -2), (2, near), (-far, -2), (2, far))):
        feats[:, 4 + f] = _band_means(csum, paths, lo, hi) / mean
    edge = sign * g[paths, j] >= COHERENT_EDGE
    feats[:, 8] = edge.mean(axis=1)
    ne = max(nb // END_BINS, 2)
    feats[:, 14] = np.minimum(edge[:, :ne].mean(axis=1), edge[:, -ne:].mean(axis=1))
    if sign < 0:
        upper = [i for i, p in enumerate(peaks) if p[0] < SUP_MAX_DEPTH * hh and p[2] >= 0.7 * vmax]
        rule = max(upper, key=lambda i: peaks[i][0]) if upper else int(np.argmax([p[2] for p in peaks]))
    else:
        rule = int(np.argmax(feats[:, 1] + feats[:, 8]))
    feats[rule, 11] = 1.0
    ob_above, ob_below = (_texture(tsum, paths + lo, paths + hi)[0] for lo, hi in ((-far, -2), (2, far)))
    feats[:, 12] = ob_above / (ob_above.max() + 1e-9)
    feats[:, 13] = ob_below / (ob_below.max() + 1e-9)
    h = tsum.shape[1] - 1  # a band clipped to nothing (a line at the region's edge) says nothing: 0.5
    rows_above, rows_below = ((np.clip(paths + hi, 0, h) - np.clip(paths + lo, 0, h)).mean(axis=1)
                              for lo, hi in ((-far, -2), (2, far)))  # fmt: skip
    seen = (rows_above >= 1) & (rows_below >= 1) & (ob_above + ob_below > 1e-6)
    feats[:, 15] = np.where(seen, ob_below / (ob_above + ob_below + 1e-9), 0.5)
    return feats, paths


def _pairs(sup, deep, hh, csum, tsum, mean, min_gap=DEEP_MIN_GAP):
    """Index pairs (i, j) with the deep line at least ``min_gap`` of the height below, and
    their features (N, len(PAIR_FEATURES)): gap as a fraction of the height and its square; in the
    band between the two paths (``PAIR_MARGIN`` rows inside each), obliqueness relative to the
    highest among the pairs (pennate muscle), flatness and mean grey relative to ``mean``."""
    (sp, _, sp_paths), (dp, _, dp_paths) = sup, deep
    ij = [(i, j) for i, s in enumerate(sp) for j, d in enumerate(dp) if d[0] > s[0] + min_gap * hh]
    if not ij:
        return ij, None
    ii, jj = np.array(ij).T
    gap = np.array([dp[j][0] - sp[i][0] for i, j in ij]) / hh
    a, b = sp_paths[ii] + PAIR_MARGIN, dp_paths[jj] - PAIR_MARGIN
    ob, flat = _texture(tsum, a, b)
    h = csum.shape[0] - 1
    grey = _band_sums(csum, a, b) / np.maximum((np.clip(b, 0, h) - np.clip(a, 0, h)).sum(axis=1), 1) / mean
    return ij, np.stack([gap, gap**2, ob / (ob.max() + 1e-9), flat, grey], axis=1)


def _choose_pair(fs, fd, ij, gap, model=None):
    """Index into ``ij`` of the best pair under the linear score of ``model`` (mean, scale,
    weights over ``LINE_FEATURES`` of both lines then ``PAIR_FEATURES``)."""
    mean, scale, weights = PAIR_MODEL if model is None else model
    i, j = np.array([p[0] for p in ij]), np.array([p[1] for p in ij])
    x = np.hstack([fs[i], fd[j], gap])
    return int(np.argmax(((x - mean) / scale) @ weights))


def _line_candidates(image, region, guides=(None, None)):
    """Everything the pair choice needs: (line search as :func:`_line_search` returns it,
    superficial (peaks, feats, paths), deep (...), (pairs, pair features)).

    ``guides``: clicked points (row, col) on the superficial and on the deep line, or None. A
    clicked line is the last candidate of its kind, and the pairs are those holding it. Every
    pair's deep path lies at least ``LINE_GAP`` rows below its superficial one in every bin."""
    search = cm, g, acc, acc2, slopes, xj = _line_search(image, region)
    hh, nb = g.shape
    sp = [p for p in _line_peaks(-acc, N_PEAKS, 6) if p[0] < SUP_MAX_DEPTH * hh]
    dp = [p for p in _line_peaks(acc, N_PEAKS, 6) if p[0] > DEEP_MIN_GAP * hh]
    for peaks, at, sign in ((sp, guides[0], -1.0), (dp, guides[1], 1.0)):
        if at is not None:
            peaks.append(_peak_through(acc, slopes, xj, region, at, sign))
    csum = _cumsum_rows(cm)
    tsum = np.empty((3, hh + 1, nb), np.float64)
    _structure(image, region[0], region[1], region[2], BIN_COLS, GRAD_STEP, tsum)
    args = cm, csum, tsum, g, acc2
    sup = (sp, *_candidates(*args, sp, slopes, xj, -1.0, guides[0] is not None)) if sp else None
    deep = (dp, *_candidates(*args, dp, slopes, xj, 1.0, guides[1] is not None)) if dp else None
    if not (sup and deep):
        return search, sup, deep, ([], None)
    min_gap = DEEP_MIN_GAP if guides == (None, None) else LINE_GAP / hh
    ij, gap = _pairs(sup, deep, hh, csum, tsum, float(cm.mean()) + 1e-6, min_gap)
    keep = [n for n, (i, j) in enumerate(ij) if (guides[0] is None or i == len(sp) - 1)
            and (guides[1] is None or j == len(dp) - 1)
            and (deep[2][j] - sup[2][i]).min() >= LINE_GAP]  # fmt: skip
    return search, sup, deep, ([ij[n] for n in keep], gap[keep] if keep else None)
