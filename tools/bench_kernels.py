"""Benchmark of the per-frame kernels and ``analyze_frame`` against OpenCV / scikit-image / numpy.

Everything runs on one core (OpenCV, Numba and BLAS threads limited to 1) on simulated B-mode frames of
512x512 and 1024x1024, in one process, so ratios are comparable within a run. Prints a table and
writes a JSON record (``--json PATH``). Also measures the start-up cost of the kernels in a fresh
process with a cold and a warm Numba cache.

    python tools/bench_kernels.py [--repeat N] [--json bench_kernels.json]

The peers are the obvious alternative a user would reach for; for CSA and thickness they are much
less accurate (see the accuracy tools), so their speed is the floor to beat, not an equivalent.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

for _var in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy loads its BLAS (the CSA network's convolutions)

import cv2  # noqa: E402
import numpy as np  # noqa: E402

cv2.setNumThreads(1)

from mmstream.analysis import analyze_frame  # noqa: E402
from mmstream.kernels import csa, thickness  # noqa: E402
from mmstream.kernels.echogenicity import echogenicity  # noqa: E402
from mmstream.kernels.quality import frame_quality  # noqa: E402
from mmstream_drivers.sim import SceneSpec, SimProbe  # noqa: E402


def timeit(fn, repeat: int) -> float:
    """Median seconds per call over ``repeat`` calls (after 3 warm-up calls)."""
    for _ in range(3):
        fn()
    times = np.empty(repeat)
    for i in range(repeat):
        t0 = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - t0
    return float(np.median(times))


def peers_echogenicity(img, roi):
    r0, c0, r1, c1 = roi
    sub = img[r0:r1, c0:c1]
    return {
        "opencv calcHist+meanStdDev": lambda: (cv2.calcHist([sub], [0], None, [256], [0, 256]), cv2.meanStdDev(sub)),
        "numpy bincount": lambda: np.bincount(sub.ravel(), minlength=256),
    }


def peers_quality(img):
    return {
        "opencv threshold+countNonZero+resize": lambda: (
            cv2.countNonZero(cv2.compare(img, 250, cv2.CMP_GE)),
            cv2.countNonZero(cv2.compare(img, 10, cv2.CMP_LE)),
            cv2.resize(img, (16, 16), interpolation=cv2.INTER_AREA),
        ),
    }


def peers_csa(img, seed_rc):
    from skimage.segmentation import flood

    seed_cv = (int(seed_rc[1]), int(seed_rc[0]))
    seed_sk = (int(seed_rc[0]), int(seed_rc[1]))

    def cv_flood():
        mask = np.zeros((img.shape[0] + 2, img.shape[1] + 2), np.uint8)
        cv2.floodFill(img.copy(), mask, seed_cv, 255, 12, 12, cv2.FLOODFILL_FIXED_RANGE | cv2.FLOODFILL_MASK_ONLY)
        cs, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        return cv2.contourArea(max(cs, key=cv2.contourArea))

    def cv_grabcut():
        r, c = seed_sk
        rect = (max(c - 60, 0), max(r - 60, 0), 120, 120)
        mask = np.zeros(img.shape, np.uint8)
        bgd, fgd = np.zeros((1, 65)), np.zeros((1, 65))
        cv2.grabCut(cv2.cvtColor(img, cv2.COLOR_GRAY2BGR), mask, rect, bgd, fgd, 2, cv2.GC_INIT_WITH_RECT)
        return mask

    # floodFill and flood are fast but segment the wrong region on real nerves (Dice 0.20 on
    # usgra-seg); GrabCut (0.02) is what a user would try next. scikit-image's random walker
    # (0.41) is left out: on speckle its conjugate-gradient solve often does not converge and one
    # call takes seconds
    return {
        "opencv floodFill+findContours": cv_flood,
        "skimage flood": lambda: flood(img, seed_sk, tolerance=12).sum(),
        "opencv grabCut (2 iterations, 120 px box)": cv_grabcut,
    }


def peers_thickness(img):
    def cv_sobel_argmax():
        g = cv2.Sobel(cv2.GaussianBlur(img, (0, 0), 2), cv2.CV_32F, 0, 1)
        h = img.shape[0] // 2
        return g[:h].argmax(axis=0), g[h:].argmax(axis=0)

    def scipy_gauss_argmax():
        from scipy import ndimage

        g = ndimage.gaussian_filter1d(img.astype(np.float32), 2, axis=0, order=1)
        h = img.shape[0] // 2
        return g[:h].argmax(axis=0), g[h:].argmax(axis=0)

    return {"opencv Sobel+argmax per column": cv_sobel_argmax, "scipy gaussian derivative+argmax": scipy_gauss_argmax}


def bench_size(shape, repeat: int) -> list[dict]:
    spacing = 51.2 / shape[0]
    probe = SimProbe(SceneSpec(shape=shape, spacing_mm=(spacing, spacing)), seed=1)
    f0, f1 = probe.frame(0), probe.frame(1)
    img = f1.image
    seed = f0.truth.nerve_center_rc
    h, w = shape
    roi = (h // 4, w // 4, 3 * h // 4, 3 * w // 4)
    first = analyze_frame(f0.image, spacing_mm=f0.truth.spacing_mm, seed=seed)
    prev_contour = csa.segment_from_seed(f0.image, seed)
    prev_lines = thickness.measure_thickness(f0.image)
    rows = []

    def add(kernel, ours, peers):
        t_ours = timeit(ours, repeat)
        for peer_name, fn in peers.items():
            t_peer = timeit(fn, max(3, repeat // 20) if "grabCut" in peer_name else repeat)
            rows.append({"shape": f"{h}x{w}", "kernel": kernel, "ours_us": t_ours * 1e6, "peer": peer_name,
                         "peer_us": t_peer * 1e6, "speedup": t_peer / t_ours})  # fmt: skip
        if not peers:
            rows.append({"shape": f"{h}x{w}", "kernel": kernel, "ours_us": t_ours * 1e6, "peer": "",
                         "peer_us": None, "speedup": None})  # fmt: skip

    add("echogenicity (ROI, half size)", lambda: echogenicity(img, rect=roi), peers_echogenicity(img, roi))
    add("quality (whole frame)", lambda: frame_quality(img), peers_quality(img))
    add("csa first click", lambda: csa.segment_from_seed(img, seed), peers_csa(img, seed))
    add("csa tracking", lambda: csa.track(img, prev_contour), {})
    add("thickness first frame", lambda: thickness.measure_thickness(img), peers_thickness(img))
    add("thickness tracking", lambda: thickness.measure_thickness(img, previous=prev_lines), {})
    deep_at = (float(f1.truth.deep_row[w // 2]), float(w // 2))
    add("thickness from a click on the deep line", lambda: thickness.measure_thickness(img, deep_at_rc=deep_at), {})
    add("analyze_frame tracking (all metrics)",
        lambda: analyze_frame(img, spacing_mm=f1.truth.spacing_mm, previous=first), {})  # fmt: skip
    add("analyze_frame click, rest tracked",
        lambda: analyze_frame(img, spacing_mm=f1.truth.spacing_mm, seed=seed, previous=first), {})  # fmt: skip
    add("analyze_frame first click (all metrics)",
        lambda: analyze_frame(img, spacing_mm=f1.truth.spacing_mm, seed=seed), {})  # fmt: skip
    return rows


STARTUP_SNIPPET = """
import time
t0 = time.perf_counter()
import numpy as np
from mmstream.analysis import analyze_frame
t1 = time.perf_counter()
from mmstream_drivers.sim import SimProbe
f = SimProbe(seed=2).frame(0)
t2 = time.perf_counter()
analyze_frame(f.image, spacing_mm=f.truth.spacing_mm, seed=f.truth.nerve_center_rc)
t3 = time.perf_counter()
print(t1 - t0, t3 - t2)
"""


def bench_startup() -> dict:
    """Import time and first-frame time in a fresh process, with a cold then a warm Numba cache."""
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for label in ("cold_cache", "warm_cache"):
            res = subprocess.run([sys.executable, "-c", STARTUP_SNIPPET], env=env, capture_output=True, text=True,
                                 check=True)  # fmt: skip
            imp, first = (float(v) for v in res.stdout.split())
            out[label] = {"import_s": imp, "first_frame_s": first}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--json", default=None, help="write the JSON record here")
    ap.add_argument("--sizes", default="512,1024")
    args = ap.parse_args()
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        rows += bench_size((n, n), args.repeat)
    startup = bench_startup()
    print(f"{'shape':>9}  {'kernel':<40} {'ours us':>9}  {'peer':<38} {'peer us':>9} {'ratio':>7}")
    for r in rows:
        peer_us = "" if r["peer_us"] is None else f"{r['peer_us']:9.1f}"
        ratio = "" if r["speedup"] is None else f"{r['speedup']:6.1f}x"
        print(f"{r['shape']:>9}  {r['kernel']:<40} {r['ours_us']:9.1f}  {r['peer']:<38} {peer_us:>9} {ratio:>7}")
    for label, v in startup.items():
        print(f"start-up, {label.replace('_', ' ')}: import {v['import_s']:.2f} s, first frame {v['first_frame_s']:.3f} s")
    record = {
        "tool": "bench_kernels",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(), "opencv": cv2.__version__,
                    "numpy": np.__version__},  # fmt: skip
        "threads": 1,
        "rows": rows,
        "startup": startup,
    }
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(record, fh, indent=2)
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
