"""Benchmark of the volume path against the obvious alternatives, in one run on the same files.

1. DICOM series -> volume: ``mmstream.volumes.load_dicom_series`` (geometry checks, sort, rescale)
   beside SimpleITK's GDCM ``ImageSeriesReader`` and beside bare pydicom (read + decode + stack, no
   geometry at all: the floor).
2. NIfTI -> volume: ``load_volume`` beside ``SimpleITK.ReadImage`` + ``GetArrayFromImage``.
3. DICOM network -> volume message: dcmtk ``storescu`` into mmstream's Storage SCP until the
   ``volume`` message arrives, beside ``storescu`` into dcmtk's own ``storescp`` (store only).
   Both dcmtk tools run with ``TCP_NODELAY=1`` (without it dcmtk waits ~40 ms per object).

Prints a table and writes JSON (``--json PATH``)::

    python tools/bench_volumes.py [--slices 96] [--size 256] [--repeat 5] [--json bench_volumes.json]
"""

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from volume_makers import make_series, write_nifti1  # noqa: E402

from mmstream.codec import decode  # noqa: E402
from mmstream.transport import make_socket  # noqa: E402
from mmstream.volumes import Outlet, ScpSettings, StorageScp, load_dicom_series, load_volume  # noqa: E402


# dcmtk's tools by absolute path: pynetdicom installs Python console scripts of the same names
DCMTK_STORESCU, DCMTK_STORESCP = "/usr/bin/storescu", "/usr/bin/storescp"
NODELAY = {**os.environ, "TCP_NODELAY": "1"}  # dcmtk leaves Nagle on otherwise: ~40 ms per C-STORE on loopback


def median_s(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bare_pydicom(paths):
    return np.stack([pydicom.dcmread(p).pixel_array for p in paths])


def sitk_series(folder):
    r = sitk.ImageSeriesReader()
    r.SetFileNames(r.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayFromImage(r.Execute())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def storescu(port, paths, aec):
    subprocess.run([DCMTK_STORESCU, "-R", "-aec", aec, "127.0.0.1", str(port), *map(str, paths)], check=True,
                   capture_output=True, timeout=300, env=NODELAY)  # fmt: skip


def network_ours(paths, tmp: Path, repeat: int) -> float:
    sink = make_socket("pull", "tcp://127.0.0.1:*", bind=True, hwm=16)
    outlet = Outlet(sink.last_endpoint).start()
    scp = StorageScp(ScpSettings(store_dir=tmp / "ours", port=0), outlet).start()
    try:
        def once():
            storescu(scp.port, paths, "MMSTREAM")
            decode(sink.recv(timeout_ms=60000))

        return median_s(once, repeat)
    finally:
        scp.stop()
        outlet.stop()
        sink.close()


def network_dcmtk(paths, tmp: Path, repeat: int) -> float:
    port = free_port()
    (tmp / "dcmtk").mkdir()
    proc = subprocess.Popen([DCMTK_STORESCP, "-od", str(tmp / "dcmtk"), "-aet", "STORESCP", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=NODELAY)  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # wait until it listens
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.02)
        return median_s(lambda: storescu(port, paths, "STORESCP"), repeat)
    finally:
        proc.terminate()
        proc.wait(10)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=96)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    n, size = args.slices, args.size
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        truth = make_series(tmp / "series", n=n, rows=size, cols=size, slopes=[1.0 + 0.01 * k for k in range(n)])
        paths = truth["paths"]
        ours = median_s(lambda: load_dicom_series(paths), args.repeat)
        rows.append(("DICOM series -> volume", "mmstream load_dicom_series", ours, "SimpleITK GDCM ImageSeriesReader",
                     median_s(lambda: sitk_series(tmp / "series"), args.repeat)))  # fmt: skip
        rows.append(("DICOM series -> volume", "mmstream load_dicom_series", ours, "pydicom read+decode+stack (no geometry)",
                     median_s(lambda: bare_pydicom(paths), args.repeat)))  # fmt: skip
        sform = np.diag([0.8, 0.8, 2.0, 1.0])
        write_nifti1(tmp / "v.nii", np.zeros((size, size, n), np.int16), sform)
        rows.append(("NIfTI -> volume", "mmstream load_volume", median_s(lambda: load_volume(tmp / "v.nii"), args.repeat),
                     "SimpleITK ReadImage+GetArrayFromImage",
                     median_s(lambda: sitk.GetArrayFromImage(sitk.ReadImage(str(tmp / "v.nii"))), args.repeat)))  # fmt: skip
        if Path(DCMTK_STORESCU).is_file() and Path(DCMTK_STORESCP).is_file():
            net_repeat = max(1, args.repeat // 2)
            rows.append(("storescu -> volume message", "mmstream StorageScp + assembly", network_ours(paths, tmp, net_repeat),
                         "dcmtk storescp (store only)", network_dcmtk(paths, tmp, net_repeat)))  # fmt: skip
    mb = n * size * size * 2 / 1e6
    print(f"volume: {n} slices of {size}x{size} int16 ({mb:.1f} MB), median of {args.repeat} runs")
    print(f"{'task':<28}{'mmstream ms':>13}{'alternative':>42}{'alt ms':>10}{'ratio':>8}")
    records = []
    for task, name, t, alt, t_alt in rows:
        print(f"{task:<28}{t * 1e3:>13.1f}{alt:>42}{t_alt * 1e3:>10.1f}{t / t_alt:>8.2f}")
        records.append({"task": task, "mmstream": name, "mmstream_ms": t * 1e3, "alternative": alt,
                        "alternative_ms": t_alt * 1e3, "ratio": t / t_alt})  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"slices": n, "size": size, "repeat": args.repeat, "python": platform.python_version(),
                                         "machine": platform.machine(), "results": records}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
