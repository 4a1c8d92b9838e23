"""Benchmark: recording a volume while a live stream is recorded.

A real service (sim source at ``--fps``, recorder on, fsync on) receives one volume through its
ingest endpoint (the volumes ``Outlet``, as the DICOM SCP and the watch folder send). Measured per
volume size and frame compression (voxels are always stored uncompressed): the time of the recorder
flush that writes the volume (and the longest flush), the recorder's backlog while it writes
(frames ingest accepted that the recorder has not yet taken: its port queue plus ZeroMQ's), frames
lost (accepted by ingest but not in the file, and seq gaps in the file), the file size; beside them
the same bytes written to a plain file and fsynced (the floor), with the ratio, and written as a
gzip-1 (then lzf) compressed h5py dataset and fsynced (what compressing the voxels would cost the
recorder thread).

    python tools/bench_record_volume.py [--json out.json] [--fps 30] [--compressions none,gzip,lzf]

Voxels: a smooth int16 phantom (an ellipsoid, a gradient) plus Gaussian noise (sd 20), 12 bits as MR
and CT give; the sizes are 96 x 256 x 256 (12.6 MB) and 256 x 512 x 512 (64 Mi voxels, 128 MiB,
the largest a volume message may carry).
"""

import argparse
import glob
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from mmstream.config import load_config
from mmstream.recording import writer as W
from mmstream.recording.reader import SessionReader
from mmstream.service import Service
from mmstream.volumes.model import LoadedVolume
from mmstream.volumes.outlet import Outlet

SIZES = {"12.6 MB": (96, 256, 256), "64 Mi voxels": (256, 512, 512)}


def phantom(shape, seed=0) -> np.ndarray:
    k, j, i = (np.linspace(-1, 1, n, dtype=np.float32) for n in shape)
    kk, jj, ii = k[:, None, None], j[None, :, None], i[None, None, :]
    v = 800.0 * ((kk / 0.8) ** 2 + (jj / 0.7) ** 2 + (ii / 0.6) ** 2 < 1) + 300.0 * (jj + 1)
    v = v + np.random.default_rng(seed).normal(0.0, 20.0, shape).astype(np.float32)
    return np.clip(v, 0, 4095).astype(np.int16)


def floor_write_s(data: np.ndarray, directory: str) -> float:
    """Write the bytes to a plain file and fsync it: the floor of any crash-safe write."""
    path = os.path.join(directory, "floor.bin")
    t0 = time.perf_counter()
    with open(path, "wb") as fh:
        fh.write(data.data)
        fh.flush()
        os.fsync(fh.fileno())
    dt = time.perf_counter() - t0
    os.remove(path)
    return dt


