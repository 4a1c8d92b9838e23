"""Frame quality: frozen or duplicate frame, saturation, lost probe contact, featureless frame.

One pass over the frame yields the counts of saturated and dark pixels, a 64-bit checksum, a
coarse block-mean thumbnail (the frame's *signature*) and, on every ``THUMB_ROW_STEP``-th row, the
fraction of non-dark pixels that differ from the pixel below or the pixel to the right
(*activity*; both, so that line-doubled or upscaled frames keep theirs). Speckle makes almost every
pixel of a B-mode image differ from its neighbours; a frame with probe contact whose non-dark
pixels barely do is *featureless* (a uniform "no signal" screen of a video grabber, a blank test
pattern): there is nothing to measure on it. Comparing the signature with the previous frame's tells a
bit-identical repeat (``duplicate``: a digital source re-sending a frame, common in exported
cines) and a run of near-identical frames (``frozen``: a frozen scanner, also seen through a noisy
video grabber). One near-identical pair is not a freeze: consecutive frames of a handheld probe
differ by 0.3-0.8 grey levels of the thumbnail (the SonoSite cine of ``../shared/data``: 10 %
quantile 0.33), a frozen image through +-1 grey level grabber noise by 0.05, after JPEG at quality
70 by 0.16; so ``frozen`` needs ``frozen_frames`` consecutive pairs under 0.2 (none of the real
sequences of the shared data, nor the simulated probe, has such a run). A freeze seen through
heavier noise (+-3 grey levels and JPEG at quality 50: 0.29) is not detected.

The thresholds are technical defaults for detecting acquisition faults, not clinical values; every
one is a parameter of :class:`QualityLimits`.
"""

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from mmstream.errors import InputError
from mmstream.kernels._jit import kernel

__all__ = ["QualityLimits", "FrameSignature", "Quality", "frame_quality", "THUMB_SHAPE", "MIN_SHAPE"]

THUMB_SHAPE = (16, 16)
"""Block-mean thumbnail shape (rows, cols) used to detect frozen frames."""
THUMB_ROW_STEP = 4
"""The thumbnail averages every 4th row (a quarter of the memory traffic of a full pass)."""
MIN_SHAPE = (THUMB_SHAPE[0] * THUMB_ROW_STEP, THUMB_SHAPE[1])
"""Smallest frame (rows, cols) the quality pass, and so the analysis, takes."""

_FNV_PRIME = np.uint64(1099511628211)
_FNV_OFFSET = np.uint64(14695981039346656037)


@dataclass(frozen=True)
class QualityLimits:
    """Thresholds of the quality checks (grey levels 0-255 and fractions of the frame)."""

    saturated_level: int = 250
    dark_level: int = 10
    saturated_fraction_max: float = 0.05
    dark_fraction_no_contact: float = 0.90
    frozen_mean_abs_diff: float = 0.2
    frozen_frames: int = 5
    active_fraction_featureless: float = 0.02


@dataclass(frozen=True)
class FrameSignature:
    """Checksum and block-mean thumbnail of a frame, kept to compare with the next frame, and how
    many frames in a row, up to this one, were near-identical to their predecessor."""

    checksum: int
    thumb: np.ndarray  # (16, 16) float64 block means
    still_frames: int = 0


@dataclass(frozen=True)
class Quality:
    """Quality of one frame.

    Attributes
    ----------
    saturated_fraction, dark_fraction : float
        Fraction of pixels >= ``saturated_level`` and <= ``dark_level``.
    active_fraction : float
        Fraction of the non-dark pixels of every ``THUMB_ROW_STEP``-th row (but the last) that
        differ from the pixel below or to the right (the last column: below); 0 without such pixels.
    thumb_mean_abs_diff : float or None
        Mean absolute difference (grey levels) of the block-mean thumbnails against the previous
        frame; None without a previous frame.
    duplicate, frozen, saturated, no_contact, featureless : bool
        Flags; ``frozen``: this frame ends a run of ``frozen_frames`` frames each within
        ``frozen_mean_abs_diff`` of the one before; ``featureless``: not ``no_contact``, and
        ``active_fraction`` below ``active_fraction_featureless`` (the flags exclude each other).
    signature : FrameSignature
        This frame's signature, to pass as ``previous`` with the next frame.
    """

    saturated_fraction: float
    dark_fraction: float
    active_fraction: float
    thumb_mean_abs_diff: float | None
    duplicate: bool
    frozen: bool
    saturated: bool
    no_contact: bool
    featureless: bool
    signature: FrameSignature


