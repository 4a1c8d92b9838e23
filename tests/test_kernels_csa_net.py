"""Tests of mmstream.kernels.csa_net: parity with the numpy twins, analytic discs, the network input,
hostile network files, the shipped network, and the export of tools/train_csa_net.py (torch)."""

import io
import os
import sys
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmstream.errors import ReadError
from mmstream.kernels import csa_net
from twins import csa_net as twin

NO_JIT = os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0")
TOOLS = Path(__file__).resolve().parents[1] / "tools"
N = csa_net.NET_SIDE
PAD_GREY = -csa_net.GREY_CENTRE / csa_net.GREY_SCALE  # normalised grey of pixels outside the image


def _random_params(rng, scale=0.1):
    return {k: (rng.standard_normal(s) * scale).astype(np.float32) for k, s in csa_net.layer_shapes().items()}


def _he_params(rng, gain, channels=None):
    """Weights of std ``gain * sqrt(2 / fan_in)``: activations keep their scale through the ten
    convolutions (logits of a few units, as a trained network's), so float32 rounding stays near
    1e-7 relative; larger gains saturate the logistic, where the float32 forward legitimately
    differs from the float64 twin by more."""
    out = {}
    for k, s in csa_net.layer_shapes(channels).items():
        std = gain * np.sqrt(2.0 / np.prod(s[1:])) if len(s) > 1 else 0.3
        out[k] = (rng.standard_normal(s) * std).astype(np.float32)
    return out


def _rays(n_k, phase=0.0):
    th = phase + 2 * np.pi * np.arange(n_k) / n_k
    return np.ascontiguousarray(np.sin(th)), np.ascontiguousarray(np.cos(th))


def _prob_polar(prob, center_r, center_c, sin_t, cos_t, n):
    out = np.full((len(sin_t), n), np.nan)
    csa_net._prob_polar(prob, csa_net.POOL, center_r, center_c, sin_t, cos_t, out)
    return out


def _features(ppolar, radii):
    out = np.full((radii.shape[0], csa_net.N_NET_FEATURES), np.nan)
    csa_net._net_features(ppolar, radii, np.full((ppolar.shape[0], ppolar.shape[1] + 1), np.nan), out)
    return out


# ------------------------------------------------------------------------------------------
# Parity with the twins

_crop_coord = st.one_of(
    st.floats(-60, csa_net.CROP_PX + 60, allow_nan=False),
    st.sampled_from([-0.5, 0.0, 0.9, 1.0, 190.0, 191.5, csa_net.CROP_PX - 2.0, csa_net.CROP_PX - 0.5]),
)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    cr=_crop_coord,
    cc=_crop_coord,
    n_k=st.integers(1, 9),
    n=st.integers(4, 40),
    phase=st.floats(0, 2 * np.pi),
)
def test_prob_polar_matches_twin(seed, cr, cc, n_k, n, phase):
    rng = np.random.default_rng(seed)
    prob = rng.random((N, N), dtype=np.float32)
    s, c = _rays(n_k, phase)
    expected = twin.prob_polar(prob, cr, cc, s, c, n)
    np.testing.assert_allclose(_prob_polar(prob, cr, cc, s, c, n), expected, rtol=0, atol=1e-9)
    # and on a read-only map, as a frame's
    prob.flags.writeable = False
    np.testing.assert_allclose(_prob_polar(prob, cr, cc, s, c, n), expected, rtol=0, atol=1e-9)


_radius = st.one_of(st.floats(-5, 50, allow_nan=False), st.sampled_from([0.0, 0.5, 1.0, 3.25, 4.0, 39.5, 40.0, 41.0]))


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_k=st.integers(1, 8),
    n=st.integers(4, 40),
    sparse=st.booleans(),
    data=st.data(),
)
def test_net_features_matches_twin(seed, n_k, n, sparse, data):
    rng = np.random.default_rng(seed)
    ppolar = rng.random((n_k, n))
    if sparse:  # mostly zero, some exact 0/1: empty maps and plateaus
        ppolar = np.where(rng.random((n_k, n)) < 0.7, 0.0, np.round(ppolar))
    n_cand = data.draw(st.integers(1, 6))
    outline = st.lists(_radius, min_size=n_k, max_size=n_k)
    radii = np.array(data.draw(st.lists(outline, min_size=n_cand, max_size=n_cand)))
    np.testing.assert_allclose(_features(ppolar, radii), twin.net_features(ppolar, radii), rtol=1e-9, atol=1e-9)


