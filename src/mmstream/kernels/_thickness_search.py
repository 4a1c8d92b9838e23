"""Aponeurosis line search of :mod:`mmstream.kernels.thickness` (steps 1-3 of its method).

Numba kernels (private; every output is preallocated by the caller): pixel activity, column
binning, the vertical step filter, straight-line scores (a Radon transform restricted to
near-horizontal lines), the dynamic-programming band path and the binned structure tensor. Around
them: :func:`find_bmode_region` (the B-mode picture of a screen capture), :func:`_line_search`
(binned image and edge map, (rows, bins), and line scores, (rows, slopes)), the peaks of the line
scores and the line through a clicked point. Rows, columns and bins in pixels.
"""

import numpy as np

from mmstream.kernels._jit import kernel

BIN_COLS = 4  # columns averaged per bin (the polyline has one point per bin)
STEP_FINE = 4  # rows on each side of the fine step filter
STEP_COARSE = 12  # rows on each side of the coarse step filter (diffuse deep edges)
COARSE_WEIGHT = 0.5  # weight of the coarse step in the line search
MAX_SLOPE = 0.15  # rows per column, searched line slopes (about +-8.5 degrees)
N_SLOPES = 16
MAX_STEP = 1  # rows per column bin in the refined path (a slope of 0.25 at BIN_COLS = 4)
MIN_SIZE = 32  # smallest analysed region, rows and columns
ACTIVE_FRACTION = 0.5
ACTIVE_ROW_FRACTION = 0.25  # rows: lower, B-mode rows may hold dark (saturated black) stretches


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
# Python steps


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


def find_bmode_region(image: np.ndarray, within: tuple[int, int, int, int] | None = None) -> tuple[int, int, int, int]:
    """B-mode picture of a (possibly screen-captured) frame as ``(r0, c0, r1, c1)``, searched
    inside ``within`` (end-exclusive, default the whole frame), which it returns when it finds no
    picture there."""
    wr0, wc0, wr1, wc1 = (0, 0, *image.shape) if within is None else within
    h, w = wr1 - wr0, wc1 - wc0
    col = np.empty(w, np.int64)
    row = np.empty(h, np.int64)
    _activity(image, wr0, wc0, wr1, wc1, col, row)
    c0, c1 = _longest_run(col >= ACTIVE_FRACTION * (h - 1))
    if c1 - c0 < MIN_SIZE:
        return wr0, wc0, wr1, wc1
    _activity(image, wr0, wc0 + c0, wr1, wc0 + c1, col[: c1 - c0], row)
    r0, r1 = _longest_run(row[: h - 1] >= ACTIVE_ROW_FRACTION * (c1 - c0))
    r1 = min(r1 + 1, h)
    if r1 - r0 < MIN_SIZE:
        return wr0, wc0 + c0, wr1, wc0 + c1
    _activity(image, wr0 + r0, wc0 + c0, wr0 + r1, wc0 + c1, col[: c1 - c0], row[: r1 - r0])
    a, b = _longest_run(col[: c1 - c0] >= ACTIVE_FRACTION * (r1 - r0 - 1))
    if b - a >= MIN_SIZE:
        c0, c1 = c0 + a, c0 + b
    return wr0 + r0, wc0 + c0, wr0 + r1, wc0 + c1


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