@kernel("void(uint8[:, ::1], uint8, uint8, int64[::1], uint64[::1], float64[:, ::1])")
def _quality_pass(image, sat_level, dark_level, counts, checksum, thumb):
    # counts[0] = saturated pixels, counts[1] = dark pixels, counts[2] = non-dark pixels of the
    # thumbnail rows but the last, counts[3] = those of them differing from the pixel below or to the
    # right; checksum[0] = FNV-1a over per-row
    # column-weighted sums (a vectorisable reduction); thumb = per-block sums over every
    # THUMB_ROW_STEP-th row (the caller divides by the number of summed pixels).
    h, w = image.shape
    tr, tc = thumb.shape
    n_sat = 0
    n_dark = 0
    n_bright = 0
    n_active = 0
    hsh = _FNV_OFFSET
    for r in range(h):
        row = image[r]
        s_row = np.uint32(0)
        a = np.int32(0)
        b = np.int32(0)
        for c in range(w):
            v = row[c]
            a += v >= sat_level
            b += v <= dark_level
            s_row += np.uint32(v) * np.uint32(c + 1)
        n_sat += a
        n_dark += b
        hsh = (hsh ^ np.uint64(s_row)) * _FNV_PRIME
        if r % THUMB_ROW_STEP == 0:
            if r + 1 < h:
                below = image[r + 1]
                nb = np.int32(0)
                na = np.int32(0)
                for c in range(w - 1):  # branch-free, so that it vectorises
                    lit = row[c] > dark_level
                    nb += lit
                    na += lit & ((row[c] != below[c]) | (row[c] != row[c + 1]))
                lit = row[w - 1] > dark_level  # the last column: the pixel below only
                n_bright += nb + lit
                n_active += na + (lit & (row[w - 1] != below[w - 1]))
            br = (r * tr) // h
            for bc in range(tc):
                seg = row[(bc * w + tc - 1) // tc : ((bc + 1) * w + tc - 1) // tc]
                acc = np.uint32(0)
                for k in range(seg.shape[0]):
                    acc += seg[k]
                thumb[br, bc] += acc
    counts[0] = n_sat
    counts[1] = n_dark
    counts[2] = n_bright
    counts[3] = n_active
    checksum[0] = hsh


@lru_cache(maxsize=16)
def _block_pixel_counts(h: int, w: int) -> np.ndarray:
    """(16, 16) number of pixels each thumbnail block sums (rows r % THUMB_ROW_STEP == 0)."""
    tr, tc = THUMB_SHAPE
    rows = np.arange(0, h, THUMB_ROW_STEP)
    n_rows = np.bincount(rows * tr // h, minlength=tr).astype(np.float64)
    col_edges = (np.arange(tc + 1) * w + tc - 1) // tc
    return np.outer(n_rows, np.diff(col_edges))


def frame_quality(
    image: np.ndarray,
    previous: FrameSignature | None = None,
    limits: QualityLimits = QualityLimits(),
) -> Quality:
    """Quality flags of a frame, compared with the previous frame's signature when given.

    Parameters
    ----------
    image : ndarray of shape (H, W), uint8, with (H, W) >= MIN_SHAPE (64, 16)
    previous : FrameSignature, optional
        ``Quality.signature`` of the previous frame of the same stream.
    limits : QualityLimits
    """
    if not isinstance(image, np.ndarray) or image.ndim != 2 or image.dtype != np.uint8:
        raise InputError("image must be a 2-D uint8 array")
    h, w = image.shape
    min_h, min_w = MIN_SHAPE
    if h < min_h or w < min_w:
        raise InputError(f"image {h}x{w} is smaller than {min_h}x{min_w}")
    image = np.ascontiguousarray(image)
    counts = np.zeros(4, np.int64)
    checksum = np.zeros(1, np.uint64)
    thumb = np.zeros(THUMB_SHAPE, np.float64)
    with np.errstate(over="ignore"):  # the FNV hash wraps on purpose (seen without JIT only)
        _quality_pass(
            image, np.uint8(limits.saturated_level), np.uint8(limits.dark_level), counts, checksum, thumb
        )
    thumb /= _block_pixel_counts(h, w)
    n = float(h * w)
    sat_f, dark_f = counts[0] / n, counts[1] / n
    active_f = counts[3] / counts[2] if counts[2] else 0.0
    diff = None
    duplicate, still = False, 0
    if previous is not None and previous.thumb.shape == thumb.shape:
        diff = float(np.abs(thumb - previous.thumb).mean())
        duplicate = previous.checksum == int(checksum[0]) and diff == 0.0
        still = previous.still_frames + 1 if diff < limits.frozen_mean_abs_diff else 0
    sig = FrameSignature(int(checksum[0]), thumb, still)
    return Quality(
        saturated_fraction=sat_f,
        dark_fraction=dark_f,
        active_fraction=float(active_f),
        thumb_mean_abs_diff=diff,
        duplicate=duplicate,
        frozen=still >= limits.frozen_frames,
        saturated=sat_f > limits.saturated_fraction_max,
        no_contact=dark_f >= limits.dark_fraction_no_contact,
        featureless=dark_f < limits.dark_fraction_no_contact and active_f < limits.active_fraction_featureless,
        signature=sig,
    )
