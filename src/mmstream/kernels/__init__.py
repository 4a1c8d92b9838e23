"""Numba kernels behind the per-frame metrics.

Each module has private ``@kernel`` functions (Numba, eager signatures, cached on disk, GIL
released) behind a validating public function; ``tests/twins/`` holds an independent plain-numpy
twin of each. Compile time is kept out of the first live frame: signatures are eager, so importing a
module loads the machine code from the on-disk cache (or compiles it once per installation), and
:func:`warmup` runs every public function once so that nothing is compiled or loaded on a live frame.
"""

import time

import numpy as np

def warmup() -> float:
    """Run each kernel once on a small synthetic frame; returns the seconds it took."""
    from mmstream.kernels import csa, echogenicity, quality, thickness

    t0 = time.perf_counter()
    rr, cc = np.mgrid[0:128, 0:128]
    img = (60 + 40 * np.sin(rr / 5.0) + 30 * np.cos(cc / 7.0)).astype(np.uint8)
    echogenicity.echogenicity(img, rect=(10, 10, 60, 60))
    echogenicity.echogenicity(img, mask=img > 80)
    echogenicity.echogenicity(img, polygon_rc=np.array([[10.0, 10.0], [10.0, 50.0], [50.0, 30.0]]))
    quality.frame_quality(img)
    contour = csa.segment_from_seed(img, (64.0, 64.0))
    csa.track(img, contour)
    lines = thickness.measure_thickness(img)
    thickness.measure_thickness(img, previous=lines)
    return time.perf_counter() - t0
