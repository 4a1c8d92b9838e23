"""Echogenicity: grey-level statistics inside a region of a B-mode frame.

The region is a rectangle, a polygon or a boolean mask. Statistics come from one exact 256-bin
histogram of the uint8 grey values, so mean, std and the histogram always agree.

Polygon rule (shared with the reference twin): pixel ``(r, c)`` is inside when a ray from its centre
towards +col crosses the polygon an odd number of times, where an edge from ``(r1, c1)`` to
``(r2, c2)`` counts when ``min(r1, r2) <= r < max(r1, r2)`` (half-open, so shared vertices and
horizontal edges are counted once) and the crossing column is ``c1 + (r - r1) * (c2 - c1) / (r2 - r1)``
strictly greater than ``c``.
"""

from dataclasses import dataclass

import numpy as np

from mmstream.errors import InputError
from mmstream.kernels._jit import kernel

__all__ = ["EchoStats", "echogenicity", "polygon_bbox"]


@dataclass(frozen=True)
class EchoStats:
    """Grey-level statistics of a region.

    Attributes
    ----------
    mean, std : float
        Mean and population standard deviation of the grey values (grey levels, 0-255); NaN when
        the region holds no pixel.
    n_px : int
        Number of pixels in the region.
    histogram : ndarray of shape (256,), int64
        Count of each grey value.
    """

    mean: float
    std: float
    n_px: int
    histogram: np.ndarray


@kernel("void(uint8[:, ::1], int64, int64, int64, int64, int64[:, ::1])")
def _hist_rect(image, r0, c0, r1, c1, out):
    # Four interleaved sub-histograms break the store-to-load dependency of repeated grey values.
    for r in range(r0, r1):
        row = image[r, c0:c1]
        n = row.shape[0]
        n4 = n - n % 4
        for j in range(0, n4, 4):
            out[0, row[j]] += 1
            out[1, row[j + 1]] += 1
            out[2, row[j + 2]] += 1
            out[3, row[j + 3]] += 1
        for j in range(n4, n):
            out[0, row[j]] += 1


@kernel("void(uint8[:, ::1], uint8[:, ::1], int64[:, ::1])", readonly_args=(0, 1))
def _hist_mask(image, mask, out):
    for r in range(image.shape[0]):
        row = image[r]
        mrow = mask[r]
        n = row.shape[0]
        n2 = n - n % 2
        for j in range(0, n2, 2):
            out[0, row[j]] += mrow[j] != 0
            out[1, row[j + 1]] += mrow[j + 1] != 0
        for j in range(n2, n):
            out[0, row[j]] += mrow[j] != 0


@kernel("void(uint8[:, ::1], float64[:, ::1], int64, int64, float64[::1], int64[:, ::1])", readonly_args=(0, 1))
def _hist_polygon(image, poly_rc, r_lo, r_hi, xs, out):
    # Even-odd scanline fill over rows r_lo..r_hi-1; xs is a workspace of >= len(poly) floats.
    n_v = poly_rc.shape[0]
    width = image.shape[1]
    for r in range(r_lo, r_hi):
        rf = float(r)
        n_x = 0
        for i in range(n_v):
            ra = poly_rc[i, 0]
            ca = poly_rc[i, 1]
            rb = poly_rc[(i + 1) % n_v, 0]
            cb = poly_rc[(i + 1) % n_v, 1]
            if (ra <= rf < rb) or (rb <= rf < ra):
                xs[n_x] = ca + (rf - ra) * (cb - ca) / (rb - ra)
                n_x += 1
        # insertion sort: crossings per row are few
        for i in range(1, n_x):
            v = xs[i]
            k = i - 1
            while k >= 0 and xs[k] > v:
                xs[k + 1] = xs[k]
                k -= 1
            xs[k + 1] = v
        row = image[r]
        for k in range(0, n_x - 1, 2):
            # inside: xs[2k] <= c < xs[2k+1]
            c_start = max(int(np.ceil(xs[k])), 0)
            c_stop = min(int(np.ceil(xs[k + 1])), width)
            for c in range(c_start, c_stop):
                out[0, row[c]] += 1


