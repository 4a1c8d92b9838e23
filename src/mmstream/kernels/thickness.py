"""Muscle thickness: superficial and deep aponeurosis lines of a longitudinal B-mode frame.

Method
------
The observers of the reference data (TimTrack datasets) click the *inner* edges of the two
aponeuroses: the superficial one where its bright band falls to the darker muscle below, the deep
one where the darker muscle rises to the bright deep band. Both are long, nearly straight or
smoothly curved edges spanning the picture, while fascicle striations are short and tilted. So:

1. **B-mode region** (``roi=None``): screen captures carry flat UI areas (uniform grey or black,
   sparse text). A pixel is *active* when it differs from the pixel below it (speckle almost always
   does); the region is the longest run of columns, then of rows, whose active fraction is at least
   one half (:func:`_activity`).
2. **Edge map**: the region is averaged over bins of ``BIN_COLS`` columns (:func:`_bin_columns`),
   then a vertical step filter gives ``G[r, j] = mean(rows r..r+k-1) - mean(rows r-k..r-1)``
   (:func:`_vertical_step`): positive on dark-above/bright-below edges (deep aponeurosis), negative
   on bright-above/dark-below edges (superficial aponeurosis). Observers click the middle of that
   step, which is where ``|G|`` peaks.
3. **Line search** (a Radon transform restricted to near-horizontal lines): the mean of ``G`` along
   every straight line of slope within ``+-MAX_SLOPE`` rows/col (:func:`_line_scores`) at two step
   scales. Long aponeuroses accumulate; tilted striations average out.
4. **Candidates**: the strongest ``N_PEAKS`` bright-to-dark lines in the upper ``SUP_MAX_DEPTH`` of
   the region (superficial) and dark-to-bright lines (deep) are each refined into a
   dynamic-programming path of maximal edge strength inside a band around the line
   (:func:`_band_path`), at most ``MAX_STEP`` rows per column bin, so curved aponeuroses are
   followed to the picture's ends, where observers usually measure.
5. **Choice of the pair** (:func:`_choose_pair`): among the pairs whose deep line lies at least
   ``DEEP_MIN_GAP`` of the height below the superficial one, the highest linear score over a dozen
   dimensionless features per line (:data:`LINE_FEATURES`: relative strength, depth, grey level
   of the bands above and below, coherence, ...) and per pair (:data:`PAIR_FEATURES`: the gap,
   and the texture of the band between the lines). Texture is read from the structure tensor
   (:func:`_structure`): pennate muscle shows tilted fascicle striations, which subcutaneous fat,
   fasciae and horizontal layers do not. Without it most gross errors took a subcutaneous fascia
   for the superficial aponeurosis or, in the gastrocnemius, the soleus for the muscle. The
   weights (:mod:`._thickness_model`, 3 x 37 floats) are fitted by ``tools/train_thickness.py``
   on the TimTrack observers and on simulated scenes, with leave-one-group-out figures in its
   output and the README. The hand-written rule it replaces (deepest strong line in the upper
   half; best diffuse deep edge) often took a subcutaneous fascia for the superficial
   aponeurosis in vastus lateralis images, and its fixed 30 % gap missed thin (atrophic) muscles.

**Guided lines** (``superficial_at_rc`` / ``deep_at_rc``: a user's click on a line, as the CSA
takes a click inside the structure): the clicked line is the straight line of step 3 through the
point with the strongest edge of its polarity, refined as in step 4 in a band of only
``GUIDE_HALF`` rows, so the line stays on the clicked edge. Step 5 then chooses only the other line,
among the candidates at least ``LINE_GAP`` rows beyond the clicked line in every column bin (the
``DEEP_MIN_GAP`` limit does not apply); with no such candidate, or clicked lines closer than that,
the click is refused. A click settles the failures of step 5 (the wrong layer of a layered
aponeurosis, the soleus taken for the gastrocnemius): see the README's accuracy section.

With ``previous`` (a live stream) steps 1, 3 and 5 are skipped: the region is kept and the
refinement of step 4 runs in a narrower band around the previous lines; if the edges found there
are too weak, or the lines run closer than ``LINE_GAP`` rows, the frame is analysed from scratch,
through the points where clicked lines were held (the automatic choice if that fails). A click on
one line keeps the other line's earlier click.
"""

