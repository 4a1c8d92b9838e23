"""Replay read rate and memory beside raw h5py reads and loading the frames whole.

For 512x512 and 640x480 frames, writes a session file with the real SessionWriter, then measures in
separate child processes (so each peak RSS is its own):

- ``replay``: :class:`mmstream_drivers.replay.Replayer` in ``fast`` mode, iterated (headers decoded,
  frames as a driver sends them), no socket;
- ``replay+send``: the same sent over ZeroMQ tcp to a PULL socket drained by another thread;
- ``h5py chunks``: raw ``frames[i:i+16]`` reads, the floor;
- ``h5py whole``: ``frames[:]``, the obvious alternative (memory grows with the session).

``--scale``: besides, replays a 30-minute 60 fps session of 640x480 frames (108,000 frames, 33 GB of
pixels, stored sparse so the file is small) and reports the peak RSS after 10 %, 50 % and 100 % of
it: memory that does not grow with the session length.

Prints a table and writes JSON (``--json out.json``)::

    python tools/bench_replay.py --frames 1500 --scale --json bench_replay.json
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM; getrusage's ru_maxrss would include the parent's peak from
    before exec on Linux)."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024


def _child(mode: str, path: str) -> dict:
    import h5py

    t0 = time.perf_counter()
    n = 0
    checkpoints = {}
    if mode == "scale":
        from mmstream.recording.reader import SessionReader
        from mmstream_drivers.replay import Replayer

        with SessionReader(path) as r:
            total = sum(r.stream(s).n_frames for s in r.streams)
        with Replayer(path, mode="fast") as rp:
            marks = {total // 10: "10%", total // 2: "50%", total: "100%"}
            for _ in rp:
                n += 1
                if n in marks:
                    checkpoints[marks[n]] = _peak_rss_mb()
    elif mode == "replay":
        from mmstream_drivers.replay import Replayer

        with Replayer(path, mode="fast") as rp:
            for f in rp:
                n += 1
    elif mode == "replay+send":
        import threading

        from mmstream.transport import make_socket
        from mmstream_drivers.replay import Replayer

        pull = make_socket("pull", "tcp://127.0.0.1:*", bind=True, hwm=16)
        got = []

        def drain():
            while len(got) < total:
                pull.recv(timeout_ms=10_000)
                got.append(1)

        with h5py.File(path, "r", libver="latest", swmr=True) as f:
            total = sum(len(g["index"]) for g in f["streams"].values())
        th = threading.Thread(target=drain)
        th.start()
        with Replayer(path, mode="fast") as rp:
            n = rp.send(pull.last_endpoint)
        th.join()
        pull.close()
    else:
        with h5py.File(path, "r", libver="latest", swmr=True) as f:
            for g in f["streams"].values():
                ds = g["frames"]
                if mode == "h5py whole":
                    a = ds[:]
                    n += len(a)
                    del a
                else:
                    for i in range(0, len(ds), 16):
                        n += len(ds[i : i + 16])
    dt = time.perf_counter() - t0
    return {"frames": n, "seconds": dt, "peak_rss_mb": _peak_rss_mb(), "peak_rss_mb_at": checkpoints}


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' session writers


def _write(path: Path, shape: tuple[int, int], n: int) -> None:
    from recorded_sessions import frame_header

    from mmstream.recording.writer import SessionWriter
    from mmstream_drivers.sim import SceneSpec, SimProbe

    probe = SimProbe(SceneSpec(shape=shape, spacing_mm=(0.1, 0.1)), fps=60.0, seed=0)
    images = [probe.frame(i).to_source() for i in range(8)]
    w = SessionWriter(path, {"session_id": "bench", "software_version": "bench"}, {"s": shape}, fsync=False)
    for i in range(n):
        src = images[i % len(images)]
        w.add_frame(frame_header("s", src, i, 10.0 + i / 60.0), src.image)
        if i % 64 == 63:
            w.flush()
    w.close()


def _run(mode: str, path: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(path)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1500)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--scale", action="store_true", help="also replay a sparse 30-minute 60 fps session")
    ap.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(*args.child)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in ((512, 512), (480, 640)):
            path = Path(tmp) / f"{shape[0]}x{shape[1]}.h5"
            _write(path, shape, args.frames)
            _run("h5py chunks", path)  # warm the page cache: every case reads from memory alike
            mb = args.frames * shape[0] * shape[1] / 1e6
            results = {m: _run(m, path) for m in ("h5py chunks", "h5py whole", "replay", "replay+send")}
            floor = results["h5py chunks"]["frames"] / results["h5py chunks"]["seconds"]
            for mode, r in results.items():
                fps = r["frames"] / r["seconds"]
                rows.append({"frame_rc": list(shape), "case": mode, "frames": r["frames"], "fps": fps,
                             "mb_per_s": mb / r["seconds"], "peak_rss_mb": r["peak_rss_mb"], "ratio_to_h5py_chunks": fps / floor})  # fmt: skip
        scale = None
        if args.scale:
            from recorded_sessions import write_sparse_session

            path = Path(tmp) / "30min.h5"
            write_sparse_session(path, 30 * 60 * 60, (480, 640), 60.0)
            scale = {"frames": 108_000, "file_mb": path.stat().st_size / 1e6, **_run("scale", path)}
    print(f"{'frame':<9}{'case':<14}{'frames':>8}{'fps':>10}{'MB/s':>9}{'peak RSS MB':>13}{'x h5py chunks':>15}")
    for r in rows:
        print(f"{r['frame_rc'][0]}x{r['frame_rc'][1]:<5}{r['case']:<14}{r['frames']:>8}{r['fps']:>10.0f}{r['mb_per_s']:>9.0f}"
              f"{r['peak_rss_mb']:>13.0f}{r['ratio_to_h5py_chunks']:>15.2f}")  # fmt: skip
    if scale is not None:
        at = scale["peak_rss_mb_at"]
        print(f"30 min at 60 fps, 640x480 ({scale['frames']} frames, file {scale['file_mb']:.0f} MB sparse): "
              f"replayed at {scale['frames'] / scale['seconds']:.0f} fps; peak RSS after 10% {at['10%']:.0f} MB, "
              f"50% {at['50%']:.0f} MB, 100% {at['100%']:.0f} MB")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"frames_per_file": args.frames, "rows": rows, "scale_30min_60fps": scale}, indent=2))


if __name__ == "__main__":
    main()
