"""Train the CSA candidate score (conditional logit) from ../shared/data/usgra-seg.

For every nerve component: the outline features of all ellipse candidates around its seed (the
kernels of mmstream.kernels._csa_polar), shape-prior features, and the network features of
mmstream.kernels.csa_net computed with the network ensemble trained without the component's fold
(held-out predictions, as on a new image: ``tools/train_csa_net.py --member M`` must have written
the fold networks of every member);
a soft target over the candidates from their polar Dice with the expert mask (``exp((dice - max
dice) / TAU)``); weights fitted by L-BFGS on the softmax cross-entropy with an L2 penalty. Two
weight vectors: the click's (all features) and the tracker's (outline and shape features only).
It reports K-fold cross-validated pixel metrics of the click (folds by image: no image in both
train and test; each held-out image is scored with its fold's network and weights) before writing
the weights trained on all images to src/mmstream/kernels/_csa_model.py (a few dozen floats).

Usage: python tools/train_csa.py [--folds 5] [--no-write]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy_nerve as acc  # noqa: E402
import train_csa_net  # noqa: E402
from accuracy_nerve import folds_by_image  # noqa: E402

from mmstream.kernels import _csa_candidates as cands  # noqa: E402
from mmstream.kernels import csa, csa_net  # noqa: E402

TAU = 0.03
L2 = 1e-3
MODEL_PATH = Path(__file__).resolve().parents[1] / "src" / "mmstream" / "kernels" / "_csa_model.py"


def truth_radii(mask: np.ndarray, seed_rc, sin_t, cos_t, r_max: float) -> np.ndarray:
    """Distance from the seed to the first mask exit along each ray (0.5 px steps)."""
    h, w = mask.shape
    steps = np.arange(0.0, r_max + 0.5, 0.5)
    out = np.empty(len(sin_t))
    for k in range(len(sin_t)):
        rr = np.floor(seed_rc[0] + steps * sin_t[k] + 0.5).astype(int)
        cc = np.floor(seed_rc[1] + steps * cos_t[k] + 0.5).astype(int)
        ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        inside = np.zeros(len(steps), bool)
        inside[ok] = mask[rr[ok], cc[ok]]
        first_out = np.argmin(inside) if not inside.all() else len(steps)
        out[k] = steps[max(first_out - 1, 0)] + 0.25
    return out


def polar_dice(radii: np.ndarray, rt: np.ndarray) -> np.ndarray:
    inter = np.minimum(radii, rt[None, :]) ** 2
    return 2.0 * inter.sum(1) / ((radii**2).sum(1) + (rt**2).sum())


def held_out_nets(comps, k: int, fold_dir: Path = train_csa_net.FOLD_DIR, members=None) -> list[tuple]:
    """Per component, the ensemble (one network per member; default: as many as the shipped
    ensemble) trained without its fold (``fold_dir/k{K}/fold{f}_m{M}.npz``)."""
    members = range(len(csa_net.SHIPPED)) if members is None else members
    paths = {m: train_csa_net.fold_paths(fold_dir, k, m) for m in members}
    missing = [str(p) for ps in paths.values() for p in ps if not p.is_file()]
    if missing:
        sys.exit(f"error: fold networks missing ({', '.join(missing)}); run tools/train_csa_net.py --folds {k} --member M")
    nets = {m: [csa_net.load_net(p) for p in ps] for m, ps in paths.items()}
    return [tuple(nets[m][f] for m in members) for f in folds_by_image(comps, k)]


def design(comps, nets):
    """Per component: X (n_cand, N_OUTLINE + N_NET_FEATURES) float32 (outline, shape and, with
    ``nets[i]``, network features) and the polar Dice of each candidate."""
    ws = cands._workspace()
    xs, ds = [], []
    for comp, net in zip(comps, nets, strict=True):
        seed = tuple(float(v) for v in comp["truth"]["seed_rc"])
        dyn = cands._features_at(comp["grey"], seed[0], seed[1], csa.CAND_RADII, ws)
        learned = csa_net.net_features(comp["grey"], seed, csa.CAND_RADII, csa.SIN_T, csa.COS_T, net)
        xs.append(np.hstack([dyn, csa.CAND_STATIC, learned]).astype(np.float32))
        rt = truth_radii(comp["mask"], seed, csa.SIN_T, csa.COS_T, csa.R_MAX + 40)
        ds.append(polar_dice(csa.CAND_RADII, rt).astype(np.float32))
    return np.stack(xs), np.stack(ds)


def fit(x: np.ndarray, d: np.ndarray, l2: float = L2, tau: float = TAU) -> np.ndarray:
    n, _, f = x.shape
    flat = x.reshape(-1, f).astype(np.float64)
    sd = flat.std(0) + 1e-9
    mu = flat.mean(0)
    xs = (x - mu) / sd
    q = np.exp((d - d.max(1, keepdims=True)) / tau)
    q /= q.sum(1, keepdims=True)

    def loss(w):
        s = xs @ w
        m = s.max(1, keepdims=True)
        e = np.exp(s - m)
        z = e.sum(1, keepdims=True)
        p = e / z
        val = (np.log(z[:, 0]) + m[:, 0] - (q * s).sum(1)).sum() / n + l2 * w @ w
        grad = np.einsum("nc,ncf->f", p - q, xs) / n + 2 * l2 * w
        return val, grad

    res = minimize(loss, np.zeros(f), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    return res.x / sd


def cross_validate(comps, k: int, nets=None, xd=None) -> list[dict]:
    """Held-out pixel metrics of the click, one row per component (network and weights trained
    without its fold)."""
    nets = held_out_nets(comps, k) if nets is None else nets
    x, d = design(comps, nets) if xd is None else xd
    fold = folds_by_image(comps, k)
    rows = [None] * len(comps)
    for f in range(k):
        w = fit(x[fold != f], d[fold != f])
        for i in np.flatnonzero(fold == f):
            seed = tuple(float(v) for v in comps[i]["truth"]["seed_rc"])
            res = csa._segment(comps[i]["grey"], seed, w, nets[i])
            rows[i] = acc.metrics(res.contour_rc, comps[i])
    return rows


def write_model(click: np.ndarray, track: np.ndarray, note: str) -> None:
    def array(name, w):
        body = ",\n".join(f"        {v!r}" for v in w.tolist())
        return f"{name} = np.array(\n    [\n{body},\n    ],\n    dtype=np.float64,\n)\n"

    MODEL_PATH.write_text(
        '"""Weights of the CSA candidate score (generated by tools/train_csa.py: do not edit).\n\n'
        f"{note}\n"
        "CLICK_WEIGHTS: outline, shape and network features; TRACK_WEIGHTS: outline and shape only.\n"
        '"""\n\nimport numpy as np\n\n' + array("CLICK_WEIGHTS", click) + "\n" + array("TRACK_WEIGHTS", track)
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--folds", type=int, default=5, help="folds of the networks and of the CV (>= 2)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    root = acc.require_data()
    comps = acc.load_components(root)
    nets = held_out_nets(comps, args.folds)
    x, d = design(comps, nets)
    s = acc.summarize(cross_validate(comps, args.folds, nets, (x, d)))
    acc.print_table(f"{args.folds}-fold cross-validated click, held-out images", s)
    note = (
        f"Trained on {len(comps)} nerve components of usgra-seg (TAU={TAU}, L2={L2}).\n"
        f"{args.folds}-fold CV by image: median Dice {s['dice']['median']:.4f}, "
        f"median rel. area error {s['rel_area_err']['median']:.3f}, "
        f"median echogenicity error {s['echo_err']['median']:.2f} grey levels."
    )
    if not args.no_write:
        write_model(fit(x, d), fit(x[:, :, : csa.N_OUTLINE], d), note)
        print(f"wrote {MODEL_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