from dataclasses import dataclass

import numpy as np

from mmstream.errors import InputError
from mmstream.kernels._jit import kernel
from mmstream.kernels._points import check_point
from mmstream.kernels._thickness_model import PAIR_MODEL

__all__ = ["ThicknessLines", "measure_thickness"]

BIN_COLS = 4  # columns averaged per bin (the polyline has one point per bin)
STEP_FINE = 4  # rows on each side of the fine step filter
STEP_COARSE = 12  # rows on each side of the coarse step filter (diffuse deep edges)
COARSE_WEIGHT = 0.5  # weight of the coarse step in the line search
MAX_SLOPE = 0.15  # rows per column, searched line slopes (about +-8.5 degrees)
N_SLOPES = 16
BAND_HALF = 12  # rows, half-width of the refinement band around a chosen line
TRACK_HALF = 8  # rows, half-width of the band around the previous frame's lines
GUIDE_HALF = 6  # rows, half-width of the band around a clicked line
LINE_GAP = 2 * STEP_FINE  # rows: with a click, the other line keeps at least this far on its side in every bin
MAX_STEP = 1  # rows per column bin in the refined path (a slope of 0.25 at BIN_COLS = 4)
NEAR_BAND = 0.035  # fraction of the region height: bands beside a candidate line (features)
FAR_BAND = 0.09
SUP_MAX_DEPTH = 0.6  # fraction of the region height: deepest superficial candidate
N_PEAKS = 12  # candidate lines per edge sign
DEEP_MIN_GAP = 0.2  # fraction of the region height: least superficial-to-deep distance (line search)
COHERENT_EDGE = 3.0  # grey levels: a deep path point on at least this step counts as coherent
END_BINS = 8  # the end coherence of a line is read over 1/END_BINS of its bins at each end
GRAD_STEP = 2  # pixels: central differences I[r, c + d] - I[r, c - d] of the texture tensor
PAIR_MARGIN = 4  # rows: the band between a pair's lines starts and ends this far inside them
MIN_SIZE = 32  # smallest analysed region, rows and columns
ACTIVE_FRACTION = 0.5
ACTIVE_ROW_FRACTION = 0.25  # rows: lower, B-mode rows may hold dark (saturated black) stretches
EDGE_CONFIDENT = 6.0  # grey levels: |G| at which a path point counts as a clear edge
TRACK_MIN_EDGE = 3.0  # grey levels: mean |G| along a tracked path below which tracking is lost


@dataclass(frozen=True)
class ThicknessLines:
    """Superficial and deep aponeurosis lines of one frame.

    Attributes
    ----------
    superficial_rc, deep_rc : ndarray of shape (K, 2), float64
        Polylines ``[row, col]`` in image pixels, one point per analysed column bin, left to
        right, at the same columns. Rows are the inner edges of the aponeuroses (the middle of the
        grey-level step between aponeurosis and muscle).
    thickness_px : float
        Median over the analysed columns of ``deep row - superficial row`` (pixels, vertical).
    confidence : float
        In [0, 1]: fraction of the analysed columns where both lines lie on a grey-level step of
        the expected polarity of at least ``EDGE_CONFIDENT`` grey levels, the deep line below the
        superficial one. Near 1 for clear
        aponeuroses; low when a line crosses shadows or was guessed through featureless tissue.
    region_rc : (r0, c0, r1, c1)
        Analysed region, end-exclusive, image pixels.
    tracked : bool
        True when the lines were followed from ``previous``, False when this frame was analysed
        from scratch (also when tracking was lost).
    superficial_at_rc, deep_at_rc : (row, col) or None
        Where a clicked line is held: its point at the column of the click, on the frame of the
        click and on every frame it is tracked to; None for a line chosen automatically. When
        tracking is lost the lines are found again through these points.
    """

    superficial_rc: np.ndarray
    deep_rc: np.ndarray
    thickness_px: float
    confidence: float
    region_rc: tuple[int, int, int, int]
    tracked: bool = False
    superficial_at_rc: tuple[float, float] | None = None
    deep_at_rc: tuple[float, float] | None = None