def _as_frame(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 2 or image.dtype != np.uint8:
        raise InputError(
            f"image must be a 2-D uint8 array, got {getattr(image, 'dtype', type(image))} "
            f"with shape {getattr(image, 'shape', None)}"
        )
    if image.size == 0:
        raise InputError("image is empty")
    return np.ascontiguousarray(image)


def polygon_bbox(polygon_rc: np.ndarray, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Rows/cols ``(r0, c0, r1, c1)`` (end-exclusive) whose pixel centres may lie inside the polygon."""
    r0 = max(int(np.ceil(polygon_rc[:, 0].min())), 0)
    r1 = min(int(np.ceil(polygon_rc[:, 0].max())), shape[0])
    c0 = max(int(np.ceil(polygon_rc[:, 1].min())), 0)
    c1 = min(int(np.ceil(polygon_rc[:, 1].max())), shape[1])
    return r0, c0, max(r1, r0), max(c1, c0)


def _stats(hist4: np.ndarray) -> EchoStats:
    hist = hist4.sum(axis=0)
    n = int(hist.sum())
    if n == 0:
        return EchoStats(float("nan"), float("nan"), 0, hist)
    grey = np.arange(256, dtype=np.float64)
    mean = float(hist @ grey) / n
    var = float(hist @ (grey - mean) ** 2) / n
    return EchoStats(mean, float(np.sqrt(var)), n, hist)


def echogenicity(
    image: np.ndarray,
    *,
    rect: tuple[int, int, int, int] | None = None,
    polygon_rc: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> EchoStats:
    """Grey-level statistics of ``image`` inside one region.

    Parameters
    ----------
    image : ndarray of shape (H, W), uint8
        B-mode frame.
    rect : (r0, c0, r1, c1), optional
        Rectangle, end-exclusive, clipped to the image. With no region at all, the whole image.
    polygon_rc : ndarray of shape (K, 2), optional
        Closed polygon in (row, col) pixel coordinates (the last vertex joins the first); pixel
        centres inside by the even-odd rule described in the module docstring.
    mask : ndarray of shape (H, W), bool or uint8, optional
        Non-zero pixels form the region.

    Returns
    -------
    EchoStats
        Mean, std (grey levels), n_px and 256-bin histogram. An empty region gives NaN mean/std.
    """
    image = _as_frame(image)
    given = [x is not None for x in (rect, polygon_rc, mask)]
    if sum(given) > 1:
        raise InputError("give at most one of rect, polygon_rc, mask")
    out = np.zeros((4, 256), dtype=np.int64)
    h, w = image.shape
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != image.shape:
            raise InputError(f"mask shape {mask.shape} differs from image shape {image.shape}")
        _hist_mask(image, np.ascontiguousarray(mask, dtype=np.uint8), out)
    elif polygon_rc is not None:
        poly = np.ascontiguousarray(polygon_rc, dtype=np.float64)
        if poly.ndim != 2 or poly.shape[1] != 2 or poly.shape[0] < 3:
            raise InputError(f"polygon_rc must have shape (K >= 3, 2), got {poly.shape}")
        if not np.isfinite(poly).all():
            raise InputError("polygon_rc holds NaN or infinite coordinates")
        r0, _, r1, _ = polygon_bbox(poly, (h, w))
        _hist_polygon(image, poly, r0, r1, np.empty(poly.shape[0], np.float64), out)
    else:
        r0, c0, r1, c1 = (0, 0, h, w) if rect is None else (int(v) for v in rect)
        if r1 <= r0 or c1 <= c0:
            raise InputError(f"rect {rect} is empty (need r0 < r1 and c0 < c1)")
        r0, c0, r1, c1 = max(r0, 0), max(c0, 0), min(r1, h), min(c1, w)
        if r1 <= r0 or c1 <= c0:
            raise InputError(f"rect {rect} lies outside the {h}x{w} image")
        _hist_rect(image, r0, c0, r1, c1, out)
    return _stats(out)
