"""Click-conditioned nerve probability around a seed (a small U-Net), and what it says about each
ellipse candidate of :mod:`mmstream.kernels.csa`.

Why
---
The candidate score of :mod:`mmstream.kernels.csa` reads only the neighbourhood of each outline (rim
brightness and edges along it), and its errors are mostly in the size: a bright band one fascicle
further in or out looks like a rim as well. A network that sees the 384 px square around the click
judges the whole structure instead. Alone it did worse than the ellipse score in a one-off study,
with different errors; as :data:`N_NET_FEATURES` more features of the learned candidate score it
improves the first click (figures:
``tools/accuracy_nerve.py --cv 5``, README). Tracking does not use it: there the previous outline
gives the size.

Network
-------
Input ``(2, NET_SIDE, NET_SIDE)`` float32: the grey levels of the ``CROP_PX`` square centred on the
seed's pixel (pixels outside the image are 0), as ``POOL x POOL`` block means, ``(g -
GREY_CENTRE) / GREY_SCALE``; and a Gaussian blob of ``SEED_SIGMA_NET_PX`` at the centre (the click). A
U-Net of ``len(CHANNELS)`` levels: at each level two 3x3 convolutions (zero padding, batch norm
folded into weights and bias, ReLU); 2x2 max pooling down, nearest-neighbour 2x up, skip
connections concatenated before the decoder's convolutions; a 1x1 convolution and the logistic
function give the probability, shape ``(NET_SIDE, NET_SIDE)``. Channels ``CHANNELS`` (122,041
parameters, 489 kB per member in ``mmstream/data/csa_net_m*.npz``, float32, trained by
``tools/train_csa_net.py``). With four levels an output pixel sees the whole crop (a receptive
field of 96 network px; 44 with three). It runs in numpy: each convolution is nine matrix products
(BLAS) over shifted views of one zero-padded buffer.

Ensemble
--------
The click uses the mean probability of ``len(SHIPPED)`` networks of the same architecture trained
with different seeds (``tools/train_csa_net.py --member M``). Single networks' cross-validated area
errors spread widely over seeds (0.19-0.23 median relative error); the mean of two is steadier
and better (README). It costs one forward pass per member.

Candidate features
------------------
The probability (the ensemble's mean) is resampled along the ``N_ANGLES`` rays of
:mod:`mmstream.kernels.csa` (radius ``i + 0.5`` px, ``i < N_PROB_R``; :func:`_prob_polar`), and for
every candidate outline (radius per ray) :func:`_net_features` gives the mass of probability inside it, in polar coordinates, and from
it: soft Dice against the probability map, its log, the share of the outline's area covered
(precision), the share of all the probability within ``N_PROB_R`` px it holds (recall), the mean
probability on the outline, and the mean distance of that probability from 0.5.
"""

from __future__ import annotations

import functools
import zipfile
import zlib
from importlib import resources
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from mmstream.errors import InputError, ReadError
from mmstream.kernels._jit import kernel

__all__ = ["NetParams", "load_net", "shipped_nets", "net_input", "forward", "probability", "net_features"]

NET_SIDE = 96  # network input side (network px)
CROP_PX = 384  # image square seen around the seed (px)
POOL = CROP_PX // NET_SIDE  # image px per network px
SEED_SIGMA_NET_PX = 6.0  # seed blob
GREY_CENTRE, GREY_SCALE = 60.0, 50.0  # input normalisation of grey levels
SHIPPED = ("csa_net_m0.npz", "csa_net_m1.npz")  # ensemble members in mmstream/data (member M: seeds + 100 M)
CHANNELS = (8, 16, 32, 64)  # U-Net channels per level
N_PROB_R = CROP_PX // 2  # radial samples of the probability (px)
N_NET_FEATURES = 6
_LOG_EPS = 1e-3  # log(soft Dice + _LOG_EPS)