# ----------------------------------------------------------------------------------------------
# Numba kernels (private; every output is preallocated by the caller)


@kernel("void(uint8[:, ::1], int64, int64, int64, int64, int64[::1], int64[::1])")
def _activity(image, r0, c0, r1, c1, col_count, row_count):
    """Active pixels (``image[r, c] != image[r + 1, c]``) for ``r0 <= r < r1 - 1``,
    ``c0 <= c < c1``, counted per column into ``col_count[c - c0]`` and per row into
    ``row_count[r - r0]`` (both zeroed here)."""
    for j in range(c1 - c0):
        col_count[j] = 0
    for i in range(r1 - r0):
        row_count[i] = 0
    for r in range(r0, r1 - 1):
        a = image[r, c0:c1]
        b = image[r + 1, c0:c1]
        n = 0
        for j in range(a.shape[0]):
            d = np.int64(a[j] != b[j])
            col_count[j] += d
            n += d
        row_count[r - r0] = n


@kernel("void(uint8[:, ::1], int64, int64, int64, int64, int64, float64[:, ::1])")
def _bin_columns(image, r0, c0, r1, c1, bin_cols, out):
    """``out[i, j]`` = mean of ``image[r0 + i, c0 + j*bin_cols : c0 + (j+1)*bin_cols]`` for
    ``j < out.shape[1]`` (bins beyond ``c1`` are not written; the caller sizes ``out``)."""
    nb = out.shape[1]
    inv = 1.0 / bin_cols
    for i in range(r1 - r0):
        row = image[r0 + i, c0:c1]
        for j in range(nb):
            s = 0
            for t in range(j * bin_cols, (j + 1) * bin_cols):
                s += np.int64(row[t])
            out[i, j] = s * inv


@kernel("void(float64[:, ::1], int64, float64[::1], float64[::1], float64[:, ::1])")
def _vertical_step(cm, k, above, below, out):
    """``out[r, j] = mean(cm[r:r+k, j]) - mean(cm[r-k:r, j])`` for ``k <= r <= H - k``; zero for
    the other rows. ``above`` and ``below`` are (nb,) work vectors."""
    h, nb = cm.shape
    for r in range(h):
        for j in range(nb):
            out[r, j] = 0.0
    if h < 2 * k:
        return
    inv = 1.0 / k
    for j in range(nb):
        above[j] = 0.0
        below[j] = 0.0
    for r in range(0, k):
        for j in range(nb):
            above[j] += cm[r, j]
            below[j] += cm[r + k, j]
    # at r = k: above = rows 0..k-1, below = rows k..2k-1
    for r in range(k, h - k + 1):
        for j in range(nb):
            out[r, j] = (below[j] - above[j]) * inv
        if r + k < h:
            for j in range(nb):
                above[j] += cm[r, j] - cm[r - k, j]
                below[j] += cm[r + k, j] - cm[r, j]


@kernel("void(float64[:, ::1], float64[::1], float64, float64[:, ::1])")
def _line_scores(g, slopes, bin_width, out):
    """Mean of ``g`` along straight lines: ``out[r, s]`` averages ``g[r + round(slopes[s] *
    (x_j - x_c)), j]`` over the bins ``j`` where that row is inside ``g``, with ``x_j = (j + 0.5) *
    bin_width`` and ``x_c = nb * bin_width / 2``; lines valid in fewer than half of the bins
    score 0. ``round`` is round-half-to-even (numpy's)."""
    h, nb = g.shape
    ns = slopes.shape[0]
    xc = nb * bin_width / 2.0
    for s in range(ns):
        for r in range(h):
            acc = 0.0
            n = 0
            for j in range(nb):
                rr = r + np.int64(np.round(slopes[s] * ((j + 0.5) * bin_width - xc)))
                if rr >= 0 and rr < h:
                    acc += g[rr, j]
                    n += 1
            out[r, s] = acc / n if 2 * n >= nb else 0.0


