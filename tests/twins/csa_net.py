"""Plain-numpy reference twins of mmstream.kernels.csa_net (the network and its two kernels).

Written from the docstrings (the spec), slow and obvious, in float64; never calls the module's
kernels or its private helpers (only its constants).
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from mmstream.kernels.csa_net import CROP_PX, GREY_CENTRE, GREY_SCALE, NET_SIDE, POOL, SEED_SIGMA_NET_PX


def net_input(image, seed_rc):
    """(x (2, NET_SIDE, NET_SIDE), (r0, c0)): the CROP_PX square centred on the seed's pixel
    (0 outside the image) as POOL x POOL block means, normalised; a Gaussian seed blob."""
    centre_r = int(np.floor(seed_rc[0] + 0.5))
    centre_c = int(np.floor(seed_rc[1] + 0.5))
    r0, c0 = centre_r - CROP_PX // 2, centre_c - CROP_PX // 2
    # pad the image by a whole crop on every side: any crop touching the image lies in it
    padded = np.pad(np.asarray(image, np.float64), CROP_PX)
    pr, pc = r0 + CROP_PX, c0 + CROP_PX
    crop = np.zeros((CROP_PX, CROP_PX))
    if -CROP_PX < r0 < image.shape[0] and -CROP_PX < c0 < image.shape[1]:
        crop = padded[pr : pr + CROP_PX, pc : pc + CROP_PX]
    grey = np.zeros((NET_SIDE, NET_SIDE))
    for a in range(POOL):
        for b in range(POOL):
            grey += crop[a::POOL, b::POOL]
    grey /= POOL * POOL
    seed = np.empty((NET_SIDE, NET_SIDE))
    mid = (NET_SIDE - 1) / 2.0
    for r in range(NET_SIDE):
        for c in range(NET_SIDE):
            seed[r, c] = np.exp(-((r - mid) ** 2 + (c - mid) ** 2) / (2.0 * SEED_SIGMA_NET_PX**2))
    return np.stack([(grey - GREY_CENTRE) / GREY_SCALE, seed]), (r0, c0)


def conv3_relu(x, weight, bias):
    """3x3 cross-correlation, zero padding, + bias, ReLU: (c, h, w) -> (o, h, w)."""
    windows = sliding_window_view(np.pad(x, ((0, 0), (1, 1), (1, 1))), (3, 3), axis=(1, 2))  # (c, h, w, 3, 3)
    y = np.einsum("chwij,ocij->ohw", windows, weight.astype(np.float64)) + bias[:, None, None]
    return np.where(y > 0, y, 0.0)


def max_pool2(x):
    return np.maximum.reduce([x[:, 0::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 0::2], x[:, 1::2, 1::2]])


def up2(x):
    """Nearest neighbour: output px (r, c) is input px (r // 2, c // 2)."""
    r = np.arange(2 * x.shape[1]) // 2
    c = np.arange(2 * x.shape[2]) // 2
    return x[:, r[:, None], c[None, :]]


def forward(params, x):
    """Probability (NET_SIDE, NET_SIDE) of the U-Net whose depth L is the number of encoder
    blocks e1..eL in ``params`` (float64 throughout)."""

    def block(y, name):
        y = conv3_relu(y, params[f"{name}.0.weight"], params[f"{name}.0.bias"])
        return conv3_relu(y, params[f"{name}.1.weight"], params[f"{name}.1.bias"])

    depth = len({name.split(".")[0] for name in params if name.startswith("e")})

    def level(y, k):
        """Encoder block k on y, then (below the bottom) the decoder block k on [up(deeper), skip]."""
        skip = block(y, f"e{k}")
        if k == depth:
            return skip
        return block(np.concatenate([up2(level(max_pool2(skip), k + 1)), skip]), f"d{k}")

    y = level(np.asarray(x, np.float64), 1)
    logit = np.einsum("c,chw->hw", params["out.weight"][0].astype(np.float64), y) + float(params["out.bias"][0])
    return 1.0 / (1.0 + np.exp(-logit))


def prob_polar(prob, center_r, center_c, sin_t, cos_t, n):
    """(K, n): bilinear probability at radius i + 0.5 along each ray; crop px u is network px
    (u + 0.5) / POOL - 0.5, clamped to [0, NET_SIDE - 1]; 0 outside [-0.5, CROP_PX - 0.5]."""
    prob = np.asarray(prob, np.float64)
    last = NET_SIDE - 1
    out = np.zeros((len(sin_t), n))
    for k in range(len(sin_t)):
        for i in range(n):
            ur = center_r + (i + 0.5) * sin_t[k]
            uc = center_c + (i + 0.5) * cos_t[k]
            if not (-0.5 <= ur <= CROP_PX - 0.5 and -0.5 <= uc <= CROP_PX - 0.5):
                continue
            qr = float(np.clip((ur + 0.5) / POOL - 0.5, 0, last))
            qc = float(np.clip((uc + 0.5) / POOL - 0.5, 0, last))
            r_lo, c_lo = int(np.floor(qr)), int(np.floor(qc))
            r_hi, c_hi = min(r_lo + 1, last), min(c_lo + 1, last)
            wr, wc = qr - r_lo, qc - c_lo
            out[k, i] = (
                (1 - wr) * (1 - wc) * prob[r_lo, c_lo]
                + (1 - wr) * wc * prob[r_lo, c_hi]
                + wr * (1 - wc) * prob[r_hi, c_lo]
                + wr * wc * prob[r_hi, c_hi]
            )
    return out


def net_features(ppolar, radii):
    """(n_cand, 6): soft Dice, log(Dice + 1e-3), precision, recall, mean outline probability, mean
    |outline probability - 0.5|. Sample i covers radii [i, i + 1) with mass p_i (i + 0.5) (midpoint
    rule, a fraction of it where the outline cuts the sample); a radius is clamped to the samples'
    range [0, n] (for the area too); the outline probability is interpolated between samples at
    radii i + 0.5, constant beyond the first and last."""
    n_k, n = ppolar.shape
    centres = np.arange(n) + 0.5
    ring_mass = ppolar * centres  # (K, n)
    total = ring_mass.sum()
    out = np.empty((len(radii), 6))
    for j, cand in enumerate(radii):
        inside = area = 0.0
        outline = np.empty(n_k)
        for k in range(n_k):
            rad = min(max(cand[k], 0.0), float(n))
            inside += np.sum(ring_mass[k] * np.clip(rad - np.arange(n), 0.0, 1.0))
            area += rad * rad / 2.0
            outline[k] = np.interp(rad, centres, ppolar[k])
        dice = 2.0 * inside / (area + total + 1e-9)
        out[j] = [dice, np.log(dice + 1e-3), inside / (area + 1e-9), inside / (total + 1e-9),
                  outline.mean(), np.abs(outline - 0.5).mean()]  # fmt: skip
    return out