@pytest.mark.skipif(NO_JIT, reason="numpy only, no kernel: runs in the JIT suite")
@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    gain=st.floats(0.6, 1.2),
    channels=st.sampled_from([None, (4, 8), (4, 6, 8, 12), (2, 3, 4, 5, 6)]),
)
def test_forward_matches_twin(seed, gain, channels):
    """The shipped depth and others: the forward pass reads its depth from the parameters."""
    rng = np.random.default_rng(seed)
    params = _he_params(rng, gain, channels)
    x = np.stack([rng.standard_normal((N, N)), rng.random((N, N))]).astype(np.float32)
    p = csa_net.forward(params, x)
    assert p.shape == (N, N) and p.dtype == np.float32
    assert np.all((p >= 0) & (p <= 1))
    np.testing.assert_allclose(p, twin.forward(params, x), rtol=1e-4, atol=1e-7)


@pytest.mark.skipif(NO_JIT, reason="numpy only, no kernel: runs in the JIT suite")
def test_forward_parity_is_sensitive_to_the_skip_order():
    """Random parameters do tell the orders apart: the twin with d1's weights arranged for the
    concatenation [skip, upsampled] differs from the module's output, so the parity above would
    catch that mistake."""
    rng = np.random.default_rng(3)
    params = _he_params(rng, 1.0)
    x = np.stack([rng.standard_normal((N, N)), csa_net._seed_channel()]).astype(np.float32)
    swapped = dict(params)
    w = params["d1.0.weight"]
    a = csa_net.CHANNELS[0]
    swapped["d1.0.weight"] = np.ascontiguousarray(np.concatenate([w[:, -a:], w[:, :-a]], axis=1))
    assert np.abs(twin.forward(swapped, x) - csa_net.forward(params, x)).max() > 1e-3


_half = st.sampled_from([-0.5, 0.5, 1.5, 2.5])


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=st.tuples(st.integers(1, 500), st.integers(1, 500)),
    dtype=st.sampled_from([np.uint8, np.float32]),
    frac=st.tuples(st.floats(-0.3, 1.3), st.floats(-0.3, 1.3)),
    half=st.tuples(st.booleans(), _half, _half),
)
def test_net_input_matches_twin(seed, shape, dtype, frac, half):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, shape).astype(dtype)
    seed_rc = (frac[0] * shape[0], frac[1] * shape[1])  # beyond the image too
    if half[0]:  # exact half pixels: the rounding of the seed's pixel
        seed_rc = (float(int(seed_rc[0])) + half[1], float(int(seed_rc[1])) + half[2])
    x, origin = csa_net.net_input(image, seed_rc)
    expected, expected_origin = twin.net_input(image, seed_rc)
    assert origin == expected_origin
    assert x.shape == (2, N, N) and x.dtype == np.float32
    np.testing.assert_allclose(x, expected, rtol=0, atol=2e-6)