@kernel(
    "void(float64[:, ::1], float64, float64[::1], int64, int64, float64[:, ::1], int64[:, ::1],"
    " int64[::1])"
)
def _band_path(g, sign, center, half, max_step, acc, back, path):
    """Path of maximal ``sum_j sign * g[path[j], j]`` with ``|path[j] - round(center[j])| <=
    half``, ``0 <= path[j] < H`` and ``|path[j] - path[j-1]| <= max_step``. ``acc`` and ``back``
    are (nb, 2*half+1) work arrays. Ties resolve to the smallest row. If no such path exists the
    path follows ``round(center)`` clipped to the image."""
    h, nb = g.shape
    w = 2 * half + 1
    neg = -1e300
    for j in range(nb):
        base = np.int64(np.round(center[j])) - half
        for t in range(w):
            r = base + t
            if r < 0 or r >= h:
                acc[j, t] = neg
                back[j, t] = -1
                continue
            v = sign * g[r, j]
            if j == 0:
                acc[j, t] = v
                back[j, t] = -1
                continue
            pbase = np.int64(np.round(center[j - 1])) - half
            best = neg
            bi = -1
            for dr in range(-max_step, max_step + 1):
                pt = r + dr - pbase
                if pt >= 0 and pt < w and acc[j - 1, pt] > best:
                    best = acc[j - 1, pt]
                    bi = pt
            if bi < 0 or best <= neg:
                acc[j, t] = neg
                back[j, t] = -1
            else:
                acc[j, t] = best + v
                back[j, t] = bi
    best = neg
    bt = -1
    for t in range(w):
        if acc[nb - 1, t] > best:
            best = acc[nb - 1, t]
            bt = t
    if bt < 0:
        for j in range(nb):
            path[j] = min(max(np.int64(np.round(center[j])), 0), h - 1)
        return
    for j in range(nb - 1, -1, -1):
        path[j] = np.int64(np.round(center[j])) - half + bt
        bt = back[j, bt]


@kernel("void(uint8[:, ::1], int64, int64, int64, int64, int64, float64[:, :, ::1])")
def _structure(image, r0, c0, r1, bin_cols, d, out):
    """Structure tensor of ``image`` summed per row and column bin, cumulated over rows:
    ``out[k, i + 1, j] = out[k, i, j] + sum over c0 + j*bin_cols <= c < c0 + (j+1)*bin_cols of
    (gc*gc, gr*gr, gr*gc)[k]`` at row ``r0 + i`` (``r0 <= r0 + i < r1``), ``out[:, 0, :] = 0``,
    with ``gc = image[r, c + d] - image[r, c - d]`` and ``gr = image[r + d, c] - image[r - d, c]``
    (each zero where it would leave the image). ``out`` is (3, r1 - r0 + 1, nb)."""
    h, w = image.shape
    nb = out.shape[2]
    for j in range(nb):
        for k in range(3):
            out[k, 0, j] = 0.0
    for i in range(r1 - r0):
        r = r0 + i
        row_ok = r >= d and r + d < h
        for j in range(nb):
            scc = 0
            srr = 0
            src = 0
            for c in range(c0 + j * bin_cols, c0 + (j + 1) * bin_cols):
                gc = 0
                gr = 0
                if c >= d and c + d < w:
                    gc = np.int64(image[r, c + d]) - np.int64(image[r, c - d])
                if row_ok:
                    gr = np.int64(image[r + d, c]) - np.int64(image[r - d, c])
                scc += gc * gc
                srr += gr * gr
                src += gr * gc
            out[0, i + 1, j] = out[0, i, j] + scc
            out[1, i + 1, j] = out[1, i, j] + srr
            out[2, i + 1, j] = out[2, i, j] + src


