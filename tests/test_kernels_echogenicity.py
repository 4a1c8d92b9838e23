"""Echogenicity kernel: parity with the plain-numpy twin, analytic regions, bad input."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mmstream.errors import InputError
from mmstream.kernels.echogenicity import echogenicity
from twins import echogenicity as twin

frames = arrays(np.uint8, st.tuples(st.integers(1, 40), st.integers(1, 40)))


def assert_same(stats, ref):
    mean, std, n, hist = ref
    assert stats.n_px == n
    np.testing.assert_array_equal(stats.histogram, hist)
    if n:
        assert stats.mean == pytest.approx(mean, rel=1e-12, abs=1e-9)
        assert stats.std == pytest.approx(std, rel=1e-9, abs=1e-9)
    else:
        assert np.isnan(stats.mean) and np.isnan(stats.std)


@settings(max_examples=60, deadline=None)
@given(frames, st.data())
def test_rect_matches_twin(image, data):
    h, w = image.shape
    r0 = data.draw(st.integers(-5, h - 1))
    c0 = data.draw(st.integers(-5, w - 1))
    r1 = data.draw(st.integers(max(r0, 0) + 1, h + 5))
    c1 = data.draw(st.integers(max(c0, 0) + 1, w + 5))
    rect = (r0, c0, r1, c1)
    assert_same(echogenicity(image, rect=rect), twin.echogenicity(image, rect=rect))


@settings(max_examples=60, deadline=None)
@given(frames, st.data())
def test_mask_matches_twin(image, data):
    mask = data.draw(arrays(np.bool_, image.shape))
    assert_same(echogenicity(image, mask=mask), twin.echogenicity(image, mask=mask))


@settings(max_examples=80, deadline=None)
@given(frames, st.data())
def test_polygon_matches_twin(image, data):
    h, w = image.shape
    k = data.draw(st.integers(3, 9))
    coord = st.floats(-3, max(h, w) + 3, allow_nan=False)
    # half of the polygons on integer vertices: the exact edge and vertex cases of the half-open rule
    if data.draw(st.booleans()):
        coord = st.integers(-3, max(h, w) + 3).map(float)
    poly = np.array([[data.draw(coord), data.draw(coord)] for _ in range(k)])
    assert_same(echogenicity(image, polygon_rc=poly), twin.echogenicity(image, polygon_rc=poly))


def test_whole_frame_default(rng):
    img = rng.integers(0, 256, (64, 48), dtype=np.uint8)
    s = echogenicity(img)
    assert s.n_px == img.size
    assert s.mean == pytest.approx(img.mean())
    assert s.std == pytest.approx(img.std())


def test_disc_phantom_area_and_mean():
    # analytic: a disc of radius 20 px with grey 200 on a background of 50
    rr, cc = np.mgrid[0:101, 0:101]
    disc = (rr - 50.0) ** 2 + (cc - 50.0) ** 2 < 20.0**2
    img = np.where(disc, 200, 50).astype(np.uint8)
    theta = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    poly = np.c_[50 + 20 * np.sin(theta), 50 + 20 * np.cos(theta)]
    s = echogenicity(img, polygon_rc=poly)
    assert s.n_px == pytest.approx(np.pi * 400, rel=0.01)
    assert s.mean == pytest.approx(200.0, abs=0.5)
    assert echogenicity(img, mask=disc).mean == 200.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rect": (5, 5, 5, 9)}, "empty"),
        ({"rect": (100, 100, 120, 120)}, "outside"),
        ({"polygon_rc": np.zeros((2, 2))}, "K >= 3"),
        ({"polygon_rc": np.array([[0, 0], [np.nan, 1], [3, 3]])}, "NaN"),
        ({"mask": np.ones((3, 3), bool)}, "mask shape"),
        ({"rect": (0, 0, 4, 4), "mask": np.ones((10, 10), bool)}, "at most one"),
    ],
)
def test_bad_region(kwargs, match):
    img = np.zeros((10, 10), np.uint8)
    with pytest.raises(InputError, match=match):
        echogenicity(img, **kwargs)


@pytest.mark.parametrize(
    "image", [np.zeros((4, 4), np.float32), np.zeros((4, 4, 3), np.uint8), np.zeros((0, 4), np.uint8), [[1, 2]]]
)
def test_bad_image(image):
    with pytest.raises(InputError):
        echogenicity(image)


def test_non_contiguous_view(rng):
    big = rng.integers(0, 256, (80, 80), dtype=np.uint8)
    view = big[::2, 1::3]
    assert_same(echogenicity(view, rect=(2, 2, 30, 20)), twin.echogenicity(np.ascontiguousarray(view), rect=(2, 2, 30, 20)))