def compressed_write_s(data: np.ndarray, directory: str, **filters) -> tuple[float, float]:
    """(seconds, MB on disk) to write the volume as a chunked compressed h5py dataset, fsynced."""
    import h5py

    path = os.path.join(directory, "alt.h5")
    t0 = time.perf_counter()
    with h5py.File(path, "w") as f:
        f.create_dataset("v", data=data, chunks=(max(1, (1 << 20) // (data[0].nbytes)), *data.shape[1:]), **filters)
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())
    dt, size = time.perf_counter() - t0, os.path.getsize(path) / 1e6
    os.remove(path)
    return dt, size


def run_one(compression: str, voxels: np.ndarray, fps: float, directory: str) -> dict:
    rec = Path(directory) / f"rec_{compression}_{voxels.size}"
    rec.mkdir()
    flushes: list[tuple[float, int]] = []  # (seconds, volumes committed after)
    orig = W.SessionWriter.flush

    def timed(self, *a, **kw):
        t0 = time.perf_counter()
        out = orig(self, *a, **kw)
        flushes.append((time.perf_counter() - t0, out["volumes"]))
        return out

    W.SessionWriter.flush = timed
    sock = f"ipc://{directory}/{compression}_{voxels.size}"
    cfg = load_config(None, endpoints={"ingest": sock + "_i", "metrics": sock + "_m", "control": sock + "_c"},
                      web={"enabled": False}, sources=[{"driver": "sim", "stream_id": "probe0", "fps": fps}],
                      recorder={"enabled": True, "directory": str(rec), "compression": compression},
                      log_level="error")  # fmt: skip
    backlog, stop = [], threading.Event()
    try:
        with Service(cfg) as svc:
            def accepted():
                return svc.graph.ingest.status()["streams"].get("probe0", {}).get("accepted", 0)

            def sample():
                while not stop.is_set():
                    backlog.append(accepted() - svc.recorder.status()["counters"].get("frames", 0))
                    time.sleep(0.01)

            t_end = time.monotonic() + 20
            while svc.recorder.recording_status()["frames"] < 30 and time.monotonic() < t_end:
                time.sleep(0.05)
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            vol = LoadedVolume(voxels, (1.5, 0.5, 0.5), (0.0, 0.0, 0.0), np.eye(3), modality="MR")
            out = Outlet(svc.graph.endpoints["ingest"]).start()
            t0 = time.monotonic()
            out.volume(vol, "mr-bench")
            while (svc.recorder.recording_status()["committed"] or {}).get("volumes", 0) < 1:
                if time.monotonic() - t0 > 120:
                    raise TimeoutError("volume not committed in 120 s")
                time.sleep(0.01)
            t_committed = time.monotonic() - t0
            out.stop()
            time.sleep(2.0)  # frames keep coming after the volume
            stop.set()
            sampler.join()
            n_accepted = accepted()
    finally:
        W.SessionWriter.flush = orig
        stop.set()
    path = glob.glob(str(rec / "*.h5"))[0]
    with SessionReader(path) as s:
        st = s.stream("probe0")
        n_file, gaps = st.n_frames, st.dropped_frames
        first = int(st.index(0, 1)["seq"][0])
        assert np.array_equal(s.voxels(0), voxels)
    vol_flush = next(dt for dt, nv in flushes if nv >= 1)
    return {
        "compression": compression, "voxels": int(voxels.size), "MB": voxels.nbytes / 1e6,
        "volume_flush_s": vol_flush, "max_flush_s": max(dt for dt, _ in flushes),
        "send_to_committed_s": t_committed, "max_backlog_frames": max(backlog or [0]),
        "frames_accepted_since_first_recorded": n_accepted - first, "frames_in_file": n_file, "seq_gaps": gaps,
        "frames_lost": n_accepted - first - n_file, "file_MB": os.path.getsize(path) / 1e6,
    }  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--compressions", default="none,gzip", help="of the frames")
    ap.add_argument("--directory", help="where to record (default: a temporary directory)")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.directory) as d:
        for label, shape in SIZES.items():
            voxels = phantom(shape)
            floor = floor_write_s(voxels, d)
            gz_s, gz_mb = compressed_write_s(voxels, d, compression="gzip", compression_opts=1)
            lzf_s, lzf_mb = compressed_write_s(voxels, d, compression="lzf")
            for comp in args.compressions.split(","):
                r = run_one(comp, voxels, args.fps, d)
                r.update(size=label, floor_write_s=floor, ratio_to_floor=r["volume_flush_s"] / floor,
                         h5py_gzip1_write_s=gz_s, h5py_gzip1_MB=gz_mb, h5py_lzf_write_s=lzf_s, h5py_lzf_MB=lzf_mb)
                rows.append(r)
                print(f"{label:>13} {comp:>5}: flush {r['volume_flush_s']:.2f} s (floor {floor:.2f} s, x{r['ratio_to_floor']:.1f})"
                      f"  max backlog {r['max_backlog_frames']} frames  lost {r['frames_lost']}  gaps {r['seq_gaps']}"
                      f"  file {r['file_MB']:.1f} MB", flush=True)  # fmt: skip
    print()
    print("| volume | frames compression | volume flush s | plain write+fsync s | ratio | h5py gzip-1 s (MB) | "
          "h5py lzf s (MB) | max recorder backlog (frames) | frames lost | file MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} ({r['MB']:.1f} MB) | {r['compression']} | {r['volume_flush_s']:.2f} | {r['floor_write_s']:.2f} | "
              f"{r['ratio_to_floor']:.1f} | {r['h5py_gzip1_write_s']:.2f} ({r['h5py_gzip1_MB']:.0f}) | "
              f"{r['h5py_lzf_write_s']:.2f} ({r['h5py_lzf_MB']:.0f}) | {r['max_backlog_frames']} | {r['frames_lost']} | "
              f"{r['file_MB']:.1f} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"fps": args.fps, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