# ----------------------------------------------------------------------------------------------
# Python orchestration


def _longest_run(mask: np.ndarray) -> tuple[int, int]:
    """(start, stop) of the longest run of True in a 1-D boolean array; (0, 0) if none."""
    m = np.concatenate(([False], mask, [False])).astype(np.int8)
    d = np.diff(m)
    starts = np.flatnonzero(d == 1)
    stops = np.flatnonzero(d == -1)
    if starts.size == 0:
        return 0, 0
    i = int(np.argmax(stops - starts))
    return int(starts[i]), int(stops[i])


def find_bmode_region(image: np.ndarray) -> tuple[int, int, int, int]:
    """B-mode picture of a (possibly screen-captured) frame as ``(r0, c0, r1, c1)``."""
    h, w = image.shape
    col = np.empty(w, np.int64)
    row = np.empty(h, np.int64)
    _activity(image, 0, 0, h, w, col, row)
    c0, c1 = _longest_run(col >= ACTIVE_FRACTION * (h - 1))
    if c1 - c0 < MIN_SIZE:
        return 0, 0, h, w
    _activity(image, 0, c0, h, c1, col[: c1 - c0], row)
    r0, r1 = _longest_run(row[: h - 1] >= ACTIVE_ROW_FRACTION * (c1 - c0))
    r1 = min(r1 + 1, h)
    if r1 - r0 < MIN_SIZE:
        return 0, c0, h, c1
    _activity(image, r0, c0, r1, c1, col[: c1 - c0], row[: r1 - r0])
    a, b = _longest_run(col[: c1 - c0] >= ACTIVE_FRACTION * (r1 - r0 - 1))
    if b - a >= MIN_SIZE:
        c0, c1 = c0 + a, c0 + b
    return r0, c0, r1, c1


