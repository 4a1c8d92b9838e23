"""Plain-numpy twins of the thickness kernels, written from their specifications (docstrings),
slow and obvious on purpose: vectorised whole-array expressions or brute force, never the kernels'
loops."""

import itertools

import numpy as np


def activity(image, r0, c0, r1, c1):
    """(col_count (c1-c0,), row_count (r1-r0,)): pixels differing from the pixel below."""
    sub = image[r0:r1, c0:c1].astype(np.int64)
    act = sub[:-1] != sub[1:]
    row = np.zeros(r1 - r0, np.int64)
    row[: act.shape[0]] = act.sum(axis=1)
    return act.sum(axis=0).astype(np.int64), row


def bin_columns(image, r0, c0, r1, c1, bin_cols, nb):
    sub = image[r0:r1, c0 : c0 + nb * bin_cols].astype(np.float64)
    return sub.reshape(r1 - r0, nb, bin_cols).mean(axis=2)


def vertical_step(cm, k):
    h, nb = cm.shape
    out = np.zeros((h, nb))
    for r in range(k, h - k + 1):
        out[r] = cm[r : r + k].mean(axis=0) - cm[r - k : r].mean(axis=0)
    return out


def line_scores(g, slopes, bin_width):
    h, nb = g.shape
    x = (np.arange(nb) + 0.5) * bin_width - nb * bin_width / 2.0
    out = np.zeros((h, len(slopes)))
    for s, slope in enumerate(slopes):
        off = np.round(slope * x).astype(np.int64)
        for r in range(h):
            rows = r + off
            ok = (rows >= 0) & (rows < h)
            if 2 * ok.sum() >= nb:
                out[r, s] = g[rows[ok], np.flatnonzero(ok)].mean()
    return out


def band_path_score(g, sign, path):
    return float(sign * g[path, np.arange(g.shape[1])].sum())


def band_path_brute(g, sign, center, half, max_step):
    """Best score over all admissible paths, by exhaustive enumeration (tiny inputs only), or
    None when no admissible path exists."""
    h, nb = g.shape
    choices = []
    for j in range(nb):
        c = int(np.round(center[j]))
        choices.append([r for r in range(c - half, c + half + 1) if 0 <= r < h])
    best = None
    for p in itertools.product(*choices):
        if any(abs(p[j] - p[j - 1]) > max_step for j in range(1, nb)):
            continue
        s = band_path_score(g, sign, np.array(p))
        if best is None or s > best:
            best = s
    return best


def path_is_admissible(path, h, center, half, max_step):
    path = np.asarray(path)
    c = np.round(center).astype(np.int64)
    return bool(
        np.all((path >= 0) & (path < h))
        and np.all(np.abs(path - c) <= half)
        and np.all(np.abs(np.diff(path)) <= max_step)
    )


def structure(image, r0, c0, r1, bin_cols, d, nb):
    """(3, r1 - r0 + 1, nb): cumulative sums over rows of the per-bin sums of gc^2, gr^2, gr*gc
    (central differences at distance d, zero where they would leave the image)."""
    im = image.astype(np.int64)
    h, w = im.shape
    gc = np.zeros_like(im)
    gr = np.zeros_like(im)
    if w > 2 * d:
        gc[:, d : w - d] = im[:, 2 * d :] - im[:, : w - 2 * d]
    if h > 2 * d:
        gr[d : h - d, :] = im[2 * d :, :] - im[: h - 2 * d, :]
    out = np.zeros((3, r1 - r0 + 1, nb))
    for k, prod in enumerate((gc * gc, gr * gr, gr * gc)):
        per_bin = prod[r0:r1, c0 : c0 + nb * bin_cols].reshape(r1 - r0, nb, bin_cols).sum(axis=2)
        out[k, 1:] = np.cumsum(per_bin, axis=0)
    return out
