"""Accuracy of mmstream.kernels.csa on the usgra-seg nerve images (expert masks).

One ``segment_from_seed`` call per nerve component (seed = the component's most interior point, from
``truth/nerve.json``), then: Dice against the component mask, relative area error, echogenicity
error (mean grey inside our contour, by :func:`mmstream.kernels.echogenicity.echogenicity`, vs the
truth's mean grey). A fixed 40 px circle at the seed is measured in the same run for scale.
Tracking (:func:`track_eval`): from the one-click result, ``track`` follows the real image kept
still, with fresh noise per frame, shifted by a few pixels per frame (black fill) and growing; Dice
against the moved mask and how far the area left the click's.

``--cv K``: also report K-fold cross-validated figures of the click (held-out images; each scored
with the network ensemble trained without its fold, ``build/csa_net/k{K}/fold*_m*.npz`` written by
tools/train_csa_net.py, and weights refitted on the other folds by tools/train_csa.py), overall and
by quarters of the expert area (the median signed area error shows whether outlines regress to the
mean size). The shipped
network and weights were trained on all these images, so the plain figures, and the tracking
figures that start from a click, are optimistic; quote the cross-validated ones.

Shared data: ``../shared/data`` beside the project root, or env ``MMSTREAM_SHARED_DATA``.
Exit status 2 with a message when the data are absent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def shared_data_dir() -> Path:
    env = os.environ.get("MMSTREAM_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


def require_data() -> Path:
    root = shared_data_dir()
    if not (root / "truth" / "nerve.json").is_file() or not (root / "usgra-seg").is_dir():
        sys.exit(
            f"error: shared data not found at {root} (need truth/nerve.json and usgra-seg/); "
            "set MMSTREAM_SHARED_DATA to the folder holding them"
        )
    return root


def load_grey(path: Path) -> np.ndarray:
    """BT.601 luma exactly as PIL ``Image.open(p).convert("L")``."""
    from PIL import Image

    with Image.open(path) as im:
        return np.array(im.convert("L"), dtype=np.uint8, order="C")  # writeable copy


def load_components(root: Path, limit_images: int | None = None):
    """Yield dicts: image index, grey image, component mask (bool), truth record."""
    import cv2
    from PIL import Image

    truth = json.loads((root / "truth" / "nerve.json").read_text())
    out = []
    for ii, rec in enumerate(truth["images"][:limit_images]):
        grey = load_grey(root / rec["path"])
        with Image.open(root / rec["mask"]) as m:
            labels = np.asarray(m)
        _, lab = cv2.connectedComponents((labels == 1).astype(np.uint8), connectivity=8)
        for comp in rec["components"]:
            r, c = comp["seed_rc"]
            mask = lab == lab[r, c]
            out.append({"img": ii, "grey": grey, "mask": mask, "truth": comp, "path": rec["path"]})
    return out


def rasterize(poly_rc: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixel centres inside the polygon (even-odd, half-open rule of echogenicity.py)."""
    mask = np.zeros(shape, bool)
    ra, ca = poly_rc[:, 0], poly_rc[:, 1]
    rb, cb = np.roll(ra, -1), np.roll(ca, -1)
    r_lo = max(int(np.ceil(ra.min())), 0)
    r_hi = min(int(np.ceil(ra.max())), shape[0])
    for r in range(r_lo, r_hi):
        sel = ((ra <= r) & (r < rb)) | ((rb <= r) & (r < ra))
        xs = np.sort(ca[sel] + (r - ra[sel]) * (cb[sel] - ca[sel]) / (rb[sel] - ra[sel]))
        for k in range(0, len(xs) - 1, 2):
            c0 = max(int(np.ceil(xs[k])), 0)
            c1 = min(int(np.ceil(xs[k + 1])), shape[1])
            mask[r, c0:c1] = True
    return mask


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return float(2.0 * (a & b).sum() / s) if s else 1.0


def metrics(contour_rc: np.ndarray, comp) -> dict:
    from mmstream.kernels.echogenicity import echogenicity

    pred = rasterize(contour_rc, comp["mask"].shape)
    t = comp["truth"]
    mean_in = echogenicity(comp["grey"], polygon_rc=contour_rc).mean
    signed = (float(pred.sum()) - t["area_px"]) / t["area_px"]
    return {
        "dice": dice(pred, comp["mask"]),
        "rel_area_err": abs(signed),
        "signed_area_err": signed,
        "echo_err": abs(mean_in - t["mean_grey"]) if np.isfinite(mean_in) else 255.0,
    }


