"""Plain-numpy twin of :mod:`mmstream.kernels.echogenicity`, written from its docstring."""

import numpy as np


def inside_polygon(shape, polygon_rc):
    """(H, W) bool: pixel centres inside the polygon by even-odd ray casting towards +col."""
    h, w = shape
    rr, cc = np.mgrid[0:h, 0:w].astype(np.float64)
    inside = np.zeros(shape, bool)
    poly = np.asarray(polygon_rc, np.float64)
    for (ra, ca), (rb, cb) in zip(poly, np.roll(poly, -1, axis=0)):
        if ra == rb:
            continue  # a horizontal edge never satisfies the half-open row test
        spans = ((ra <= rr) & (rr < rb)) | ((rb <= rr) & (rr < ra))
        with np.errstate(over="ignore"):  # a nearly horizontal edge: x -> +-inf, still ordered right
            x = ca + (rr - ra) * (cb - ca) / (rb - ra)
        inside ^= spans & (x > cc)
    return inside


def region_pixels(image, rect=None, polygon_rc=None, mask=None):
    """The grey values of the region, as a 1-D array."""
    if mask is not None:
        return image[np.asarray(mask) != 0]
    if polygon_rc is not None:
        return image[inside_polygon(image.shape, polygon_rc)]
    if rect is None:
        return image.ravel()
    r0, c0, r1, c1 = rect
    return image[max(r0, 0) : r1, max(c0, 0) : c1].ravel()


def echogenicity(image, **region):
    """(mean, std, n_px, histogram) of the region; NaN mean/std when empty."""
    px = region_pixels(image, **region).astype(np.float64)
    hist = np.zeros(256, np.int64)
    np.add.at(hist, px.astype(np.int64), 1)
    if px.size == 0:
        return float("nan"), float("nan"), 0, hist
    return float(px.mean()), float(px.std()), int(px.size), hist
