"""What a pause between frames costs the Python work of one frame: build + encode a frame header.

The same 512x512 frame header is built (pydantic validation) and encoded (JSON + buffers) after a
pause of 0 (back to back), 0.1, 1, 4 and 16 ms (60 fps), the pause spent either sleeping or spinning
in Python. The ratio to the back-to-back time is what a hop of a paced stream pays because the
caches went cold meanwhile (spinning keeps the core awake, so a ratio that stays high while
spinning is not CPU idle states). Prints a table and writes JSON (``--json PATH``).

    python tools/bench_header_decay.py [--repeat 200] [--json out.json]
"""

import argparse
import json
import platform
import time

import numpy as np

from mmstream.codec import buffer_specs, encode
from mmstream.messages import Frame

PAUSES_MS = (0.0, 0.1, 1.0, 4.0, 16.0)


def build_and_encode(image: np.ndarray) -> list:
    h = Frame(stream_id="s", session_id="s-1", seq=1, t_device_s=0.1, spacing_mm=(0.1, 0.1), spacing_source="config",
              stamps={"sent": time.monotonic()}, buffers=buffer_specs(image=image))  # fmt: skip
    return encode(h, [image])


def measure(pause_ms: float, spin: bool, repeat: int, image: np.ndarray) -> float:
    """Median time (us) of build + encode after each pause."""
    times = []
    for _ in range(repeat):
        if pause_ms > 0:
            if spin:
                t_end = time.perf_counter() + pause_ms / 1e3
                while time.perf_counter() < t_end:
                    pass
            else:
                time.sleep(pause_ms / 1e3)
        t0 = time.perf_counter()
        build_and_encode(image)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e6)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--json", default=None, help="write the results to this JSON file")
    args = ap.parse_args(argv)
    image = np.zeros((512, 512), np.uint8)
    measure(0.0, False, 50, image)  # warm the code paths
    rows = []
    for pause in PAUSES_MS:
        for spin in (False, True) if pause > 0 else (False,):
            rows.append({"pause_ms": pause, "pause": "spin" if spin else ("sleep" if pause else "none"),
                         "build_encode_us": measure(pause, spin, args.repeat, image)})  # fmt: skip
    hot = rows[0]["build_encode_us"]
    for r in rows:
        r["ratio_to_back_to_back"] = r["build_encode_us"] / hot
    print(f"{'pause ms':>8} {'pause':>6} {'build+encode us':>16} {'x back to back':>15}")
    for r in rows:
        print(f"{r['pause_ms']:>8g} {r['pause']:>6} {r['build_encode_us']:>16.1f} {r['ratio_to_back_to_back']:>15.1f}")
    out = {"tool": "bench_header_decay", "python": platform.python_version(), "repeat": args.repeat, "rows": rows}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
