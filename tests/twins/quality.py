"""Plain-numpy twin of :mod:`mmstream.kernels.quality`, written from its docstring."""

import numpy as np

THUMB = (16, 16)
ROW_STEP = 4


def thumbnail(image):
    """Block means over every 4th row: row block r * 16 // H, column block edges ceil(k * W / 16)."""
    h, w = image.shape
    rows = np.arange(0, h, ROW_STEP)
    rblock = rows * THUMB[0] // h
    cedges = -(-np.arange(THUMB[1] + 1) * w // THUMB[1])
    out = np.zeros(THUMB)
    for b in range(THUMB[0]):
        sel = image[rows[rblock == b]].astype(np.float64)
        for k in range(THUMB[1]):
            out[b, k] = sel[:, cedges[k] : cedges[k + 1]].mean()
    return out


def fractions(image, saturated_level=250, dark_level=10):
    """(saturated fraction, dark fraction)."""
    return float((image >= saturated_level).mean()), float((image <= dark_level).mean())


def active_fraction(image, dark_level=10):
    """Fraction of the non-dark pixels of rows 0, 4, 8, ... (not the last row) that differ from the
    pixel below or the one to the right (none right of the last column); 0 without any."""
    rows = np.arange(0, image.shape[0] - 1, ROW_STEP)
    top, below = image[rows], image[rows + 1]
    right = np.concatenate([top[:, 1:], top[:, -1:]], axis=1)  # the last column compares with itself
    bright = top > dark_level
    return float((bright & ((top != below) | (top != right))).sum() / bright.sum()) if bright.any() else 0.0
