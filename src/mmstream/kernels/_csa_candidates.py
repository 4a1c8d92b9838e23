"""Candidate outlines of :mod:`mmstream.kernels.csa` (step 3 of its method) and their scores at a
centre.

The fixed family of ellipses centred on the seed (``CAND_PARAMS`` (n, 3) = minor semi-axis px,
aspect ratio, tilt deg; ``CAND_RADII`` (n, N_ANGLES) px along every ray; ``CAND_STATIC`` (n,
N_STATIC) shape-prior features), the subset near a previous outline that tracking searches, the
per-thread workspace of the polar kernels (:mod:`._csa_polar`), and the outline score of every
candidate at one centre (:func:`_score_at`) or its features (:func:`_features_at`, the design
matrix of ``tools/train_csa.py``).
"""

import functools
import threading

import numpy as np

from mmstream.kernels._csa_polar import (
    BOX_HALF,
    COS_T,
    N_ANGLES,
    N_FMAPS,
    N_NORM,
    N_SECTORS,
    SECTOR,
    SIN_T,
    THETA,
    _box_integral,
    _candidate_features,
    _candidate_scores,
    _polar_features,
    _polar_sample,
    _polar_score,
)

R_MAX = 160  # largest candidate radius (px)
MARGIN = 12  # radial samples beyond the largest candidate radius needed by the feature maps
B_GRID = 3.0 * 1.06 ** np.arange(62)  # minor semi-axis (px), 3..110
ASPECT_GRID = np.array([1.0, 1.2, 1.45, 1.7, 2.0, 2.35, 2.75, 3.2, 3.8])
PHI_GRID_DEG = np.array([-30.0, -15.0, 0.0, 15.0, 30.0])
N_STATIC = 6  # shape-prior features per candidate

TRACK_SIZE_TOL = 0.13  # track: minor semi-axis within +-13 % of the previous one
TRACK_STEP_PX = 2.0  # track: centre offsets searched (0, +-step along rows and cols)
# Tracking priors (score units; the score is a conditional logit): a candidate loses TRACK_SHAPE_COST
# per unit of its mean |log radius ratio| to the previous outline over the rays, a centre
# TRACK_MOVE_COST per pixel of offset from the previous centroid. Without them the outline drifted on
# identical frames (area changed by a median 17 % over 10 frames of one image) towards the
# tracker's own optimum, which lacks the click's network features. Chosen with tools/accuracy_nerve.py
# --track-n (static, noisy, shifted and growing frames; README).
TRACK_SHAPE_COST = 10.0
TRACK_MOVE_COST = 0.2
_TRACK_EXTRA_PX = int(np.ceil(TRACK_STEP_PX)) + 1  # track: ROI margin for the moved centres


def _ellipse_radii(b: np.ndarray, aspect: np.ndarray, phi_deg: np.ndarray) -> np.ndarray:
    """Radius along every ray of ellipses centred on the seed: shape (len(b), N_ANGLES)."""
    b = np.asarray(b, np.float64)[:, None]
    a = b * np.asarray(aspect, np.float64)[:, None]
    psi = THETA[None, :] - np.radians(np.asarray(phi_deg, np.float64))[:, None]
    return a * b / np.sqrt((b * np.cos(psi)) ** 2 + (a * np.sin(psi)) ** 2)


def _static_features(params: np.ndarray) -> np.ndarray:
    """Shape-prior features of candidates ``params (n, 3) = (b, aspect, phi_deg)``."""
    lb = np.log(params[:, 0] / 20.0)
    la = np.log(params[:, 1])
    ph = params[:, 2] / 30.0
    return np.stack([lb, lb * lb, la, la * la, ph * ph, lb * la], axis=1)


def _build_candidates() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    b, asp, phi = np.meshgrid(B_GRID, ASPECT_GRID, PHI_GRID_DEG, indexing="ij")
    params = np.stack([b.ravel(), asp.ravel(), phi.ravel()], axis=1)
    params = params[params[:, 0] * params[:, 1] <= R_MAX]
    radii = np.ascontiguousarray(_ellipse_radii(params[:, 0], params[:, 1], params[:, 2]))
    return params, radii, np.ascontiguousarray(_static_features(params))