def _line_peaks(score, n, sep):
    """Up to ``n`` (row, slope index, value) maxima of ``score`` with value > 0, rows at least
    ``sep`` apart."""
    s = score.copy()
    out = []
    for _ in range(n):
        i = int(np.argmax(s))
        r, k = divmod(i, s.shape[1])
        v = float(s[r, k])
        if not v > 0:
            break
        out.append((r, k, v))
        s[max(0, r - sep) : r + sep + 1, :] = -np.inf
    return out


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
    (superficial: the deepest line in the upper 45 % scoring at least 0.7 of the best; deep: best
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
        upper = [i for i, p in enumerate(peaks) if p[0] < 0.45 * hh and p[2] >= 0.7 * vmax]
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


def _line_search(image, region):
    """Binned image, edge map and line scores of ``region``: (cm, g, acc, acc_coarse, slopes, xj)."""
    r0, c0, r1, c1 = region
    nb = (c1 - c0) // BIN_COLS
    cm = np.empty((r1 - r0, nb), np.float64)
    _bin_columns(image, r0, c0, r1, c1, BIN_COLS, cm)
    g = np.empty_like(cm)
    gc = np.empty_like(cm)
    work = np.empty((2, nb), np.float64)
    _vertical_step(cm, STEP_FINE, work[0], work[1], g)
    _vertical_step(cm, STEP_COARSE, work[0], work[1], gc)
    hh = g.shape[0]
    slopes = np.linspace(-MAX_SLOPE, MAX_SLOPE, N_SLOPES)
    acc = np.empty((hh, N_SLOPES), np.float64)
    acc2 = np.empty_like(acc)
    _line_scores(g, slopes, float(BIN_COLS), acc)
    _line_scores(gc, slopes, float(BIN_COLS), acc2)
    acc2 *= COARSE_WEIGHT
    acc += acc2
    xj = (np.arange(nb) + 0.5) * BIN_COLS - nb * BIN_COLS / 2.0
    return cm, g, acc, acc2, slopes, xj


def _peak_through(acc, slopes, xj, region, at_rc, sign):
    """(row, slope index, value) of the straight line through the image point ``at_rc`` with the
    strongest edge of ``sign`` in the line scores ``acc`` (value clipped at 0), among the slopes
    whose line has its centre row inside the region."""
    hh = acc.shape[0]
    rr = at_rc[0] - region[0] + 0.5  # region row of the point, as paths are (rows = path + r0 - 0.5)
    b = min(max(int((at_rc[1] - region[1]) // BIN_COLS), 0), xj.shape[0] - 1)
    rows = np.round(rr - slopes * xj[b]).astype(np.int64)
    inside = (rows >= 0) & (rows < hh)  # a line whose centre row is outside is another line once clipped
    rows = np.clip(rows, 0, hh - 1)
    vals = np.where(inside | ~inside.any(), sign * acc[rows, np.arange(slopes.shape[0])], -np.inf)
    k = int(np.argmax(vals))
    return int(rows[k]), k, max(float(vals[k]), 0.0)


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


def _paths(g, centers_sup, centers_deep, half):
    nb = g.shape[1]
    w = 2 * half + 1
    acc = np.empty((nb, w), np.float64)
    back = np.empty((nb, w), np.int64)
    ps = np.empty(nb, np.int64)
    pd = np.empty(nb, np.int64)
    _band_path(g, -1.0, centers_sup, half, MAX_STEP, acc, back, ps)
    _band_path(g, 1.0, centers_deep, half, MAX_STEP, acc, back, pd)
    return ps, pd


def _centers_from(poly, region, nb):
    r0, c0, _, _ = region
    cols = c0 + np.arange(nb) * BIN_COLS + (BIN_COLS - 1) / 2.0
    p = np.asarray(poly, np.float64)
    return np.interp(cols, p[:, 1], p[:, 0]) - r0 + 0.5


def _check_region(region, h, w, what):
    r0, c0, r1, c1 = region
    if not (0 <= r0 < r1 <= h and 0 <= c0 < c1 <= w):
        raise InputError(f"{what} {tuple(region)} is empty or outside the {h}x{w} image")
    if r1 - r0 < MIN_SIZE or c1 - c0 < MIN_SIZE:
        raise InputError(
            f"{what} {tuple(region)} is smaller than {MIN_SIZE}x{MIN_SIZE} pixels: too small to "
            "hold two aponeuroses"
        )


def measure_thickness(
    image: np.ndarray,
    roi: tuple[int, int, int, int] | None = None,
    previous: ThicknessLines | None = None,
    superficial_at_rc: tuple[float, float] | None = None,
    deep_at_rc: tuple[float, float] | None = None,
    track: bool = True,
) -> ThicknessLines:
    """Superficial and deep aponeurosis lines and the muscle thickness between them.

    Parameters
    ----------
    image : ndarray of shape (H, W), uint8, C-contiguous
        Grey B-mode frame or screen capture holding one (longitudinal muscle view).
    roi : (r0, c0, r1, c1), optional
        End-exclusive region to search, image pixels. Default: the B-mode picture, found
        automatically (UI borders of screen captures are excluded).
    previous : ThicknessLines, optional
        Result on the previous frame of the same stream: the lines are then tracked in a narrow
        band around it (fast, stable); if they are lost the frame is analysed from scratch.
    superficial_at_rc, deep_at_rc : (row, col), optional
        A click on the superficial or on the deep line (image pixels, inside the analysed
        region): that line is the edge through the point (within ``GUIDE_HALF`` rows of it), and
        only the other one is chosen, on its side of it, unless ``previous`` holds it at an
        earlier click. Either or both; the frame is then analysed afresh, not tracked.
    track : bool
        False: ``previous`` is not tracked (the caller's ROI changed), it only lends the points
        where its clicked lines are held.

    Returns
    -------
    ThicknessLines
        Lines in image pixels, thickness in pixels (vertical), confidence in [0, 1].

    Raises
    ------
    InputError
        Wrong dtype, shape or memory layout; ROI empty, outside the image or smaller than
        32x32 pixels; image smaller than 32x32; a clicked point not two finite numbers or outside
        the analysed region; no line of the other kind at least ``LINE_GAP`` rows beyond a clicked
        line, or two clicked lines closer than that.
    """
    if not isinstance(image, np.ndarray):
        raise InputError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise InputError(f"image must be uint8, got {image.dtype}")
    if image.ndim != 2:
        raise InputError(f"image must be 2-D (H, W) grey, got shape {image.shape}")
    if not image.flags.c_contiguous:
        raise InputError("image must be C-contiguous (np.ascontiguousarray)")
    h, w = image.shape
    if h < MIN_SIZE or w < MIN_SIZE:
        raise InputError(f"image {h}x{w} is smaller than {MIN_SIZE}x{MIN_SIZE} pixels")
    if roi is not None:
        try:
            region = tuple(int(v) for v in roi)
        except (TypeError, ValueError) as exc:
            raise InputError(f"roi must be four integers (r0, c0, r1, c1), got {roi!r}") from exc
        if len(region) != 4:
            raise InputError(f"roi must be four integers (r0, c0, r1, c1), got {roi!r}")
        _check_region(region, h, w, "roi")
    else:
        region = None

    if previous is not None and not isinstance(previous, ThicknessLines):
        raise InputError("previous must be a ThicknessLines result")
    clicks = tuple(None if at is None else check_point(at, name)
                   for at, name in ((superficial_at_rc, "superficial_at_rc"), (deep_at_rc, "deep_at_rc")))  # fmt: skip
    if previous is not None and clicks == (None, None) and track:
        preg = tuple(int(v) for v in previous.region_rc)
        ok = (
            (region is None or region == preg)
            and 0 <= preg[0] < preg[2] <= h
            and 0 <= preg[1] < preg[3] <= w
            and preg[2] - preg[0] >= MIN_SIZE
            and preg[3] - preg[1] >= MIN_SIZE
            and len(previous.superficial_rc) >= 2
            and len(previous.deep_rc) >= 2
        )
        if ok:
            res = _track(image, preg, previous)
            if res is not None:
                return res

    if region is None:
        region = find_bmode_region(image)
        if region[2] - region[0] < MIN_SIZE or region[3] - region[1] < MIN_SIZE:
            region = (0, 0, h, w)

    def inside(at):
        return at is not None and region[0] <= at[0] < region[2] and region[1] <= at[1] < region[3]

    for at, name in zip(clicks, ("superficial_at_rc", "deep_at_rc")):
        if at is not None and not inside(at):
            raise InputError(f"{name} {at} is outside the analysed region {region} (r0, c0, r1, c1)")
    held = (None, None) if previous is None else (previous.superficial_at_rc, previous.deep_at_rc)
    guides = tuple(c if c is not None else (p if inside(p) else None) for c, p in zip(clicks, held))
    if clicks == (None, None) and guides != (None, None):  # tracking lost: find the held lines again
        try:
            return _analyse(image, region, guides)
        except InputError:  # they are no longer there: the automatic choice
            guides = (None, None)
    return _analyse(image, region, guides)


def _track_line(image, region, center, sign, half):
    """Band path around ``center`` (region rows per bin), computing the edge map only on the rows
    the band can reach. Returns (path rows in region coordinates, mean edge strength)."""
    r0, c0, r1, c1 = region
    hh = r1 - r0
    nb = center.shape[0]
    lo = max(int(np.floor(center.min())) - half - STEP_FINE - 2, 0)
    hi = min(int(np.ceil(center.max())) + half + STEP_FINE + 3, hh)
    if hi - lo < 2 * STEP_FINE + 1:
        return None, 0.0
    cm = np.empty((hi - lo, nb), np.float64)
    _bin_columns(image, r0 + lo, c0, r0 + hi, c1, BIN_COLS, cm)
    g = np.empty_like(cm)
    work = np.empty((2, nb), np.float64)
    _vertical_step(cm, STEP_FINE, work[0], work[1], g)
    w = 2 * half + 1
    acc = np.empty((nb, w), np.float64)
    back = np.empty((nb, w), np.int64)
    path = np.empty(nb, np.int64)
    _band_path(g, sign, center - lo, half, MAX_STEP, acc, back, path)
    e = sign * g[path, np.arange(nb)]
    return path + lo, e


def _track(image, region, previous):
    """Lines of ``previous`` followed on ``image`` (None when lost: weak edges, or the lines
    closer than ``LINE_GAP`` rows somewhere)."""
    r0, c0, _, _ = region
    nb = (region[3] - region[1]) // BIN_COLS
    ps, es = _track_line(image, region, _centers_from(previous.superficial_rc, region, nb), -1.0, TRACK_HALF)
    if ps is None:
        return None
    pd, ed = _track_line(image, region, _centers_from(previous.deep_rc, region, nb), 1.0, TRACK_HALF)
    if pd is None or es.mean() < TRACK_MIN_EDGE or ed.mean() < TRACK_MIN_EDGE or (pd - ps).min() < LINE_GAP:
        return None  # weak edges, or lines run together: lost
    held = (previous.superficial_at_rc, previous.deep_at_rc)
    return _make_lines(ps, pd, es, ed, region, tracked=True, at_cols=tuple(None if p is None else p[1] for p in held))


def _make_lines(ps, pd, es, ed, region, tracked=False, at_cols=(None, None)):
    """ThicknessLines of region-relative paths ``ps``, ``pd`` (nb,) with edge strengths ``es``,
    ``ed``; ``at_cols``: the click column of each held line (None: not held)."""
    r0, c0, _, _ = region
    nb = ps.shape[0]
    cols = c0 + np.arange(nb) * BIN_COLS + (BIN_COLS - 1) / 2.0
    conf = float(np.count_nonzero((es >= EDGE_CONFIDENT) & (ed >= EDGE_CONFIDENT) & (pd > ps))) / nb
    sup = np.empty((nb, 2))
    sup[:, 0] = ps + (r0 - 0.5)
    sup[:, 1] = cols
    deep = np.empty((nb, 2))
    deep[:, 0] = pd + (r0 - 0.5)
    deep[:, 1] = cols
    return ThicknessLines(
        superficial_rc=sup,
        deep_rc=deep,
        thickness_px=float(np.median(pd - ps)),
        confidence=conf,
        region_rc=tuple(int(v) for v in region),
        tracked=tracked,
        superficial_at_rc=None if at_cols[0] is None else (float(np.interp(at_cols[0], cols, sup[:, 0])), float(at_cols[0])),
        deep_at_rc=None if at_cols[1] is None else (float(np.interp(at_cols[1], cols, deep[:, 0])), float(at_cols[1])),
    )


def _analyse(image, region, guides=(None, None)):
    (_, g, acc, _, slopes, xj), sup, deep, (ij, gap) = _line_candidates(image, region, guides)
    hh, nb = g.shape
    if ij:
        i, j = ij[_choose_pair(sup[1], deep[1], ij, gap)]
        ps, pd = sup[2][i], deep[2][j]
    elif None not in guides:
        raise InputError(f"the clicked superficial and deep lines cross or come within {LINE_GAP} rows of each other")
    elif guides != (None, None):
        other = "deep line below the clicked superficial" if guides[0] is not None else "superficial line above the clicked deep"
        raise InputError(f"no {other} line by at least {LINE_GAP} rows")
    else:  # no pair of opposite edges far enough apart: strongest lines in each half (low confidence)
        mid = N_SLOPES // 2
        rs = int(np.argmax(-acc[: hh // 2, mid]))
        rd = hh // 2 + int(np.argmax(acc[hh // 2 :, mid]))
        ps, pd = _paths(g, rs + slopes[mid] * xj, rd + slopes[mid] * xj, BAND_HALF)
        pd = np.maximum(pd, ps + 1)  # never above the superficial line, where the two bands overlap
    j = np.arange(nb)
    return _make_lines(ps, pd, -g[ps, j], g[pd, j], region, at_cols=tuple(None if a is None else a[1] for a in guides))