def layer_shapes(channels: tuple[int, ...] | None = None) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every array of a network file (weights ``(out, in, 3, 3)``, biases
    ``(out,)``; BN folded) for a U-Net of ``len(channels)`` levels (default :data:`CHANNELS`):
    encoder blocks ``e1 .. eL``, decoder blocks ``d{L-1} .. d1``."""
    ch = CHANNELS if channels is None else tuple(channels)
    io = {"e1": (2, ch[0])}
    for k in range(1, len(ch)):
        io[f"e{k + 1}"] = (ch[k - 1], ch[k])
    for k in range(len(ch) - 1, 0, -1):
        io[f"d{k}"] = (ch[k] + ch[k - 1], ch[k - 1])
    shapes = {}
    for name, (cin, cout) in io.items():
        shapes[f"{name}.0.weight"] = (cout, cin, 3, 3)
        shapes[f"{name}.0.bias"] = (cout,)
        shapes[f"{name}.1.weight"] = (cout, cout, 3, 3)
        shapes[f"{name}.1.bias"] = (cout,)
    shapes["out.weight"] = (1, ch[0])
    shapes["out.bias"] = (1,)
    return shapes


NetParams = dict[str, np.ndarray]  # name -> float32 array, as layer_shapes()


def load_net(path: str | Path) -> NetParams:
    """One network's parameters from an ``.npz`` file.

    Raises
    ------
    ReadError
        Unreadable file, missing or extra arrays, wrong shapes or dtypes, non-finite values.
    """
    shapes = layer_shapes()
    try:
        with zipfile.ZipFile(path) as zf:
            members = {n.removesuffix(".npy"): n for n in zf.namelist()}
            if set(members) != set(shapes):
                missing, extra = sorted(set(shapes) - set(members)), sorted(set(members) - set(shapes))
                raise ReadError(f"{path}: network arrays differ (missing {missing}, unexpected {extra})")
            return {name: _read_member(zf, members[name], name, shape, path) for name, shape in shapes.items()}
    # RuntimeError: encrypted member; NotImplementedError: unsupported compression
    except (OSError, EOFError, ValueError, RuntimeError, NotImplementedError, zipfile.BadZipFile, zlib.error) as exc:
        raise ReadError(f"{path}: not a readable network file ({type(exc).__name__}: {exc})") from exc


def _read_member(zf: zipfile.ZipFile, member: str, name: str, shape: tuple[int, ...], path) -> np.ndarray:
    """One ``.npy`` member, its header checked before any data is read (no pickle, no oversized
    allocation)."""
    want = f"{name} must be finite float32 {shape}"
    count = int(np.prod(shape))
    if zf.getinfo(member).file_size > 4 * count + 1024:
        raise ReadError(f"{path}: {want}, its member is too large")
    with zf.open(member) as f:
        version = npy_format.read_magic(f)
        header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
        got_shape, fortran, dtype = header(f)
        if got_shape != shape or dtype != np.dtype("<f4") or fortran:
            raise ReadError(f"{path}: {want}, got {dtype} {got_shape}")
        arr = np.frombuffer(f.read(4 * count), dtype="<f4")
    if arr.size != count or not np.isfinite(arr).all():
        raise ReadError(f"{path}: {want}, got truncated or non-finite data")
    return arr.reshape(shape).astype(np.float32)  # a writable, native-order copy


@functools.lru_cache(maxsize=1)
def shipped_nets() -> tuple[NetParams, ...]:
    """The shipped ensemble (:data:`SHIPPED`), loaded once and read-only (shared by every thread).

    Raises
    ------
    ReadError
        A member file is unreadable or damaged.
    """
    nets = []
    for name in SHIPPED:
        with resources.as_file(resources.files("mmstream") / "data" / name) as p:
            params = load_net(p)
        for arr in params.values():
            arr.flags.writeable = False
        nets.append(params)
    return tuple(nets)


def net_input(image: np.ndarray, seed_rc: tuple[float, float]) -> tuple[np.ndarray, tuple[int, int]]:
    """Network input around a seed.

    Returns ``(x (2, NET_SIDE, NET_SIDE) float32, (r0, c0))``: the crop covers image rows
    ``r0 .. r0 + CROP_PX - 1`` and cols ``c0 .. c0 + CROP_PX - 1`` (it may reach outside the image),
    centred on the seed's pixel.
    """
    h, w = image.shape
    r0 = int(np.floor(seed_rc[0] + 0.5)) - CROP_PX // 2
    c0 = int(np.floor(seed_rc[1] + 0.5)) - CROP_PX // 2
    crop = np.zeros((CROP_PX, CROP_PX), np.float32)
    rs, cs, re, ce = max(r0, 0), max(c0, 0), min(r0 + CROP_PX, h), min(c0 + CROP_PX, w)
    if re > rs and ce > cs:
        crop[rs - r0 : re - r0, cs - c0 : ce - c0] = image[rs:re, cs:ce]
    x = np.empty((2, NET_SIDE, NET_SIDE), np.float32)
    x[0] = crop.reshape(NET_SIDE, POOL, NET_SIDE, POOL).mean(axis=(1, 3))
    x[0] -= GREY_CENTRE
    x[0] /= GREY_SCALE
    x[1] = _seed_channel()
    return x, (r0, c0)


@functools.lru_cache(maxsize=1)
def _seed_channel() -> np.ndarray:
    d = np.arange(NET_SIDE) - (NET_SIDE - 1) / 2.0
    blob = np.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2.0 * SEED_SIGMA_NET_PX**2)).astype(np.float32)
    blob.flags.writeable = False
    return blob


def _conv3_relu(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """3x3 convolution (zero padding, cross-correlation as torch) + bias + ReLU: (c, h, w) ->
    (o, h, w). Nine matrix products over shifted views of the flattened padded input; the two
    padding columns of every output row are computed and dropped."""
    c, h, w = x.shape
    wp = w + 2
    flat = np.zeros((c, (h + 3) * wp), np.float32)  # one extra row keeps every shifted view in bounds
    flat.reshape(c, h + 3, wp)[:, 1 : h + 1, 1 : w + 1] = x
    n = h * wp
    y = np.empty((weight.shape[0], n), np.float32)
    y[:] = bias[:, None]
    for dr in range(3):
        for dc in range(3):
            off = dr * wp + dc
            y += weight[:, :, dr, dc] @ flat[:, off : off + n]
    np.maximum(y, 0.0, out=y)
    return y.reshape(-1, h, wp)[:, :, :w]


def _block(x: np.ndarray, params: NetParams, name: str) -> np.ndarray:
    for i in range(2):
        x = _conv3_relu(x, params[f"{name}.{i}.weight"], params[f"{name}.{i}.bias"])
    return x


def _pool(x: np.ndarray) -> np.ndarray:
    c, h, w = x.shape
    return x.reshape(c, h // 2, 2, w // 2, 2).max(axis=(2, 4))


def _up(x: np.ndarray) -> np.ndarray:
    return x.repeat(2, axis=1).repeat(2, axis=2)


def forward(params: NetParams, x: np.ndarray) -> np.ndarray:
    """Nerve probability ``(NET_SIDE, NET_SIDE)`` float32 in [0, 1] of an input of
    :func:`net_input`."""
    levels = sum(1 for name in params if name.startswith("e") and name.endswith(".0.bias"))
    skips = [_block(x, params, "e1")]
    for k in range(2, levels + 1):
        skips.append(_block(_pool(skips[-1]), params, f"e{k}"))
    y = skips.pop()
    for k in range(levels - 1, 0, -1):
        y = _block(np.concatenate([_up(y), skips.pop()]), params, f"d{k}")
    logit = params["out.weight"] @ y.reshape(y.shape[0], -1) + params["out.bias"][:, None]
    return (0.5 + 0.5 * np.tanh(0.5 * logit)).reshape(NET_SIDE, NET_SIDE)  # logistic, float32


def probability(nets: tuple[NetParams, ...], x: np.ndarray) -> np.ndarray:
    """Mean of the members' :func:`forward` ``(NET_SIDE, NET_SIDE)`` float32."""
    prob = forward(nets[0], x)
    for params in nets[1:]:
        prob += forward(params, x)
    prob /= np.float32(len(nets))
    return prob


