"""Regenerate the bundled phantom image ``src/mmstream/data/phantom.png`` and its truth JSON.

The image is frame 0 of the simulated probe (:mod:`mmstream_drivers.sim`, seed 0, default scene);
the JSON holds its pixel spacing, the nerve seed and the ground truth, so that
``mmstream analyze`` can be checked against known answers::

    python tools/make_phantom.py            # rewrite both files
    python tools/make_phantom.py --check    # exit 1 if the bundled files differ from a fresh render
"""

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from mmstream_drivers.sim import SimProbe

DATA = Path(__file__).resolve().parents[1] / "src" / "mmstream" / "data"


def render() -> tuple[np.ndarray, dict]:
    frame = SimProbe(seed=0).frame(0)
    t = frame.truth
    truth = {
        "source": "mmstream_drivers.sim SimProbe(seed=0).frame(0), default SceneSpec",
        "spacing_mm": list(t.spacing_mm),
        "seed_rc": [round(v, 3) for v in t.nerve_center_rc],
        "nerve_area_px": round(t.nerve_area_px, 3),
        "nerve_area_mm2": round(t.nerve_area_mm2, 3),
        "thickness_px": round(t.thickness_px, 3),
        "thickness_mm": round(t.thickness_mm, 4),
    }
    return frame.image, truth


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    args = ap.parse_args()
    image, truth = render()
    png, js = DATA / "phantom.png", DATA / "phantom.json"
    if args.check:
        old = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
        same = old is not None and np.array_equal(old, image) and json.loads(js.read_text()) == truth
        print("bundled phantom is up to date" if same else "bundled phantom differs from a fresh render")
        return 0 if same else 1
    DATA.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(png), image)
    js.write_text(json.dumps(truth, indent=2) + "\n")
    print(f"wrote {png} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
