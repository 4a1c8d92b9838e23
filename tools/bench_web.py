"""Benchmark of the bedside live view (docs/webview.md), each part beside the obvious alternative.

    python tools/bench_web.py [--seconds 5] [--json out.json]

1. Frame encoding of a 512x512 simulated frame: JPEG (what the view sends) vs PNG vs raw bytes:
   time per frame and bytes per frame (the bandwidth a tablet on Wi-Fi must take).
2. Delivery to a slow page (paints take ``--paint-ms``, slower than the source): the view's
   paint window (latest-wins end to end) vs pushing every frame as it comes: age of each painted
   frame (paint time minus the frame's send stamp) and painted frames per second.
3. Real headless Chromium (Debian's, via Playwright) on the same service: display latency reported
   by the page (frame stamp to the next frame callback after drawing) and painted fps.
"""

import argparse
import json
import shutil
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
from websockets.sync.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mmstream.config import load_config  # noqa: E402
from mmstream.service import Service  # noqa: E402
from mmstream.web import server as web_server  # noqa: E402
from mmstream_drivers.sim import SimProbe  # noqa: E402

RANDOM = {"ingest": "tcp://127.0.0.1:*", "metrics": "tcp://127.0.0.1:*", "control": "tcp://127.0.0.1:*"}
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def bench_encode(n: int = 200) -> list[dict]:
    frames = [SimProbe(seed=1).frame(i).image for i in range(8)]
    encoders = {
        "jpeg q80 (cv2)": lambda f: cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes(),
        "png level 1 (cv2)": lambda f: cv2.imencode(".png", f, [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes(),
        "raw bytes": lambda f: f.tobytes(),
    }
    rows = []
    for name, enc in encoders.items():
        sizes = [len(enc(f)) for f in frames]
        t0 = time.perf_counter()
        for i in range(n):
            enc(frames[i % len(frames)])
        dt = (time.perf_counter() - t0) / n
        rows.append({"encoder": name, "us_per_frame": dt * 1e6, "kbytes_per_frame": float(np.mean(sizes)) / 1e3,
                     "mbytes_per_s_at_30fps": float(np.mean(sizes)) * 30 / 1e6})  # fmt: skip
    return rows


def slow_page(url: str, seconds: float, paint_s: float) -> dict:
    """A websocket page that takes ``paint_s`` per frame; ages of painted frames (ms)."""
    ages, t_end = [], time.monotonic() + seconds
    with connect(url, max_size=2**24) as ws:
        ws.send(json.dumps({"cmd": "hello"}))
        warm = time.monotonic() + 1.0
        n = 0
        while time.monotonic() < t_end:
            raw = ws.recv(timeout=5)
            if not isinstance(raw, bytes):
                continue
            k = int.from_bytes(raw[4:8], "little")
            meta = json.loads(raw[8 : 8 + k])
            time.sleep(paint_s)  # decoding and painting on a slow tablet
            if time.monotonic() > warm:
                ages.append((time.monotonic() - meta["t_frame_s"]) * 1e3)
                n += 1
            ws.send(json.dumps({"cmd": "painted", "stream_id": meta["stream_id"], "seq": meta["seq"]}))
    a = np.asarray(ages)
    return {"painted_fps": n / (seconds - 1.0), "age_p50_ms": float(np.percentile(a, 50)), "age_p99_ms": float(np.percentile(a, 99))}


def bench_delivery(seconds: float, paint_ms: float, fps: float) -> list[dict]:
    rows, window0 = [], web_server.WINDOW
    for name, window in (("paint window (latest-wins)", window0), ("push every frame", 10**9)):
        web_server.WINDOW = window
        cfg = load_config(None, endpoints=RANDOM, web={"port": 0}, sources=[{"driver": "sim", "stream_id": "sim", "fps": fps}])
        with Service(cfg) as svc:
            url = svc.web.url.replace("http://", "ws://") + "ws"
            rows.append({"delivery": name, **slow_page(url, seconds, paint_ms / 1e3)})
    web_server.WINDOW = window0
    return rows


def bench_chromium(seconds: float, fps: float) -> dict | None:
    exe = shutil.which("chromium")
    if exe is None:
        return None
    from playwright.sync_api import sync_playwright

    cfg = load_config(None, endpoints=RANDOM, web={"port": 0}, sources=[{"driver": "sim", "stream_id": "sim", "fps": fps}])
    with Service(cfg) as svc, sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=ARGS)
        page = b.new_page(viewport={"width": 1280, "height": 800})
        page.goto(svc.web.url)
        page.wait_for_timeout(1000)
        svc.web.server.display = type(svc.web.server.display)()  # measure after warm-up
        page.wait_for_timeout(seconds * 1000)
        st = svc.graph.status()
        b.close()
    d, s = st["web"]["display"]["sim"], st["streams"]["sim"]
    return {"source_fps": s["fps"], "painted_fps": d["fps"], "display_p50_ms": d["latency_p50_ms"],
            "display_p99_ms": d["latency_p99_ms"], "service_e2e_p50_ms": s["latency_p50_ms"]}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--paint-ms", type=float, default=50.0, help="slow page: time to paint one frame")
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    enc = bench_encode()
    print(f"{'encoder (512x512)':<22}{'us/frame':>10}{'kB/frame':>10}{'MB/s @30fps':>13}")
    for r in enc:
        print(f"{r['encoder']:<22}{r['us_per_frame']:>10.0f}{r['kbytes_per_frame']:>10.1f}{r['mbytes_per_s_at_30fps']:>13.2f}")
    jpeg, raw = enc[0], enc[2]
    print(f"jpeg vs raw: {raw['kbytes_per_frame'] / jpeg['kbytes_per_frame']:.1f}x fewer bytes")
    dl = bench_delivery(args.seconds, args.paint_ms, args.fps)
    print(f"\n{'delivery to a page painting in ' + str(args.paint_ms) + ' ms':<40}{'painted fps':>12}{'age p50 ms':>12}{'age p99 ms':>12}")
    for r in dl:
        print(f"{r['delivery']:<40}{r['painted_fps']:>12.1f}{r['age_p50_ms']:>12.1f}{r['age_p99_ms']:>12.1f}")
    ratio = dl[1]["age_p50_ms"] / dl[0]["age_p50_ms"]
    print(f"push-every-frame / paint-window age p50: {ratio:.1f}x")
    chrome = bench_chromium(args.seconds, args.fps)
    if chrome is not None:
        print(f"\nheadless chromium: source {chrome['source_fps']:.1f} fps, painted {chrome['painted_fps']:.1f} fps, "
              f"display latency p50 {chrome['display_p50_ms']:.1f} ms p99 {chrome['display_p99_ms']:.1f} ms "
              f"(service end-to-end p50 {chrome['service_e2e_p50_ms']:.1f} ms)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"encode": enc, "delivery": dl, "delivery_age_ratio": ratio, "chromium": chrome}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