@kernel("void(float32[:, ::1], int64, float64, float64, float64[::1], float64[::1], float64[:, ::1])")
def _prob_polar(prob, pool, center_r, center_c, sin_t, cos_t, out):
    """Probability along rays: ``out[k, i]`` at radius ``i + 0.5`` along ray ``k`` from the centre
    ``(center_r, center_c)``, given in crop px (crop px ``u`` is network px ``(u + 0.5) / pool -
    0.5``; the crop is ``n * pool`` px square for ``prob (n, n)``). Bilinear; network px
    coordinates are clamped to ``[0, n - 1]``; 0 outside the crop (crop px outside ``[-0.5,
    n * pool - 0.5]``)."""
    n = prob.shape[0]
    crop = n * pool
    for k in range(out.shape[0]):
        for i in range(out.shape[1]):
            rad = i + 0.5
            ur = center_r + rad * sin_t[k]
            uc = center_c + rad * cos_t[k]
            if ur < -0.5 or uc < -0.5 or ur > crop - 0.5 or uc > crop - 0.5:
                out[k, i] = 0.0
                continue
            qr = min(max((ur + 0.5) / pool - 0.5, 0.0), n - 1.0)
            qc = min(max((uc + 0.5) / pool - 0.5, 0.0), n - 1.0)
            ir = min(int(qr), n - 2)
            ic = min(int(qc), n - 2)
            fr = qr - ir
            fc = qc - ic
            top = prob[ir, ic] * (1.0 - fc) + prob[ir, ic + 1] * fc
            bot = prob[ir + 1, ic] * (1.0 - fc) + prob[ir + 1, ic + 1] * fc
            out[k, i] = top * (1.0 - fr) + bot * fr