def by_size(rows: list[dict], comps, n_groups: int = 4) -> list[dict]:
    """Per size group (quantiles of the expert area): its area range (px^2), median Dice and median
    signed relative area error (positive: outlines too large)."""
    area = np.array([c["truth"]["area_px"] for c in comps], np.float64)
    edges = np.quantile(area, np.linspace(0, 1, n_groups + 1))
    group = np.clip(np.searchsorted(edges, area, side="right") - 1, 0, n_groups - 1)
    out = []
    for g in range(n_groups):
        sel = [r for r, k in zip(rows, group, strict=True) if k == g]
        out.append({
            "area_px": [float(edges[g]), float(edges[g + 1])], "n": len(sel),
            "dice_median": float(np.median([r["dice"] for r in sel])),
            "signed_area_err_median": float(np.median([r["signed_area_err"] for r in sel])),
        })  # fmt: skip
    return out


def folds_by_image(comps, k: int) -> np.ndarray:
    """Fold (0..k-1) of each component; the components of one image share a fold (fixed seed)."""
    imgs = np.array([c["img"] for c in comps])
    uniq = np.unique(imgs)
    rng = np.random.default_rng(0)
    fold_of = dict(zip(rng.permutation(uniq), np.arange(len(uniq)) % k))
    return np.array([fold_of[i] for i in imgs])


def circle(seed_rc, radius=40.0, n=64) -> np.ndarray:
    th = 2 * np.pi * np.arange(n) / n
    return np.stack([seed_rc[0] + radius * np.sin(th), seed_rc[1] + radius * np.cos(th)], axis=1)


def summarize(rows: list[dict]) -> dict:
    out = {}
    for key in ("dice", "rel_area_err", "echo_err"):
        v = np.array([r[key] for r in rows], np.float64)
        out[key] = {
            "median": float(np.median(v)),
            "mean": float(v.mean()),
            "p10": float(np.percentile(v, 10)),
            "p90": float(np.percentile(v, 90)),
        }
    return out


def shift_image(img: np.ndarray, dr: int, dc: int) -> np.ndarray:
    out = np.zeros_like(img)
    h, w = img.shape
    out[max(dr, 0) : h + min(dr, 0), max(dc, 0) : w + min(dc, 0)] = img[
        max(-dr, 0) : h + min(-dr, 0), max(-dc, 0) : w + min(-dc, 0)
    ]
    return out


SHIFTS_RC = ((2, 1), (2, 1), (-1, 3), (3, -2), (0, 0), (2, 2), (-2, 1), (1, -3))
GROWTH_PER_FRAME = 1.025  # "growing": the image scaled about the seed by this factor per frame


def _scaled(img: np.ndarray, scale: float, center_rc) -> np.ndarray:
    import cv2

    m = cv2.getRotationMatrix2D((float(center_rc[1]), float(center_rc[0])), 0.0, scale)
    return cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), flags=cv2.INTER_LINEAR)


def _scenario_frames(name: str, comp, rng):
    """(image, expert mask, expected area factor) for each frame of a tracking scenario."""
    g, m = comp["grey"], comp["mask"]
    if name in ("static", "noisy"):
        for _ in range(10):
            img = g if name == "static" else np.clip(g + rng.normal(0.0, 6.0, g.shape), 0, 255).astype(np.uint8)
            yield img, m, 1.0
    elif name == "shifted":
        tot = np.zeros(2, int)
        for st in SHIFTS_RC:
            tot += st
            yield shift_image(g, *tot), shift_image(m.astype(np.uint8), *tot) > 0, 1.0
    else:  # growing
        seed = comp["truth"]["seed_rc"]
        for k in range(1, 9):
            s = GROWTH_PER_FRAME**k
            yield _scaled(g, s, seed), _scaled(m.astype(np.uint8) * 255, s, seed) > 127, s * s


