"""Thickness kernel: parity with the plain-numpy twins, analytic phantoms, bad input, real data."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mmstream.errors import InputError
from mmstream.kernels import _thickness_features as tf
from mmstream.kernels import _thickness_search as ts
from mmstream.kernels import thickness as tk
from twins import thickness as twin

# ----------------------------------------------------------------------------------------------
# Phantoms


def phantom(
    shape=(400, 480),
    sup=(60.0, 60.0),
    deep=(300.0, 300.0),
    seed=0,
    band=10,
    fascicles=True,
    deep_bend=0.0,
):
    """Speckled longitudinal muscle: bright superficial band ending (inner edge) at row
    ``sup[0]`` on the left and ``sup[1]`` on the right, a bright deep band starting (inner edge) at
    ``deep[0] .. deep[1]``, tilted fascicle striations between them. ``deep_bend``: rows the deep
    edge slopes down by over the right third (a kink). Returns (image, sup_row(c), deep_row(c))
    with the edge rows as functions of the column."""
    rng = np.random.default_rng(seed)
    h, w = shape
    rr, cc = np.mgrid[0:h, 0:w].astype(np.float64)

    def deep_row(c):
        return deep[0] + (deep[1] - deep[0]) * c / (w - 1) + deep_bend * np.clip(3 * c / (w - 1) - 2, 0, 1)

    s_row = sup[0] + (sup[1] - sup[0]) * cc / (w - 1)
    d_row = deep_row(cc)
    img = np.full(shape, 70.0)
    img[rr < s_row - band] = 90.0  # subcutaneous layer
    img[(rr >= s_row - band) & (rr < s_row)] = 190.0  # superficial aponeurosis
    img[rr >= d_row] = 150.0  # deep aponeurosis and deeper muscle
    img[(rr >= d_row) & (rr < d_row + band)] = 200.0
    if fascicles:
        inside = (rr >= s_row + 6) & (rr < d_row - 6)
        stripes = np.sin((rr + 0.35 * cc) * 2 * np.pi / 18.0) > 0.85  # short tilted bright lines
        img[inside & stripes] += 45.0
    img *= rng.rayleigh(1.0, shape) / np.sqrt(np.pi / 2)  # multiplicative speckle, mean 1
    img = np.clip(img, 0, 255).astype(np.uint8)
    return img, (lambda c: sup[0] + (sup[1] - sup[0]) * c / (w - 1)), deep_row


def screen_capture(img, seed=1):
    """Put ``img`` in a larger UI-like frame: grey border, a black strip, text-like blobs."""
    rng = np.random.default_rng(seed)
    h, w = img.shape
    out = np.full((h + 120, w + 300), 48, np.uint8)
    out[:, -60:] = 0
    for _ in range(40):  # text-like blobs in the border
        r = int(rng.integers(0, out.shape[0] - 8))
        c = int(rng.choice([rng.integers(0, 140), rng.integers(w + 160, w + 230)]))
        out[r : r + 7, c : c + int(rng.integers(3, 30))] = 220
    out[10:18, 160 : 160 + w // 2] = 200  # a title line above the picture
    out[60 : 60 + h, 150 : 150 + w] = img
    return np.ascontiguousarray(out), (60, 150)


def row_at(poly, col):
    return float(np.interp(col, poly[:, 1], poly[:, 0]))


# ----------------------------------------------------------------------------------------------
# Parity with the twins (hypothesis, small images)

small_images = arrays(
    np.uint8,
    st.tuples(st.integers(2, 24), st.integers(1, 24)),
    elements=st.integers(0, 255) | st.sampled_from([0, 0, 7]),
)


@settings(max_examples=50, deadline=None)
@given(small_images, st.data())
def test_activity_matches_twin(image, data):
    h, w = image.shape
    r0 = data.draw(st.integers(0, h - 2))
    r1 = data.draw(st.integers(r0 + 2, h))
    c0 = data.draw(st.integers(0, w - 1))
    c1 = data.draw(st.integers(c0 + 1, w))
    col = np.full(c1 - c0, -5, np.int64)
    row = np.full(r1 - r0, -5, np.int64)
    ts._activity(image, r0, c0, r1, c1, col, row)
    ec, er = twin.activity(image, r0, c0, r1, c1)
    np.testing.assert_array_equal(col, ec)
    np.testing.assert_array_equal(row, er)


@settings(max_examples=50, deadline=None)
@given(small_images, st.integers(1, 5), st.integers(1, 6), st.data())
def test_bin_columns_and_step_match_twin(image, bin_cols, k, data):
    h, w = image.shape
    nb = w // bin_cols
    if nb == 0:
        return
    c0 = data.draw(st.integers(0, w - nb * bin_cols))
    cm = np.full((h, nb), np.nan)
    ts._bin_columns(image, 0, c0, h, c0 + nb * bin_cols, bin_cols, cm)
    np.testing.assert_allclose(cm, twin.bin_columns(image, 0, c0, h, c0 + nb * bin_cols, bin_cols, nb), atol=1e-9)
    g = np.full_like(cm, np.nan)
    work = np.empty((2, nb))
    ts._vertical_step(cm, k, work[0], work[1], g)
    np.testing.assert_allclose(g, twin.vertical_step(cm, k), atol=1e-9)


@settings(max_examples=50, deadline=None)
@given(small_images, st.integers(1, 5), st.integers(1, 3), st.data())
def test_structure_matches_twin(image, bin_cols, d, data):
    h, w = image.shape
    nb = w // bin_cols
    if nb == 0:
        return
    c0 = data.draw(st.integers(0, w - nb * bin_cols))
    r0 = data.draw(st.integers(0, h - 1))
    r1 = data.draw(st.integers(r0 + 1, h))
    out = np.full((3, r1 - r0 + 1, nb), np.nan)
    ts._structure(image, r0, c0, r1, bin_cols, d, out)
    np.testing.assert_array_equal(out, twin.structure(image, r0, c0, r1, bin_cols, d, nb))


@settings(max_examples=50, deadline=None)
@given(
    arrays(np.float64, st.tuples(st.integers(1, 20), st.integers(1, 12)), elements=st.floats(-50, 50)),
    st.lists(st.floats(-0.5, 0.5), min_size=1, max_size=5),
    st.sampled_from([1.0, 2.0, 4.0]),
)
def test_line_scores_match_twin(g, slopes, bin_width):
    slopes = np.array(slopes)
    out = np.full((g.shape[0], len(slopes)), np.nan)
    ts._line_scores(np.ascontiguousarray(g), slopes, bin_width, out)
    np.testing.assert_allclose(out, twin.line_scores(g, slopes, bin_width), atol=1e-9)


@settings(max_examples=50, deadline=None)
@given(
    arrays(np.float64, st.tuples(st.integers(1, 8), st.integers(1, 5)), elements=st.floats(-20, 20)),
    st.sampled_from([-1.0, 1.0]),
    st.integers(0, 2),
    st.integers(0, 2),
    st.data(),
)
def test_band_path_is_optimal(g, sign, half, max_step, data):
    h, nb = g.shape
    center = np.array(data.draw(st.lists(st.floats(-2, h + 1), min_size=nb, max_size=nb)))
    w = 2 * half + 1
    acc = np.empty((nb, w))
    back = np.empty((nb, w), np.int64)
    path = np.full(nb, -99, np.int64)
    ts._band_path(np.ascontiguousarray(g), sign, center, half, max_step, acc, back, path)
    best = twin.band_path_brute(g, sign, center, half, max_step)
    if best is None:  # no admissible path: the centre line, clipped
        np.testing.assert_array_equal(path, np.clip(np.round(center).astype(np.int64), 0, h - 1))
    else:
        assert twin.path_is_admissible(path, h, center, half, max_step)
        assert twin.band_path_score(g, sign, path) == pytest.approx(best, abs=1e-9)


# ----------------------------------------------------------------------------------------------
# Analytic phantoms


@pytest.mark.parametrize("seed", [0, 1])
def test_flat_phantom_thickness(seed):
    img, s, d = phantom(seed=seed)
    res = tk.measure_thickness(img)
    assert res.thickness_px == pytest.approx(240.0, abs=2.0)
    assert res.superficial_rc.shape == res.deep_rc.shape
    np.testing.assert_array_equal(res.superficial_rc[:, 1], res.deep_rc[:, 1])
    assert np.all(np.diff(res.superficial_rc[:, 1]) > 0)
    assert res.confidence > 0.8


def test_tilted_phantom_lines_followed():
    img, s, d = phantom(sup=(50.0, 80.0), deep=(320.0, 270.0), seed=3)
    res = tk.measure_thickness(img)
    for col in (20.0, 240.0, 460.0):
        assert row_at(res.superficial_rc, col) == pytest.approx(s(col), abs=2.0)
        assert row_at(res.deep_rc, col) == pytest.approx(d(col), abs=2.0)


def test_thickness_is_the_median_over_columns_of_a_curved_muscle():
    """The deep aponeurosis slopes down by 15 rows over the right third: ``thickness_px`` is the
    median of the per-column gaps between the lines (240 rows over two thirds of the columns), not
    their mean, which the slope pulls up."""
    img, s, d = phantom(deep_bend=15.0, seed=11)
    res = tk.measure_thickness(img)
    for col in np.arange(4.0, 476.0, 8.0):
        assert row_at(res.deep_rc, col) == pytest.approx(d(col), abs=2.0)  # the bend is followed
    gaps = res.deep_rc[:, 0] - res.superficial_rc[:, 0]
    assert gaps.mean() - np.median(gaps) > 2.0  # the case tells a median from a mean
    assert res.thickness_px == pytest.approx(np.median(gaps), abs=1e-9)
    assert res.thickness_px == pytest.approx(240.0, abs=1.0)


def test_screen_capture_phantom_roi_none():
    img, s, d = phantom(shape=(360, 420), sup=(45.0, 55.0), deep=(250.0, 265.0), seed=4)
    cap, (dr, dc) = screen_capture(img)
    res = tk.measure_thickness(cap)
    r0, c0, r1, c1 = res.region_rc
    assert abs(r0 - dr) <= 3 and abs(c0 - dc) <= 3
    assert abs(r1 - (dr + 360)) <= 3 and abs(c1 - (dc + 420)) <= 3
    for col in (30.0, 210.0, 390.0):
        assert row_at(res.superficial_rc, col + dc) == pytest.approx(s(col) + dr, abs=2.0)
        assert row_at(res.deep_rc, col + dc) == pytest.approx(d(col) + dr, abs=2.0)


def test_roi_and_previous_tracking():
    img, s, d = phantom(seed=5)
    res = tk.measure_thickness(img, roi=(0, 20, 400, 460))
    assert res.region_rc == (0, 20, 400, 460)
    assert res.superficial_rc[0, 1] >= 20 and res.superficial_rc[-1, 1] < 460
    # next frame: the whole scene moved down by 3 rows
    img2, _, _ = phantom(sup=(63.0, 63.0), deep=(303.0, 303.0), seed=6)
    res2 = tk.measure_thickness(img2, roi=(0, 20, 400, 460), previous=res)
    assert res2.thickness_px == pytest.approx(240.0, abs=2.0)
    assert row_at(res2.superficial_rc, 240) == pytest.approx(63.0, abs=2.0)
    # previous from a larger frame (region outside this one): analysed from scratch, no error
    big, _, _ = phantom(shape=(400, 600), seed=7)
    res3 = tk.measure_thickness(img2, previous=tk.measure_thickness(big))
    assert res3.thickness_px == pytest.approx(240.0, abs=2.0)


def test_end_coherence_drops_where_a_line_fades_at_one_end():
    """A deep aponeurosis missing over the left quarter keeps most of its coherence but loses its
    end coherence (the fraction of clear-edge bins over its worse end)."""
    coh, end = tk.LINE_FEATURES.index("coherence"), tk.LINE_FEATURES.index("end_coherence")
    for fade, expected_end in ((False, 1.0), (True, 0.0)):
        img, _, _ = phantom(shape=(200, 192), sup=(40.0, 40.0), deep=(150.0, 150.0), fascicles=False, seed=8)
        if fade:
            img[130:, :48] = img[100:110, :48].mean().astype(np.uint8)
        _, _, (_, feats, paths), _ = tf._line_candidates(img, (0, 0, *img.shape))
        i = int(np.argmin([abs(np.median(p) - 150.0) for p in paths]))
        assert abs(np.median(paths[i]) - 150.0) <= 2
        assert feats[i, coh] > 0.7
        assert feats[i, end] == pytest.approx(expected_end, abs=0.1)


def test_oblique_ratio_is_high_under_the_superficial_aponeurosis_only():
    """Oblique striations below and none above: the superficial aponeurosis scores a high
    ``oblique_ratio``; a fascia in the subcutaneous fat above it (horizontal layers both sides)
    scores lower."""
    ratio = tk.LINE_FEATURES.index("oblique_ratio")
    img, _, _ = phantom(sup=(90.0, 90.0), seed=9)
    img[36:42] = np.clip(img[36:42].astype(np.int64) * 2, 0, 255).astype(np.uint8)  # fascia in the fat
    _, (_, feats, paths), _, _ = tf._line_candidates(img, (0, 0, *img.shape))
    rows = np.array([np.median(p) for p in paths])
    apo, fascia = int(np.argmin(np.abs(rows - 90.0))), int(np.argmin(np.abs(rows - 42.0)))
    assert abs(rows[apo] - 90.0) <= 2 and abs(rows[fascia] - 42.0) <= 3
    assert feats[apo, ratio] > 0.7
    assert feats[apo, ratio] > feats[fascia, ratio] + 0.2


# ----------------------------------------------------------------------------------------------
# Clicked lines


def layered_phantom(seed=10):
    """A small flat phantom (superficial 30, deep 150) with a second muscle's aponeurosis: a bright
    band whose top edge (dark-to-bright, a deep-type edge) is at row 90."""
    img, _, _ = phantom(shape=(200, 240), sup=(30.0, 30.0), deep=(150.0, 150.0), seed=seed)
    img[90:96] = np.clip(img[90:96].astype(np.int64) * 3, 0, 255).astype(np.uint8)
    return img


@pytest.mark.parametrize("deep_row", [90.0, 150.0])
def test_a_click_on_a_deep_edge_makes_it_the_deep_line(deep_row):
    """Two muscles: a click on either deep-type edge makes it the deep line; the superficial line
    is then one of the superficial-type edges above it (rows 30 and 96)."""
    img = layered_phantom()
    res = tk.measure_thickness(img, deep_at_rc=(deep_row + 3.0, 50.0))
    above = [r for r in (30.0, 96.0) if r < deep_row]
    for col in (10.0, 120.0, 230.0):
        assert row_at(res.deep_rc, col) == pytest.approx(deep_row, abs=2.0)
        assert min(abs(row_at(res.superficial_rc, col) - r) for r in above) <= 2.0


def test_a_click_on_a_superficial_edge_and_both_clicks():
    img = layered_phantom()
    res = tk.measure_thickness(img, superficial_at_rc=(96.0, 150.0))  # the band's lower edge
    assert row_at(res.superficial_rc, 120) == pytest.approx(96.0, abs=2.0)
    assert row_at(res.deep_rc, 120) == pytest.approx(150.0, abs=2.0)  # the only deep edge below it
    res = tk.measure_thickness(img, superficial_at_rc=(31.0, 20.0), deep_at_rc=(152.0, 200.0))
    assert res.thickness_px == pytest.approx(120.0, abs=2.0)  # both muscles: the clicks decide


def test_a_click_finds_a_superficial_aponeurosis_below_the_automatic_search():
    """Thick subcutaneous fat: the superficial aponeurosis at 60 % of the height is deeper than the
    automatic search looks (SUP_MAX_DEPTH); a click on it still finds it."""
    img, _, _ = phantom(shape=(200, 240), sup=(120.0, 120.0), deep=(180.0, 180.0), seed=4)
    assert 120.0 > tf.SUP_MAX_DEPTH * 200
    res = tk.measure_thickness(img, superficial_at_rc=(121.0, 100.0))
    for col in (10.0, 120.0, 230.0):
        assert row_at(res.superficial_rc, col) == pytest.approx(120.0, abs=2.0)
        assert row_at(res.deep_rc, col) == pytest.approx(180.0, abs=2.0)


def test_a_clicked_tilted_line_is_followed_to_both_ends():
    img, s, d = phantom(shape=(200, 240), sup=(25.0, 40.0), deep=(160.0, 135.0), seed=11)
    res = tk.measure_thickness(img, deep_at_rc=(d(120.0), 120.0))
    for col in (6.0, 120.0, 234.0):
        assert row_at(res.deep_rc, col) == pytest.approx(d(col), abs=2.0)
        assert row_at(res.superficial_rc, col) == pytest.approx(s(col), abs=2.0)


def test_a_click_overrides_tracking_and_stays_near_a_featureless_click():
    img = layered_phantom()
    auto = tk.measure_thickness(img)
    res = tk.measure_thickness(img, previous=auto, deep_at_rc=(91.0, 120.0))
    assert row_at(res.deep_rc, 120) == pytest.approx(90.0, abs=2.0)
    flat = np.full((120, 160), 80, np.uint8)  # no edge anywhere: the lines stay near the clicks
    res = tk.measure_thickness(flat, superficial_at_rc=(20.0, 80.0), deep_at_rc=(90.0, 80.0))
    assert abs(row_at(res.superficial_rc, 80) - 20.0) <= tk.GUIDE_HALF + 1
    assert abs(row_at(res.deep_rc, 80) - 90.0) <= tk.GUIDE_HALF + 1
    assert res.confidence == 0.0


@pytest.mark.parametrize(
    "clicks, match",
    [
        ({"superficial_at_rc": (60.0, 120.0), "deep_at_rc": (63.0, 120.0)}, "cross or come within"),
        ({"superficial_at_rc": (190.0, 120.0)}, "no deep line below"),  # the bottom edge of the picture
        ({"deep_at_rc": (32.0, 120.0)}, "no superficial line above"),  # the superficial edge, tapped as deep
    ],
)
def test_clicks_that_leave_no_room_for_the_other_line_are_refused(clicks, match):
    """Never a deep line above the superficial one: lines closer than LINE_GAP are refused."""
    with pytest.raises(InputError, match=match):
        tk.measure_thickness(layered_phantom(), **clicks)


def test_a_click_at_the_region_border_and_inside_an_roi():
    img = layered_phantom()
    res = tk.measure_thickness(img, deep_at_rc=(199.9, 239.9))  # a corner: no slope may wrap to another line
    assert abs(row_at(res.deep_rc, 239.9) - 199.9) <= tk.GUIDE_HALF + 1
    res = tk.measure_thickness(img, roi=(17, 10, 200, 230), deep_at_rc=(91.0, 100.0))
    assert res.region_rc == (17, 10, 200, 230)
    assert row_at(res.deep_rc, 100) == pytest.approx(90.0, abs=2.0)
    assert res.deep_at_rc == pytest.approx((row_at(res.deep_rc, 100.0), 100.0))
    assert res.superficial_at_rc is None


def test_a_held_line_is_tracked_kept_by_a_click_on_the_other_and_found_again():
    img = layered_phantom()
    first = tk.measure_thickness(img, deep_at_rc=(93.0, 50.0))  # the upper muscle's deep line, not the 150 one
    assert row_at(first.deep_rc, 120) == pytest.approx(90.0, abs=2.0) and not first.tracked
    assert first.deep_at_rc[1] == 50.0 and abs(first.deep_at_rc[0] - 90.0) <= 2.0
    # tracked: the held point moves with its line
    img2, _, _ = phantom(shape=(200, 240), sup=(33.0, 33.0), deep=(153.0, 153.0), seed=12)
    img2[93:99] = np.clip(img2[93:99].astype(np.int64) * 3, 0, 255).astype(np.uint8)
    nxt = tk.measure_thickness(img2, previous=first)
    assert nxt.tracked and nxt.deep_at_rc[1] == 50.0 and abs(nxt.deep_at_rc[0] - 93.0) <= 2.0
    # a click on the superficial line keeps the deep one held (without it the choice is 150)
    alone = tk.measure_thickness(img, superficial_at_rc=(31.0, 200.0))
    assert row_at(alone.deep_rc, 120) == pytest.approx(150.0, abs=2.0)
    both = tk.measure_thickness(img, previous=first, superficial_at_rc=(31.0, 200.0))
    assert row_at(both.deep_rc, 120) == pytest.approx(90.0, abs=2.0) and both.superficial_at_rc[1] == 200.0
    # not tracked (here: another region) -> found again through the held point, not by the choice
    again = tk.measure_thickness(img, roi=(0, 0, 200, 236), previous=first)
    assert not again.tracked and row_at(again.deep_rc, 120) == pytest.approx(90.0, abs=2.0)
    assert again.deep_at_rc[1] == 50.0
    # a held point outside the new region is dropped: the automatic choice
    gone = tk.measure_thickness(img, roi=(0, 60, 200, 240), previous=first)
    assert gone.deep_at_rc is None and row_at(gone.deep_rc, 120) == pytest.approx(150.0, abs=2.0)


def test_lines_never_cross_when_tracked_or_found_automatically():
    """Clicked lines 10 rows apart, then a frame where their edges swap (a bright band between
    them): tracking would cross them, so the frame is searched afresh instead. Random layered
    frames (the fallback without any pair included) never give a deep line above the superficial."""
    rng = np.random.default_rng(0)

    def speckled(a):
        return np.clip(a * rng.rayleigh(1.0, a.shape) / np.sqrt(np.pi / 2), 0, 255).astype(np.uint8)

    a = np.full((200, 240), 70.0)
    a[:100], a[110:] = 180.0, 180.0
    first = tk.measure_thickness(speckled(a), superficial_at_rc=(100.0, 120.0), deep_at_rc=(110.0, 120.0))
    assert first.thickness_px == pytest.approx(10.0, abs=2.0)
    b = np.full((200, 240), 70.0)
    b[100:110] = 200.0
    nxt = tk.measure_thickness(speckled(b), previous=first)
    assert not nxt.tracked and (nxt.deep_rc[:, 0] - nxt.superficial_rc[:, 0]).min() >= tk.LINE_GAP
    for _ in range(40):
        h, w = (int(v) for v in rng.integers((32, 32), (80, 120)))
        c = np.full((h, w), 80.0)
        for _ in range(3):
            r = int(rng.integers(0, h - 4))
            c[r : r + int(rng.integers(2, 8))] = rng.uniform(120, 230)
        res = tk.measure_thickness(speckled(c))
        assert (res.deep_rc[:, 0] - res.superficial_rc[:, 0]).min() >= 1.0 and res.thickness_px > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"deep_at_rc": (float("nan"), 10.0)}, "not finite"),
        ({"deep_at_rc": (10.0, float("inf"))}, "not finite"),
        ({"deep_at_rc": ("a", 3)}, "pair of numbers"),
        ({"deep_at_rc": (1.0, 2.0, 3.0)}, "pair of numbers"),
        ({"superficial_at_rc": 5.0}, "pair of numbers"),
        ({"deep_at_rc": (100.0, 50.0)}, "outside the analysed region"),
        ({"deep_at_rc": (-1.0, 50.0)}, "outside the analysed region"),
        ({"superficial_at_rc": (50.0, 10.0), "roi": (0, 20, 100, 100)}, "outside the analysed region"),
        ({"deep_at_rc": "99"}, "pair of numbers"),
        ({"deep_at_rc": (True, False)}, "pair of numbers"),
        ({"deep_at_rc": (np.bool_(True), 5.0)}, "pair of numbers"),
        ({"deep_at_rc": (10**400, 5.0)}, "pair of numbers"),
        ({"superficial_at_rc": (60.0, 50.0), "deep_at_rc": (40.0, 50.0)}, "cross"),
        ({"superficial_at_rc": (60.0, 50.0), "deep_at_rc": (60.0, 70.0)}, "cross"),
    ],
)
def test_bad_clicks(kwargs, match):
    with pytest.raises(InputError, match=match):
        tk.measure_thickness(np.zeros((100, 100), np.uint8), **kwargs)


# ----------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    "image, match",
    [
        (np.zeros((100, 100), np.float32), "uint8"),
        (np.zeros((100, 100, 3), np.uint8), "2-D"),
        (np.zeros((100,), np.uint8), "2-D"),
        (np.zeros((20, 100), np.uint8), "smaller"),
        (np.zeros((100, 200), np.uint8)[:, ::2], "contiguous"),
        ([[0, 1], [2, 3]], "numpy"),
    ],
)
def test_bad_image(image, match):
    with pytest.raises(InputError, match=match):
        tk.measure_thickness(image)


@pytest.mark.parametrize(
    "roi",
    [(0, 0, 0, 50), (10, 10, 5, 60), (-1, 0, 50, 50), (0, 0, 101, 50), (0, 0, 50, 20), (0, 0, 50)],
)
def test_bad_roi(roi):
    with pytest.raises(InputError):
        tk.measure_thickness(np.zeros((100, 100), np.uint8), roi=roi)


def test_bad_previous():
    with pytest.raises(InputError, match="previous"):
        tk.measure_thickness(np.zeros((100, 100), np.uint8), previous=(1, 2))


def test_featureless_frame_does_not_crash():
    res = tk.measure_thickness(np.zeros((64, 64), np.uint8))
    assert 0.0 <= res.confidence <= 1.0
    assert res.confidence == 0.0


# ----------------------------------------------------------------------------------------------
# Real data (TimTrack): a subset, MAE floor a bit looser than tools/accuracy_thickness.py shows

REAL_SUBSET_STEP = 6  # every 6th image of truth/thickness.json (28 images, both datasets)
REAL_MAE_FLOOR_PX = 20.0  # subset MAE 5.4 px (shipped weights, which saw these images); naive baseline ~85 px


@pytest.mark.shared_data
@pytest.mark.jit_only
def test_real_images_mae(shared_data):
    from PIL import Image

    truth = json.loads((shared_data / "truth" / "thickness.json").read_text())
    errs = []
    for rec in truth["images"][::REAL_SUBSET_STEP]:
        with Image.open(shared_data / rec["path"]) as im:
            img = np.array(im.convert("L"), np.uint8, order="C")
        res = tk.measure_thickness(img)
        col = rec["measure_at_col"]
        errs.append(abs(row_at(res.deep_rc, col) - row_at(res.superficial_rc, col) - rec["mean_px"]))
    assert len(errs) >= 20
    assert np.mean(errs) < REAL_MAE_FLOOR_PX, f"MAE {np.mean(errs):.1f} px"