CAND_PARAMS, CAND_RADII, CAND_STATIC = _build_candidates()
_RAY_WEIGHT = np.ascontiguousarray(
    1.0 / np.bincount(SECTOR, minlength=N_SECTORS)[SECTOR].astype(np.float64)
)
N_DYNAMIC = N_SECTORS * N_FMAPS
N_OUTLINE = N_DYNAMIC + N_STATIC  # weights of the outline score (tracking uses only these)


class _Workspace:
    """Reusable buffers (one per thread) so tracking allocates only its outputs."""

    def __init__(self) -> None:
        n_r = R_MAX + MARGIN + 2
        side = 2 * (n_r + BOX_HALF + 1 + _TRACK_EXTRA_PX) + 3  # the largest ROI of _roi_integral
        self.integ = np.empty(side * side, np.int64)
        self.polar = np.empty(N_ANGLES * n_r, np.float64)
        self.score_map = np.empty(N_ANGLES * n_r, np.float64)
        self.scratch = np.empty(n_r * N_FMAPS, np.float64)  # one ray's feature maps
        self.fmaps = self.feats = None  # all feature maps and features: the trainer's, made on demand

    def score_views(self, n_out: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scratch (n_out, N_FMAPS), score_map (N_ANGLES, n_out))`` of :func:`_polar_score`."""
        return (self.scratch[: n_out * N_FMAPS].reshape(n_out, N_FMAPS),
                self.score_map[: N_ANGLES * n_out].reshape(N_ANGLES, n_out))  # fmt: skip



_TLS = threading.local()


def _workspace() -> _Workspace:
    ws = getattr(_TLS, "ws", None)
    if ws is None:
        ws = _TLS.ws = _Workspace()
    return ws


def _roi_integral(image, center_r, center_c, n_r, extra, ws):
    """Integral image (workspace view) of the ROI holding every box sample of radius < n_r."""
    reach = n_r + BOX_HALF + 1 + extra
    h, w = image.shape
    r0 = max(int(np.floor(center_r)) - reach, 0)
    c0 = max(int(np.floor(center_c)) - reach, 0)
    r1 = min(int(np.floor(center_r)) + reach + 2, h)
    c1 = min(int(np.floor(center_c)) + reach + 2, w)
    integ = ws.integ[: (r1 - r0 + 1) * (c1 - c0 + 1)].reshape(r1 - r0 + 1, c1 - c0 + 1)
    _box_integral(image, r0, c0, integ)
    return integ, r0, c0


def _n_radii(radii) -> tuple[int, int]:
    n_out = int(np.ceil(radii.max())) + 2
    return n_out, max(n_out + MARGIN, N_NORM)


def _polar_at(image, center_r, center_c, n_r, ws) -> np.ndarray:
    """Polar unwrap ``(N_ANGLES, n_r)`` (a view into the workspace) around a centre."""
    integ, r0, c0 = _roi_integral(image, center_r, center_c, n_r, 0, ws)
    polar = ws.polar[: N_ANGLES * n_r].reshape(N_ANGLES, n_r)
    _polar_sample(integ, r0, c0, center_r, center_c, SIN_T, COS_T, BOX_HALF, polar)
    return polar


def _features_at(image, center_r, center_c, radii, ws) -> np.ndarray:
    """Dynamic candidate features (a view into the workspace) of outlines ``radii`` at a centre
    (the design matrix of ``tools/train_csa.py``)."""
    n_out, n_r = _n_radii(radii)
    polar = _polar_at(image, center_r, center_c, n_r, ws)
    if ws.fmaps is None:
        ws.fmaps = np.empty(N_FMAPS * ws.polar.size, np.float64)
        ws.feats = np.empty(len(CAND_PARAMS) * N_DYNAMIC, np.float64)
    fmaps = ws.fmaps[: N_ANGLES * n_out * N_FMAPS].reshape(N_ANGLES, n_out, N_FMAPS)
    _polar_features(polar, N_NORM, fmaps)
    feats = ws.feats[: len(radii) * N_DYNAMIC].reshape(len(radii), N_DYNAMIC)
    _candidate_features(fmaps, radii, SECTOR, _RAY_WEIGHT, feats)
    return feats


def _split_weights(weights: np.ndarray, cand=slice(None)) -> tuple[np.ndarray, np.ndarray]:
    """``(w_sector (N_SECTORS, N_FMAPS), static score of the candidates cand)`` of a weight vector
    (its first ``N_DYNAMIC + N_STATIC`` entries)."""
    w_static = weights[N_DYNAMIC : N_DYNAMIC + N_STATIC]
    return weights[:N_DYNAMIC].reshape(N_SECTORS, N_FMAPS), CAND_STATIC[cand] @ w_static


def _score_at(image, center_r, center_c, weights, ws):
    """Outline score of every candidate centred at a point: ``_features_at(...) @ weights[:N_DYNAMIC]
    + CAND_STATIC @ weights[N_DYNAMIC:N_OUTLINE]``, summed along each outline from the score map."""
    n_out, n_r = _n_radii(CAND_RADII)
    polar = _polar_at(image, center_r, center_c, n_r, ws)
    scratch, score_map = ws.score_views(n_out)
    w_sector, static_score = _split_weights(weights)
    _polar_score(polar, N_NORM, w_sector, SECTOR, _RAY_WEIGHT, scratch, score_map)
    scores = np.empty(len(CAND_RADII))
    _candidate_scores(score_map, CAND_RADII, static_score, scores)
    return scores


def _track_shape_cost(prev: tuple[float, float, float], cand: np.ndarray) -> np.ndarray:
    """(len(cand),) ``TRACK_SHAPE_COST`` x the mean over rays of ``|log(r_cand / r_prev)|``, where
    ``r_prev`` are the radii of the previous ellipse ``prev = (b, aspect, phi_deg)``."""
    log_prev = np.log(_ellipse_radii(np.array([prev[0]]), np.array([prev[1]]), np.array([prev[2]])))
    return TRACK_SHAPE_COST * np.abs(np.log(CAND_RADII[cand]) - log_prev).mean(axis=1)


def _track_candidates(prev: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the candidates tracking searches, their :func:`_track_shape_cost`) for the
    previous ellipse ``prev = (b, aspect, phi_deg)``, its aspect and tilt snapped to the grids (an
    outline of the family is on them; cached: a tracked outline keeps its shape most frames)."""
    b, asp, phi = prev
    ia = int(np.argmin(np.abs(np.log(ASPECT_GRID / asp))))
    ip = int(np.argmin(np.abs(PHI_GRID_DEG - np.clip(phi, -90.0, 90.0))))
    return _track_candidates_cached(max(round(float(b), 3), 0.001), ia, ip)  # a sliver: finite costs


@functools.lru_cache(maxsize=256)
def _track_candidates_cached(b: float, ia: int, ip: int) -> tuple[np.ndarray, np.ndarray]:
    asp = ASPECT_GRID[ia]
    keep = (
        (np.abs(np.log(CAND_PARAMS[:, 0] / b)) <= np.log1p(TRACK_SIZE_TOL))
        & np.isin(CAND_PARAMS[:, 1], ASPECT_GRID[max(ia - 1, 0) : ia + 2])
        & np.isin(CAND_PARAMS[:, 2], PHI_GRID_DEG[max(ip - 1, 0) : ip + 2])
    )
    idx = np.flatnonzero(keep)
    if idx.size == 0:  # previous outline outside the searched family: nearest candidates
        d = np.abs(np.log(CAND_PARAMS[:, 0] / b)) + np.abs(np.log(CAND_PARAMS[:, 1] / asp))
        idx = np.argsort(d, kind="stable")[:9]
    cost = _track_shape_cost((b, asp, PHI_GRID_DEG[ip]), idx)
    idx.flags.writeable = cost.flags.writeable = False
    return idx, cost
