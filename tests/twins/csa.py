"""Plain-numpy reference twins of the private kernels of mmstream.kernels.csa (most of them
in its module _csa_polar).

Written from the kernel docstrings (the spec), slow and obvious; never calls the kernels.
"""

import numpy as np


def box_integral(image, r0, c0, h, w):
    """(h+1, w+1) integral image of the ROI [r0, r0+h) x [c0, c0+w); outside the image is 0."""
    roi = np.zeros((h, w), np.int64)
    for i in range(h):
        for j in range(w):
            r, c = r0 + i, c0 + j
            if 0 <= r < image.shape[0] and 0 <= c < image.shape[1]:
                roi[i, j] = image[r, c]
    out = np.zeros((h + 1, w + 1), np.int64)
    out[1:, 1:] = roi.cumsum(0).cumsum(1)
    return out


def polar_sample(image, roi, center_r, center_c, sin_t, cos_t, half, n_r):
    """Box means along rays; pixels outside the ROI (r0, c0, h, w) or the image count as 0."""
    r0, c0, h, w = roi
    out = np.zeros((len(sin_t), n_r))
    for k in range(len(sin_t)):
        for i in range(n_r):
            pr = int(np.floor(center_r + i * sin_t[k] + 0.5))
            pc = int(np.floor(center_c + i * cos_t[k] + 0.5))
            tot = 0
            for r in range(pr - half, pr + half + 1):
                for c in range(pc - half, pc + half + 1):
                    inside_roi = r0 <= r < r0 + h and c0 <= c < c0 + w
                    inside_img = 0 <= r < image.shape[0] and 0 <= c < image.shape[1]
                    if inside_roi and inside_img:
                        tot += int(image[r, c])
            # times the reciprocal, as the kernel: the rim indicators compare differences of these
            # means, and a last-bit difference would flip them where two are mathematically equal
            out[k, i] = tot * (1.0 / (2 * half + 1) ** 2)
    return out


def polar_features(polar, n_norm, n_out):
    """The ten radial feature maps, shape (10, K, n_out)."""
    n_k, n = polar.shape
    mu = polar[:, :n_norm].mean()
    sd = max(polar[:, :n_norm].std(), 1.0)
    z = (polar - mu) / sd
    i = np.arange(n_out)

    def zc(offset):
        return z[:, np.clip(i + offset, 0, n - 1)]

    out = np.empty((10, n_k, n_out))
    out[0] = zc(3)
    out[1] = zc(-3)
    out[2] = zc(2) - zc(-2)
    out[3] = np.mean([zc(j) for j in range(1, 9)], axis=0) - np.mean(
        [zc(-j) for j in range(1, 9)], axis=0
    )
    out[4] = np.max([zc(j) for j in range(0, 7)], axis=0)
    out[5] = zc(10)
    out[6] = np.cumsum(z[:, :n_out], axis=1) / (i + 1)
    # 0/1 indicators on the raw profile: local maxima (of the profile, of the 4 px step) near i
    j = np.arange(n)
    d = polar[:, np.minimum(j + 2, n - 1)] - polar[:, np.maximum(j - 2, 0)]
    peak = np.zeros((n_k, n), bool)
    step_peak = np.zeros((n_k, n), bool)
    if n >= 3:
        mid = slice(1, n - 1)
        peak[:, mid] = (polar[:, mid] >= polar[:, :-2]) & (polar[:, mid] > polar[:, 2:])
        step_peak[:, mid] = (d[:, mid] > 0) & (d[:, mid] >= d[:, :-2]) & (d[:, mid] > d[:, 2:])
    near = [np.clip(i + o, 0, n - 1) for o in range(-2, 3)]
    out[7] = np.any([peak[:, q] for q in near], axis=0)
    out[8] = d[:, :n_out] > 0
    out[9] = np.any([step_peak[:, q] for q in near], axis=0)
    return out