@pytest.mark.skipif(NO_JIT, reason="a whole forward pass per example; the kernels run in their own tests")
def test_public_net_features_matches_the_twins_chain():
    rng = np.random.default_rng(11)
    params = _he_params(rng, 1.0)
    image = rng.integers(0, 256, (300, 420)).astype(np.uint8)
    s, c = _rays(16, 0.1)
    radii = rng.uniform(0, 150, (5, 16))
    for seed_rc in [(150.3, 200.8), (10.5, 400.2)]:
        x, (r0, c0) = twin.net_input(image, seed_rc)
        ppolar = twin.prob_polar(twin.forward(params, x), seed_rc[0] - r0, seed_rc[1] - c0, s, c, csa_net.N_PROB_R)
        expected = twin.net_features(ppolar, radii)
        got = csa_net.net_features(image, seed_rc, radii, s, c, (params,))
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(NO_JIT, reason="a whole forward pass per member; the kernels run in their own tests")
def test_ensemble_features_read_the_mean_probability_of_its_members():
    """Two members: the features of the twins' mean probability, which differ from either member's
    own (the members' maps do differ)."""
    rng = np.random.default_rng(12)
    nets = (_he_params(rng, 1.0), _he_params(rng, 1.0))
    image = rng.integers(0, 256, (300, 420)).astype(np.uint8)
    s, c = _rays(16, 0.1)
    radii = rng.uniform(0, 150, (5, 16))
    seed_rc = (150.3, 200.8)
    x, (r0, c0) = twin.net_input(image, seed_rc)
    maps = [twin.forward(p, x) for p in nets]
    mean = twin.prob_polar((maps[0] + maps[1]) / 2, seed_rc[0] - r0, seed_rc[1] - c0, s, c, csa_net.N_PROB_R)
    got = csa_net.net_features(image, seed_rc, radii, s, c, nets)
    np.testing.assert_allclose(got, twin.net_features(mean, radii), rtol=1e-4, atol=1e-6)
    for p in nets:
        assert np.abs(got - csa_net.net_features(image, seed_rc, radii, s, c, (p,))).max() > 1e-3
    xf = x.astype(np.float32)
    np.testing.assert_allclose(csa_net.probability(nets, xf), (maps[0] + maps[1]) / 2, rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------------------------------
# Analytic: a disc of probability 1

N_K = 32


def _disc_polar(r0, n):
    """1 for samples at radius < r0, else 0 (samples at radius i + 0.5)."""
    return np.repeat((np.arange(n) + 0.5 < r0).astype(np.float64)[None], N_K, axis=0)


def _check_disc(ppolar, r0, tol):
    radii = np.array([[r0], [2 * r0], [0.0]]).repeat(N_K, axis=1)
    dice, log_dice, precision, recall, p_outline, p_dev = _features(ppolar, radii).T
    assert dice[0] == pytest.approx(1.0, abs=tol)
    assert precision[0] == pytest.approx(1.0, abs=tol)
    assert recall[0] == pytest.approx(1.0, abs=tol)
    assert p_outline[0] == pytest.approx(0.5, abs=5 * tol)
    assert p_dev[0] == pytest.approx(0.0, abs=5 * tol)
    # twice the radius: all the mass, four times the area: 2 pi r0^2 / (4 pi r0^2 + pi r0^2)
    assert dice[1] == pytest.approx(0.4, abs=tol)
    assert precision[1] == pytest.approx(0.25, abs=tol)
    assert recall[1] == pytest.approx(1.0, abs=tol)
    assert p_outline[1] == pytest.approx(0.0, abs=tol) and p_dev[1] == pytest.approx(0.5, abs=tol)
    np.testing.assert_allclose(log_dice, np.log(dice + 1e-3), rtol=1e-12)
    # an empty outline: nothing inside, the probability at the centre is 1
    assert dice[2] == 0.0 and precision[2] == 0.0 and recall[2] == 0.0 and p_outline[2] == pytest.approx(1.0)


def test_disc_in_polar_form_scores_its_circle():
    _check_disc(_disc_polar(30.0, 80), 30.0, 1e-9)


def test_disc_through_prob_polar_scores_its_circle():
    """A (NET_SIDE, NET_SIDE) map of a disc of radius 120 crop px (its edge anti-aliased over one
    network px, POOL crop px), resampled around its centre, scores as the exact disc within 2 %;
    rays leave the crop beyond the disc, where the samples are 0."""
    r0 = 120.0
    q_centre = N // 2 - 1  # network px
    centre = (q_centre + 0.5) * csa_net.POOL - 0.5  # the same point in crop px
    q = np.arange(N)
    dist = np.hypot(q[:, None] - q_centre, q[None, :] - q_centre)
    prob = np.clip(r0 / csa_net.POOL + 0.5 - dist, 0.0, 1.0).astype(np.float32)
    s, c = _rays(N_K, 0.05)
    _check_disc(_prob_polar(prob, centre, centre, s, c, 250), r0, 0.02)


def test_prob_polar_constant_inside_the_crop_zero_outside():
    value = 0.37
    prob = np.full((N, N), value, np.float32)
    s, c = _rays(12, 0.2)
    center_r, center_c = 60.0, 300.0  # rays leave the crop on several sides
    n = csa_net.N_PROB_R
    out = _prob_polar(prob, center_r, center_c, s, c, n)
    rad = np.arange(n) + 0.5
    ur = center_r + rad[None] * s[:, None]
    uc = center_c + rad[None] * c[:, None]
    lim = csa_net.CROP_PX - 0.5
    inside = (ur >= -0.5) & (uc >= -0.5) & (ur <= lim) & (uc <= lim)
    assert inside.any() and not inside.all()
    np.testing.assert_allclose(out[inside], np.float32(value), rtol=1e-12)
    assert np.all(out[~inside] == 0.0)


# ------------------------------------------------------------------------------------------
# Network input


def test_net_input_near_a_corner_pads_with_zeros():
    v = 150.0
    image = np.full((400, 500), v, np.uint8)
    x, (r0, c0) = csa_net.net_input(image, (1.2, 0.6))  # seed's pixel (1, 1)
    assert (r0, c0) == (1 - csa_net.CROP_PX // 2, 1 - csa_net.CROP_PX // 2)
    grey = x[0]
    edge = -r0  # crop px of image row (and col) 0
    qb = edge // csa_net.POOL  # the network px holding it
    share = (csa_net.POOL * (qb + 1) - edge) / csa_net.POOL  # of that block's rows inside the image
    # network rows/cols before qb cover crop px outside the image
    np.testing.assert_allclose(grey[:qb, :], PAD_GREY, rtol=1e-6)
    np.testing.assert_allclose(grey[:, :qb], PAD_GREY, rtol=1e-6)
    # row qb: only `share` of its crop rows lie in the image
    np.testing.assert_allclose(grey[qb, qb + 1 :], (v * share - csa_net.GREY_CENTRE) / csa_net.GREY_SCALE, rtol=1e-6)
    np.testing.assert_allclose(grey[qb, qb], (v * share**2 - csa_net.GREY_CENTRE) / csa_net.GREY_SCALE, rtol=1e-6)
    np.testing.assert_allclose(grey[qb + 1 :, qb + 1 :], (v - csa_net.GREY_CENTRE) / csa_net.GREY_SCALE, rtol=1e-6)


def test_net_input_of_a_constant_image_is_constant_and_the_seed_peaks_at_the_centre():
    image = np.full((600, 700), 77, np.uint8)
    x, _ = csa_net.net_input(image, (300.0, 350.0))
    np.testing.assert_allclose(x[0], (77 - csa_net.GREY_CENTRE) / csa_net.GREY_SCALE, rtol=1e-6)
    seed = x[1]
    c = N // 2
    peak = seed[c - 1 : c + 1, c - 1 : c + 1]  # the four px around the centre (even side)
    assert np.all(peak == seed.max())
    assert seed.max() == pytest.approx(np.exp(-0.5 / (2 * csa_net.SEED_SIGMA_NET_PX**2)), rel=1e-6)
    np.testing.assert_allclose(seed, seed[::-1], atol=0)
    np.testing.assert_allclose(seed, seed.T, atol=0)
    assert seed[0, 0] < 1e-12
    # one SEED_SIGMA_NET_PX from the blob's centre ((N - 1) / 2 + SEED_SIGMA_NET_PX, between px j and j + 1): exp(-1/2)
    j = int((N - 1) / 2 + csa_net.SEED_SIGMA_NET_PX)
    assert np.sqrt(seed[c - 1, j] * seed[c - 1, j + 1]) / seed.max() == pytest.approx(np.exp(-0.5), rel=1e-3)


def test_net_input_crop_is_centred_on_the_seed_pixel():
    image = np.zeros((500, 500), np.uint8)
    image[240, 250] = 255
    x, (r0, c0) = csa_net.net_input(image, (239.6, 250.4))  # seed's pixel (240, 250)
    assert (240 - r0, 250 - c0) == (csa_net.CROP_PX // 2, csa_net.CROP_PX // 2)
    q = (csa_net.CROP_PX // 2) // csa_net.POOL
    hot = np.argwhere(x[0] > PAD_GREY + 1e-3)
    assert hot.tolist() == [[q, q]]


# ------------------------------------------------------------------------------------------
# Network files


@pytest.fixture()
def good(tmp_path):
    params = _random_params(np.random.default_rng(5))
    path = tmp_path / "net.npz"
    np.savez(path, **params)
    return path, params


def test_load_net_round_trip(good):
    path, params = good
    loaded = csa_net.load_net(path)
    assert set(loaded) == set(params)
    for k, v in params.items():
        assert loaded[k].dtype == np.float32 and loaded[k].shape == csa_net.layer_shapes()[k]
        np.testing.assert_array_equal(loaded[k], v)
    assert csa_net.load_net(str(path)).keys() == params.keys()


def _zip_of(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


def _npy(arr, shape=None) -> bytes:
    buf = io.BytesIO()
    if shape is None:
        np.save(buf, arr)
    else:  # a header that lies about the shape
        header = np.lib.format.header_data_from_array_1_0(arr)
        header["shape"] = shape
        np.lib.format.write_array_header_1_0(buf, header)
        buf.write(arr.tobytes())
    return buf.getvalue()


_FILES = {
    "not_a_zip": lambda p, params: p.write_bytes(b"not a network at all\n" * 10),
    "empty": lambda p, params: p.write_bytes(b""),
    "pickle": lambda p, params: p.write_bytes(__import__("pickle").dumps(params)),
    "object_array": lambda p, params: np.savez(p, **{**params, "out.bias": np.array([{"a": 1}], dtype=object)}),
    "declared_shape_beyond_data": lambda p, params: _zip_of(
        p, {f"{k}.npy": _npy(v, (10**8,) if k == "out.bias" else None) for k, v in params.items()}
    ),
}


@pytest.mark.parametrize("case", sorted(_FILES))
def test_load_net_refuses_unreadable_files(tmp_path, case, good):
    path = tmp_path / f"{case}.npz"
    _FILES[case](path, good[1])
    with pytest.raises(ReadError) as info:
        csa_net.load_net(path)
    assert str(path) in str(info.value)


# (array, its replacement from the good one; None: left out)
_ARRAYS = {
    "missing": ("e2.1.bias", lambda v: None),
    "extra": ("extra", lambda v: np.zeros(3, np.float32)),
    "wrong_shape": ("d1.0.weight", lambda v: np.zeros((4, 11, 3, 3), np.float32)),
    "transposed": ("out.weight", lambda v: v.T.copy()),
    "float64": ("e1.0.weight", lambda v: v.astype(np.float64)),
    "int32": ("out.bias", lambda v: np.zeros(1, np.int32)),
    "nan": ("e3.0.bias", lambda v: np.full(16, np.nan, np.float32)),
    "inf": ("d2.1.weight", lambda v: v * np.float32(np.inf)),
}


@pytest.mark.parametrize("case", sorted(_ARRAYS))
def test_load_net_refuses_wrong_arrays_naming_file_and_array(tmp_path, case, good):
    name, replace = _ARRAYS[case]
    params = dict(good[1])
    value = replace(params.pop(name, np.zeros(1, np.float32)))
    if value is not None:
        params[name] = value
    path = tmp_path / f"{case}.npz"
    np.savez(path, **params)
    with pytest.raises(ReadError) as info:
        csa_net.load_net(path)
    assert str(path) in str(info.value) and name in str(info.value)


def test_load_net_refuses_a_missing_file_and_a_directory(tmp_path):
    for path in (tmp_path / "absent.npz", tmp_path):
        with pytest.raises(ReadError, match=str(path)):
            csa_net.load_net(path)


def _truncated(p, good_bytes):
    p.write_bytes(good_bytes[: len(good_bytes) // 2])


def _corrupt_stored(p, good_bytes):
    data = bytearray(good_bytes)
    data[len(data) // 3 : len(data) // 3 + 64] = bytes(64)
    p.write_bytes(bytes(data))


def _corrupt_deflated(p, good_bytes):
    params = _random_params(np.random.default_rng(1))
    np.savez_compressed(p, **params)
    data = bytearray(p.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 200] = np.random.default_rng(2).integers(0, 256, 200, np.uint8).tobytes()
    p.write_bytes(bytes(data))


def _npy_not_npz(p, good_bytes):
    buf = io.BytesIO()
    np.save(buf, np.zeros(3, np.float32))
    p.write_bytes(buf.getvalue())


def _raw_member(p, good_bytes):
    members = {f"{k}.npy": _npy(v) for k, v in _random_params(np.random.default_rng(1)).items() if k != "out.bias"}
    _zip_of(p, {**members, "out.bias": b"not an npy member"})


def _declared_huge(p, good_bytes):  # 4 PB: beyond any address space, whatever the overcommit policy
    params = _random_params(np.random.default_rng(1))
    _zip_of(p, {f"{k}.npy": _npy(v, (2**50,) if k == "out.bias" else None) for k, v in params.items()})


def _patch_headers(p, good_bytes, local_off, central_off, value):
    """Set a 2-byte field of every local (PK 3 4) and central (PK 1 2) zip header."""
    data = bytearray(good_bytes)
    for sig, off in ((b"PK\x03\x04", local_off), (b"PK\x01\x02", central_off)):
        i = data.find(sig)
        while i >= 0:
            data[i + off : i + off + 2] = value.to_bytes(2, "little")
            i = data.find(sig, i + 4)
    p.write_bytes(bytes(data))


def _encrypted(p, good_bytes):  # general-purpose flag bit 0
    _patch_headers(p, good_bytes, 6, 8, 1)


def _unknown_compression(p, good_bytes):  # compression method 99 (AES), unsupported by zipfile
    _patch_headers(p, good_bytes, 8, 10, 99)


# Each once escaped load_net as another exception (BadZipFile, zlib.error, TypeError,
# AttributeError, MemoryError, RuntimeError, NotImplementedError) before the header-first reader.
_BROKEN = {
    "encrypted": _encrypted,
    "unknown_compression": _unknown_compression,
    "truncated": _truncated,
    "corrupt_stored": _corrupt_stored,
    "corrupt_deflated": _corrupt_deflated,
    "npy_not_npz": _npy_not_npz,
    "raw_member": _raw_member,
    "declared_huge": _declared_huge,
}


@pytest.mark.parametrize("case", sorted(_BROKEN))
def test_load_net_refuses_broken_archives(tmp_path, case, good):
    path = tmp_path / f"{case}.npz"
    _BROKEN[case](path, good[0].read_bytes())
    with pytest.raises(ReadError) as info:
        csa_net.load_net(path)
    assert str(path) in str(info.value)


def test_shipped_ensemble_has_every_array_of_distinct_members():
    for name in csa_net.SHIPPED:
        assert (resources.files("mmstream") / "data" / name).is_file(), f"{name} must ship"
    nets = csa_net.shipped_nets()
    assert len(nets) == len(csa_net.SHIPPED) == 2
    for params in nets:
        assert {k: (v.shape, v.dtype) for k, v in params.items()} == {
            k: (s, np.dtype(np.float32)) for k, s in csa_net.layer_shapes().items()
        }
        assert not any(v.flags.writeable for v in params.values())
    assert csa_net.shipped_nets() is nets  # loaded once, shared by every thread: read-only
    assert not np.array_equal(nets[0]["out.weight"], nets[1]["out.weight"])  # two trainings, not a copy


# ------------------------------------------------------------------------------------------
# The training tool's export (torch)


@pytest.mark.skipif(NO_JIT, reason="numpy and torch only, no kernel: runs in the JIT suite")
def test_exported_torch_network_matches_forward(tmp_path):
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(TOOLS))
    import train_csa_net

    torch.manual_seed(0)
    net = train_csa_net.build_net()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # folding must matter
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) * 2 + 0.1)
                m.weight.copy_(torch.randn(m.num_features, generator=gen) * 0.5 + 1)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
        net.out.weight.mul_(20.0)  # a spread of probabilities, not ~0.45 everywhere
    net.eval()
    path = tmp_path / "exported.npz"
    np.savez(path, **train_csa_net.export(net))
    params = csa_net.load_net(path)
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (400, 400)).astype(np.uint8)
    x, _ = csa_net.net_input(image, (200.0, 180.0))
    with torch.no_grad():
        expected = torch.sigmoid(net(torch.from_numpy(x[None]))).numpy()[0, 0]
    got = csa_net.forward(params, x)
    assert expected.std() > 1e-3  # not a constant output
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


@pytest.mark.shared_data
@pytest.mark.skipif(NO_JIT, reason="real images: runs in the JIT suite")
def test_shipped_network_outlines_real_nerves(shared_data):
    """Each shipped member's own mask (probability > 0.5, each network px covering POOL x POOL
    crop px) against the expert mask on a fixed subset of usgra-seg (images it was trained on):
    median Dice 0.86 on 2026-11-27; a broken input, forward pass or file gives far less."""
    sys.path.insert(0, str(TOOLS))
    import accuracy_nerve as acc

    comps = acc.load_components(shared_data)[::14][:20]
    for params in csa_net.shipped_nets():
        dice = []
        for comp in comps:
            x, (r0, c0) = csa_net.net_input(comp["grey"], tuple(comp["truth"]["seed_rc"]))
            pred = csa_net.forward(params, x).repeat(csa_net.POOL, 0).repeat(csa_net.POOL, 1) > 0.5
            truth = np.zeros_like(pred)
            h, w = comp["mask"].shape
            rs, cs, re, ce = max(r0, 0), max(c0, 0), min(r0 + csa_net.CROP_PX, h), min(c0 + csa_net.CROP_PX, w)
            truth[rs - r0 : re - r0, cs - c0 : ce - c0] = comp["mask"][rs:re, cs:ce]
            dice.append(2.0 * (pred & truth).sum() / (pred.sum() + truth.sum()))
        assert np.median(dice) >= 0.78
