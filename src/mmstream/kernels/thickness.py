"""Muscle thickness: superficial and deep aponeurosis lines of a longitudinal B-mode frame.

Method
------
The observers of the reference data (TimTrack datasets) click the *inner* edges of the two
aponeuroses: the superficial one where its bright band falls to the darker muscle below, the deep
one where the darker muscle rises to the bright deep band. Both are long, nearly straight or
smoothly curved edges spanning the picture, while fascicle striations are short and tilted. So:

1. **B-mode region** (in the ``roi``, or the whole frame): screen captures carry flat UI areas
   (uniform grey or black, sparse text), sector images black margins. A pixel is *active* when it
   differs from the pixel below it (speckle almost always does); the region is the longest run of
   columns, then of rows, whose active fraction is at least one half (:func:`_activity`). So a
   frame cropped to its B-mode region and the whole frame with that region as ROI are searched
   alike (the live DICOM source crops, ``mmstream analyze`` passes the region as ROI).
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

Code: steps 1-3 are in :mod:`._thickness_search`, steps 4-5 in :mod:`._thickness_features`; this
module holds the public API, the clicks and the tracking.
"""

from dataclasses import dataclass

import numpy as np

from mmstream.errors import InputError
from mmstream.kernels._points import check_point
from mmstream.kernels._thickness_features import (  # GUIDE_HALF and the feature names: re-exported
    BAND_HALF,
    GUIDE_HALF,
    LINE_FEATURES,
    LINE_GAP,
    PAIR_FEATURES,
    _choose_pair,
    _line_candidates,
)
from mmstream.kernels._thickness_search import (
    BIN_COLS,
    MAX_STEP,
    MIN_SIZE,
    N_SLOPES,
    STEP_FINE,
    _band_path,
    _bin_columns,
    _vertical_step,
    find_bmode_region,
)

__all__ = ["ThicknessLines", "measure_thickness"]

TRACK_HALF = 8  # rows, half-width of the band around the previous frame's lines
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
        End-exclusive region to search in, image pixels (default the whole frame): the lines are
        searched in the B-mode picture found inside it (UI borders of screen captures and black
        margins beside a sector are excluded; an ROI inside the picture is kept as it is).
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
            (region is None or (region[0] <= preg[0] and region[1] <= preg[1]
                                and preg[2] <= region[2] and preg[3] <= region[3]))  # fmt: skip
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

    bounds = (0, 0, h, w) if region is None else region
    region = find_bmode_region(image, bounds)
    if region[2] - region[0] < MIN_SIZE or region[3] - region[1] < MIN_SIZE:
        region = bounds

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
    the band can reach. Returns (path rows in region coordinates, edge strength per bin), or
    (None, 0.0) when the region has too few rows for the band."""
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