def track_eval(comps, segment, track, seed: int = 0) -> dict:
    """Track from each component's click through four scenarios, judged at the last frame:
    ``static`` (the same image 10 times), ``noisy`` (10 frames of the image with fresh Gaussian noise
    of SD 6 grey levels), ``shifted`` (8 frames moving by SHIFTS_RC, black fill) and ``growing``
    (8 frames scaled about the seed by GROWTH_PER_FRAME each: the area grows 5 % per frame). Per
    scenario: median Dice against the (moved) expert mask, and the median of ``|area / (click area
    x expected factor) - 1|``: how far the tracked area left the click's."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in ("static", "noisy", "shifted", "growing"):
        dices, changes = [], []
        for comp in comps:
            first = res = segment(comp["grey"], tuple(comp["truth"]["seed_rc"]))
            for img, msk, factor in _scenario_frames(name, comp, rng):
                res = track(img, res)
            dices.append(dice(rasterize(res.contour_rc, msk.shape), msk))
            changes.append(abs(res.area_px / (first.area_px * factor) - 1.0))
        out[name] = {"median_dice_last": float(np.median(dices)), "median_area_change_last": float(np.median(changes)),
                     "p90_area_change_last": float(np.percentile(changes, 90))}  # fmt: skip
    return out


def print_table(name: str, s: dict) -> None:
    print(f"{name}")
    print(f"  {'metric':<14}{'median':>9}{'mean':>9}{'p10':>9}{'p90':>9}")
    for key, v in s.items():
        print(f"  {key:<14}{v['median']:9.3f}{v['mean']:9.3f}{v['p10']:9.3f}{v['p90']:9.3f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, help="write the JSON record here")
    ap.add_argument("--cv", type=int, default=0, help="also K-fold cross-validate (K >= 2)")
    ap.add_argument("--members", help="comma list of the ensemble members averaged in --cv (default: the shipped ones)")
    ap.add_argument("--track-n", type=int, default=40, help="components used for the tracking test")
    args = ap.parse_args(argv)
    root = require_data()
    from mmstream.kernels import csa

    comps = load_components(root)
    rows, base, times = [], [], []
    for comp in comps:
        seed = tuple(comp["truth"]["seed_rc"])
        t0 = time.perf_counter()
        res = csa.segment_from_seed(comp["grey"], seed)
        times.append(time.perf_counter() - t0)
        rows.append(metrics(res.contour_rc, comp) | {"confidence": res.confidence})
        base.append(metrics(circle(seed), comp))
    record = {
        "n_components": len(comps),
        "n_images": len({c["img"] for c in comps}),
        "shipped_weights_all_images": summarize(rows),
        "circle40_baseline": summarize(base),
        "segment_ms_median": 1e3 * float(np.median(times)),
    }
    print(f"{record['n_components']} nerve components in {record['n_images']} images")
    print_table("csa.segment_from_seed, shipped weights (trained on these images: optimistic)", record["shipped_weights_all_images"])
    print_table("fixed 40 px circle at the seed", record["circle40_baseline"])
    print(f"segment_from_seed median time {record['segment_ms_median']:.2f} ms")
    if args.cv >= 2:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import train_csa

        members = [int(m) for m in args.members.split(",")] if args.members else None
        cv_rows = train_csa.cross_validate(comps, args.cv, train_csa.held_out_nets(comps, args.cv, members=members))
        record[f"cv{args.cv}_held_out"] = summarize(cv_rows)
        print_table(f"{args.cv}-fold cross-validated (held-out images)", record[f"cv{args.cv}_held_out"])
        record[f"cv{args.cv}_by_size"] = by_size(cv_rows, comps)
        print("  by expert area (quarters): area px^2, n, median Dice, median signed area error")
        for g in record[f"cv{args.cv}_by_size"]:
            lo, hi = g["area_px"]
            print(f"    {lo:7.0f}-{hi:<7.0f}{g['n']:5d}{g['dice_median']:9.3f}{g['signed_area_err_median']:+9.3f}")
    sub = comps[:: max(1, len(comps) // args.track_n)][: args.track_n]
    tr = track_eval(sub, csa.segment_from_seed, csa.track)
    record["tracking"] = tr | {"n_components": len(sub)}
    print(f"tracking from the click on {len(sub)} components, at the last frame (track_eval):")
    print(f"  {'scenario':<10}{'Dice':>8}{'|area change|':>15}{'p90':>8}")
    for name, v in tr.items():
        print(f"  {name:<10}{v['median_dice_last']:8.3f}{v['median_area_change_last']:15.3f}{v['p90_area_change_last']:8.3f}")
    if args.json:
        args.json.write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
