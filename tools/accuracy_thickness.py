"""Accuracy of mmstream.kernels.thickness on the TimTrack longitudinal muscle images.

For every image of ``truth/thickness.json`` (dataset1 vastus lateralis, dataset4 gastrocnemius
medialis): ``measure_thickness(image)`` with ``roi=None`` (the B-mode region and both aponeuroses
are found automatically), then ``deep row - superficial row`` read from the two polylines at the
truth's ``measure_at_col`` (linear interpolation between polyline points, clamped at the ends),
compared with the observers' mean. The observers' own disagreement is computed the same way: each
observer against the mean of the other two, absolute differences pooled over observers and images.
A naive baseline (per-column strongest vertical gradient in the upper and lower half of the
B-mode column at ``measure_at_col``) runs in the same pass for scale.

Timing: first-frame time (``previous=None``) and tracking time (``previous`` = the result on the
same image) per image, median over images, one thread.

Shared data: ``../shared/data`` beside the project root, or env ``MMSTREAM_SHARED_DATA``.
Exit status 2 with a message when the data are absent.

With ``--clicks`` (dataset 1, needs openpyxl): the thickness measured from each observer's clicks
on the lines, against the other two observers (:func:`evaluate_clicked`).

    python tools/accuracy_thickness.py [--json out.json] [--limit N] [--clicks]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

FAIL_PX = 20.0  # an absolute error above this counts as a failure (wrong structure)


def shared_data_dir() -> Path:
    env = os.environ.get("MMSTREAM_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


def require_data() -> Path:
    root = shared_data_dir()
    if not (root / "truth" / "thickness.json").is_file() or not (root / "timtrack").is_dir():
        print(
            f"error: shared data not found at {root} (need truth/thickness.json and timtrack/); "
            "set MMSTREAM_SHARED_DATA to the folder holding them",
            file=sys.stderr,
        )
        sys.exit(2)
    return root


def load_grey(path: Path) -> np.ndarray:
    """BT.601 luma exactly as PIL ``Image.open(p).convert("L")``."""
    from PIL import Image

    with Image.open(path) as im:
        return np.array(im.convert("L"), dtype=np.uint8, order="C")


def dataset1_observer_rows(root: Path) -> dict[str, list[tuple[float, float]]]:
    """path -> [(superficial row, deep row)] of each observer who measured the dataset 1 image
    (``spoint``/``dpoint`` of sheets TZ, EM, BH of ``dataset1_for_manual_estimation.xlsx``;
    needs openpyxl: ``pip install -e ".[train]"``)."""
    import openpyxl

    wb = openpyxl.load_workbook(root / "timtrack/dataset1_VL/dataset1_for_manual_estimation.xlsx", data_only=True)
    rows: dict[str, list] = {}
    for sheet in ("TZ", "EM", "BH"):
        for row in list(wb[sheet].iter_rows(values_only=True))[1:]:
            s, leg, name, _, _, sp, dp = row[:7]
            if s is not None:
                rows.setdefault(f"timtrack/dataset1_VL/S{s}/S{s}_{leg}20_step_{int(name):03d}.png", []).append((sp, dp))
    return rows


def line_row_at(poly: np.ndarray, col: float) -> float:
    """Row of a (K, 2) [row, col] polyline at ``col`` (linear, clamped at the ends)."""
    return float(np.interp(col, poly[:, 1], poly[:, 0]))


def naive_thickness(image: np.ndarray, col: int, bmode_cols) -> float:
    """Per-column strongest gradient: strongest |d/drow| (rows smoothed over 5 px, columns over
    5 px) in the upper half and in the lower half of the column; their row difference."""
    c0 = max(int(bmode_cols[0]), col - 2)
    c1 = min(int(bmode_cols[1]) + 1, col + 3)
    prof = image[:, c0:c1].astype(np.float64).mean(axis=1)
    prof = np.convolve(prof, np.ones(5) / 5, mode="same")
    g = np.abs(np.gradient(prof))
    g[:3] = 0
    g[-3:] = 0
    h = len(g) // 2
    return float((h + np.argmax(g[h:])) - np.argmax(g[:h]))


def inter_observer(obs: list[float]) -> list[float]:
    o = np.asarray(obs, np.float64)
    return [abs(o[i] - np.delete(o, i).mean()) for i in range(len(o))]


def evaluate(root: Path, limit: int | None = None, timing: bool = True) -> dict:
    from mmstream.kernels.thickness import measure_thickness

    truth = json.loads((root / "truth" / "thickness.json").read_text())
    recs = [r for r in truth["images"] if r["path"].startswith("timtrack/")][:limit]
    rows = []
    measure_thickness(np.zeros((64, 64), np.uint8))  # JIT / cache load outside the timings
    for rec in recs:
        img = load_grey(root / rec["path"])
        t0 = time.perf_counter()
        res = measure_thickness(img)
        t1 = time.perf_counter()
        t_track = float("nan")
        if timing:
            t2 = time.perf_counter()
            measure_thickness(img, previous=res)
            t_track = time.perf_counter() - t2
        col = rec["measure_at_col"]
        ours = line_row_at(res.deep_rc, col) - line_row_at(res.superficial_rc, col)
        naive = naive_thickness(img, col, rec["bmode_cols"])
        rows.append(
            {
                "path": rec["path"],
                "dataset": rec["dataset"],
                "truth_px": rec["mean_px"],
                "ours_px": ours,
                "err_px": ours - rec["mean_px"],
                "width_median_err_px": res.thickness_px - rec["mean_px"],  # what the API reports, vs the column
                "naive_px": naive,
                "naive_err_px": naive - rec["mean_px"],
                "observer_dev_px": inter_observer(rec["observers_px"]),
                "confidence": res.confidence,
                "region_rc": list(res.region_rc),
                "t_first_ms": (t1 - t0) * 1e3,
                "t_track_ms": t_track * 1e3,
            }
        )
    summary = {}
    for ds in sorted({r["dataset"] for r in rows}):
        rr = [r for r in rows if r["dataset"] == ds]
        e = np.abs([r["err_px"] for r in rr])
        ne = np.abs([r["naive_err_px"] for r in rr])
        we = np.abs([r["width_median_err_px"] for r in rr])
        od = np.concatenate([r["observer_dev_px"] for r in rr])
        summary[ds] = {
            "n": len(rr),
            "mae_px": float(e.mean()),
            "median_px": float(np.median(e)),
            "p90_px": float(np.percentile(e, 90)),
            "failures": int((e > FAIL_PX).sum()),
            "observer_mae_px": float(od.mean()),
            "naive_mae_px": float(ne.mean()),
            "naive_failures": int((ne > FAIL_PX).sum()),
            "width_median_mae_px": float(we.mean()),
            "width_median_failures": int((we > FAIL_PX).sum()),
            "t_first_ms_median": float(np.median([r["t_first_ms"] for r in rr])),
            "t_track_ms_median": float(np.median([r["t_track_ms"] for r in rr])),
        }
    return {"summary": summary, "images": rows, "fail_px": FAIL_PX}


CLICKS = {"both lines": ("superficial", "deep"), "deep line": ("deep",)}


def evaluate_clicked(root: Path, limit: int | None = None) -> dict:
    """Thickness from an observer's clicks, against the other two observers.

    For every dataset 1 image and every observer: ``measure_thickness`` with that observer's
    point on the lines of each ``CLICKS`` variant (``superficial_at_rc`` / ``deep_at_rc`` at
    ``measure_at_col``; the other line is chosen automatically), then the thickness read at that
    column against the mean of the other two observers. On the same basis, the observer's own
    thickness against the other two is the human disagreement. A click settles which line;
    mmstream still places it on the edge. A refused click counts as a failure."""
    from mmstream.errors import InputError
    from mmstream.kernels.thickness import measure_thickness

    truth = json.loads((root / "truth" / "thickness.json").read_text())
    observers = dataset1_observer_rows(root)
    recs = [r for r in truth["images"] if len(observers.get(r["path"], ())) == 3][:limit]
    errors: dict[str, list[float]] = {name: [] for name in (*CLICKS, "observer")}
    for rec in recs:
        img = load_grey(root / rec["path"])
        col = rec["measure_at_col"]
        obs = np.asarray(observers[rec["path"]], np.float64)
        for o in range(3):
            others = float(np.delete(obs[:, 1] - obs[:, 0], o).mean())
            at = {"superficial": (obs[o, 0], col), "deep": (obs[o, 1], col)}
            for name, lines in CLICKS.items():
                try:
                    res = measure_thickness(img, **{f"{line}_at_rc": at[line] for line in lines})
                except InputError:  # a refused click counts as a failure (no thickness)
                    errors[name].append(np.inf)
                    continue
                errors[name].append(line_row_at(res.deep_rc, col) - line_row_at(res.superficial_rc, col) - others)
            errors["observer"].append(obs[o, 1] - obs[o, 0] - others)
    summary = {}
    for name, e in errors.items():
        a = np.abs(e)
        summary[name] = {"n": int(a.size), "mae_px": float(a[np.isfinite(a)].mean()), "median_px": float(np.median(a)),
                         "failures": int((a > FAIL_PX).sum()), "refused": int(np.isinf(a).sum())}  # fmt: skip
    return {"images": len(recs), "summary": summary, "fail_px": FAIL_PX}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, help="write the full record (per image) to this file")
    ap.add_argument("--limit", type=int, help="first N images only")
    ap.add_argument("--worst", type=int, default=0, help="list the N worst images")
    ap.add_argument("--clicks", action="store_true",
                    help="also measure from each observer's clicks on the lines (dataset 1; needs openpyxl)")  # fmt: skip
    args = ap.parse_args(argv)
    root = require_data()
    out = evaluate(root, args.limit)
    hdr = (
        f"{'dataset':<28}{'n':>4}{'MAE':>7}{'obs':>7}{'ratio':>7}{'med':>7}{'p90':>7}"
        f"{'fail':>6}{'naive':>8}{'nfail':>6}{'width':>7}{'wfail':>6}{'first ms':>10}{'track ms':>10}"
    )
    print(hdr)
    for ds, s in out["summary"].items():
        print(
            f"{ds:<28}{s['n']:>4}{s['mae_px']:>7.2f}{s['observer_mae_px']:>7.2f}"
            f"{s['mae_px'] / s['observer_mae_px']:>7.2f}{s['median_px']:>7.2f}{s['p90_px']:>7.2f}"
            f"{s['failures']:>6}{s['naive_mae_px']:>8.2f}{s['naive_failures']:>6}"
            f"{s['width_median_mae_px']:>7.2f}{s['width_median_failures']:>6}"
            f"{s['t_first_ms_median']:>10.2f}{s['t_track_ms_median']:>10.3f}"
        )
    print(f"(MAE, obs = observer vs mean of the other two, med, p90 in px; fail = |err| > {FAIL_PX:g} px; "
          "width, wfail: the reported thickness_px, the median over the width, against the same observers)")
    if args.worst:
        for r in sorted(out["images"], key=lambda r: -abs(r["err_px"]))[: args.worst]:
            print(f"  {r['path']:<60} err {r['err_px']:+7.1f}  conf {r['confidence']:.2f}")
    if args.clicks:
        out["clicked"] = evaluate_clicked(root, args.limit)
        print(f"\ndataset 1 from one observer's clicks, against the other two ({out['clicked']['images']} images x 3):")
        print(f"{'clicked':<28}{'n':>4}{'MAE':>7}{'med':>7}{'fail':>6}{'refused':>9}")
        for name, s in out["clicked"]["summary"].items():
            label = "none (the observer's own)" if name == "observer" else name
            print(f"{label:<28}{s['n']:>4}{s['mae_px']:>7.2f}{s['median_px']:>7.2f}{s['failures']:>6}{s['refused']:>9}")
        print("(fail = |err| > 20 px, refused clicks included; MAE over the measured ones)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