@kernel("void(float64[:, ::1], float64[:, ::1], float64[:, ::1], float64[:, ::1])", readonly_args=())
def _net_features(ppolar, radii, cum, out):
    """Candidate features from the probability along rays ``ppolar (K, n)`` (sample ``i`` at radius
    ``i + 0.5``) for outlines ``radii (n_cand, K)``, into ``out (n_cand, N_NET_FEATURES)``:
    soft Dice, log(soft Dice + 1e-3), precision, recall, mean outline probability, mean |outline
    probability - 0.5|. Mass inside radius ``R`` along a ray: ``sum p_i (i + 0.5)`` over samples
    within ``R`` (midpoint rule, linear within a sample); area ``R^2 / 2`` (the ray's common
    factor ``2 pi / K`` cancels). The outline probability is ``ppolar`` linearly interpolated at
    ``R`` (clamped to the first and last sample). ``cum (K, n + 1)`` is scratch."""
    n_k, n = ppolar.shape
    total = 0.0
    for k in range(n_k):
        cum[k, 0] = 0.0
        for i in range(n):
            cum[k, i + 1] = cum[k, i] + ppolar[k, i] * (i + 0.5)
        total += cum[k, n]
    for j in range(radii.shape[0]):
        inside = 0.0
        area = 0.0
        p_sum = 0.0
        p_dev = 0.0
        for k in range(n_k):
            rad = min(max(radii[j, k], 0.0), float(n))
            i0 = min(int(rad), n - 1)
            f = rad - i0
            inside += cum[k, i0] + f * (cum[k, i0 + 1] - cum[k, i0])
            area += 0.5 * rad * rad
            q = min(max(rad - 0.5, 0.0), n - 1.0)
            q0 = min(int(q), n - 2)
            g = q - q0
            p = ppolar[k, q0] * (1.0 - g) + ppolar[k, q0 + 1] * g
            p_sum += p
            p_dev += abs(p - 0.5)
        dice = 2.0 * inside / (area + total + 1e-9)
        out[j, 0] = dice
        out[j, 1] = np.log(dice + _LOG_EPS)
        out[j, 2] = inside / (area + 1e-9)
        out[j, 3] = inside / (total + 1e-9)
        out[j, 4] = p_sum / n_k
        out[j, 5] = p_dev / n_k


def net_features(image: np.ndarray, seed_rc: tuple[float, float], radii: np.ndarray, sin_t: np.ndarray,
                 cos_t: np.ndarray, nets: tuple[NetParams, ...]) -> np.ndarray:  # fmt: skip
    """``(n_cand, N_NET_FEATURES)`` features of outlines ``radii (n_cand, K)`` centred on the seed
    (rays ``sin_t``, ``cos_t`` of length ``K``) from the ensemble ``nets``' probability around it."""
    radii = np.ascontiguousarray(radii, dtype=np.float64)
    sin_t = np.ascontiguousarray(sin_t, dtype=np.float64)
    cos_t = np.ascontiguousarray(cos_t, dtype=np.float64)
    if radii.ndim != 2 or radii.shape[1] != len(sin_t) or len(cos_t) != len(sin_t):
        raise InputError(f"radii {radii.shape} must be (n_cand, K) for K = {len(sin_t)} rays")
    x, (r0, c0) = net_input(image, seed_rc)
    prob = probability(nets, x)
    ppolar = np.empty((len(sin_t), N_PROB_R))
    _prob_polar(prob, POOL, seed_rc[0] - r0, seed_rc[1] - c0, sin_t, cos_t, ppolar)
    out = np.empty((radii.shape[0], N_NET_FEATURES))
    _net_features(ppolar, radii, np.empty((len(sin_t), N_PROB_R + 1)), out)
    return out