def candidate_features(fmaps, radii, sector, n_sectors):
    """Sector means of each feature map read along each candidate's outline."""
    n_f, n_k, n_r = fmaps.shape
    out = np.zeros((radii.shape[0], n_sectors * n_f))
    idx = np.clip(np.floor(radii + 0.5).astype(np.int64), 1, n_r - 1)
    for s in range(n_sectors):
        rays = np.flatnonzero(sector == s)
        for f in range(n_f):
            vals = fmaps[f][rays[None, :], idx[:, rays]]
            out[:, s * n_f + f] = vals.mean(axis=1)
    return out


def polar_score(polar, n_norm, n_out, w_sector, sector, ray_weight):
    """Score map (ray, radius): each ray's feature maps dotted with its sector's weights, times the
    ray's weight."""
    fm = polar_features(polar, n_norm, n_out)  # (feature, ray, radius)
    return ray_weight[:, None] * np.einsum("fki,kf->ki", fm, w_sector[sector])


def candidate_scores(score_map, radii, static_score):
    """The score map summed along each candidate's outline, plus its static score."""
    n_k, n_r = score_map.shape
    idx = np.clip(np.floor(radii + 0.5).astype(np.int64), 1, n_r - 1)
    return static_score + score_map[np.arange(n_k)[None, :], idx].sum(axis=1)


def polygon_moments(poly, o_r, o_c):
    """The seven Green's-theorem sums of the spec (vectorised over edges)."""
    y0 = poly[:, 0] - o_r
    x0 = poly[:, 1] - o_c
    y1, x1 = np.roll(y0, -1), np.roll(x0, -1)
    cr = x0 * y1 - x1 * y0
    return np.array(
        [
            cr.sum(),
            ((y0 + y1) * cr).sum(),
            ((x0 + x1) * cr).sum(),
            ((y0**2 + y0 * y1 + y1**2) * cr).sum(),
            ((x0**2 + x0 * x1 + x1**2) * cr).sum(),
            ((x0 * y1 + 2 * x0 * y0 + 2 * x1 * y1 + x1 * y0) * cr).sum(),
            np.hypot(x1 - x0, y1 - y0).sum(),
        ]
    )



def track_search(image, roi, pr, pc, step, move_cost, radii, sin_t, cos_t, sector, n_sectors, half, n_norm, n_r,
                 n_out, w_dyn, static_score):  # fmt: skip
    """Coordinate descent over centres: the centre; +-step along rows from it; +-step along cols from
    the best so far; each clamped to the image; a centre is worth its maximum score less
    ``move_cost`` per pixel from (pr, pc), and a strictly higher worth wins. Returns (best
    candidate, (row, col), scores at the best centre, the smallest gap between two worths compared:
    below rounding, compiled and plain code may break the tie differently)."""
    h, w = image.shape

    def worth(centre):
        polar = polar_sample(image, roi, centre[0], centre[1], sin_t, cos_t, half, n_r)
        feats = candidate_features(polar_features(polar, n_norm, n_out), radii, sector, n_sectors)
        s = feats @ w_dyn + static_score
        return s, s.max() - move_cost * np.hypot(centre[0] - pr, centre[1] - pc)

    best_centre = (pr, pc)
    best_scores, best = worth(best_centre)
    gap = np.inf
    for axis in (0, 1):
        base = best_centre
        for sign in (-1.0, 1.0):
            centre = list(base)
            centre[axis] = min(max(base[axis] + sign * step, 0.0), (h, w)[axis] - 1.0)
            s, v = worth(tuple(centre))
            gap = min(gap, abs(v - best))
            if v > best:
                best_centre, best_scores, best = tuple(centre), s, v
    return int(np.argmax(best_scores)), best_centre, best_scores, gap


def agreeing_mass(scores, radii, best):
    """Softmax probability of the candidates whose polar Dice with ``best`` is >= 0.9."""
    p = np.exp(scores - scores.max())
    p /= p.sum()
    rb = radii[best]
    dice = 2.0 * (np.minimum(radii, rb) ** 2).sum(axis=1) / ((radii**2).sum(axis=1) + (rb**2).sum())
    return p[dice >= 0.9].sum()
