"""inspect / export / report on a 30-minute 60 fps session beside the obvious whole-table approach.

The session (108,000 frames of 480x640, stored sparse, and 108,000 metrics rows) is made once; each
case runs in its own child process, which reports its time and peak RSS (VmHWM):

- ``inspect``: :func:`mmstream.recording.inspect.summarize` (chunked) vs loading the index and
  metrics tables whole and summarising them with numpy;
- ``export csv`` / ``export parquet``: :func:`mmstream.recording.export.export_session` (chunked)
  vs the whole table read at once and written with ``csv.writer`` / ``pyarrow.parquet.write_table``;
- ``report``: :func:`mmstream.recording.report.build_report` (no alternative: time and memory).

Prints a table and writes JSON::

    python tools/bench_session_tools.py --json bench_session_tools.json
"""

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_replay import _peak_rss_mb  # noqa: E402

N_ROWS = 30 * 60 * 60


def _make(path: Path) -> None:
    from recorded_sessions import write_sparse_session

    import h5py
    from mmstream.recording import layout as L

    write_sparse_session(path, N_ROWS, (480, 640), 60.0)
    rng = np.random.default_rng(0)
    rows = np.zeros(N_ROWS, L.dtype_of(L.METRICS_COLUMNS))
    for name in rows.dtype.names:
        if rows.dtype[name].kind == "f":
            rows[name] = np.nan
    rows["seq"] = np.arange(N_ROWS)
    rows["t_device_s"] = rows["seq"] / 60.0
    rows["t_recorded_s"] = 10.0 + rows["t_device_s"]
    rows["has_echogenicity"] = rows["has_csa"] = rows["has_thickness"] = True
    rows["echo_region"] = b"csa"
    rows["echo_mean"] = 66 + rng.normal(0, 0.6, N_ROWS)
    rows["csa_area_px"] = 3000 + rng.normal(0, 40, N_ROWS)
    rows["csa_area_mm2"] = rows["csa_area_px"] * 0.01
    rows["thickness_px"] = 160 + rng.normal(0, 2, N_ROWS)
    rows["thickness_mm"] = rows["thickness_px"] * 0.1
    header = _metrics_header()  # one real header that every row points at (report reads the first and last)
    rows["json_offset"], rows["json_n_bytes"] = 0, len(header)
    with h5py.File(path, "r+", libver=L.LIBVER) as f:
        t = f["streams/big/metrics/table"]
        t.resize((N_ROWS,))
        t[:] = rows
        heap = f["streams/big/metrics/json"]
        heap.resize((len(header),))
        heap[:] = np.frombuffer(header, np.uint8)
        for k in ("histogram", "contour_rc", "superficial_rc", "deep_rc"):
            f[f"streams/big/metrics/{k}"].resize(N_ROWS, axis=0)  # sparse: zeros
        summ = f["streams/big/summary"][0]
        summ["n_metrics"] = N_ROWS
        f["streams/big/summary"][0] = summ
        summ = f["session/summary"][0]
        summ["closed"], summ["n_frames"] = True, N_ROWS  # a finished recording, as the writer closes it
        f["session/summary"][0] = summ


def _metrics_header() -> bytes:
    """The JSON of a real metrics header (a sim frame analysed as the service does)."""
    from recorded_sessions import SPEC, frame_header

    from mmstream.analysis import analyze_frame
    from mmstream.nodes.analyzer import metrics_message
    from mmstream_drivers.sim import SimProbe

    src = SimProbe(SPEC, fps=60.0, seed=1).frame(0).to_source()
    h = frame_header("big", src, 0, 10.0)
    res = analyze_frame(src.image, h.spacing_mm, seed=None)
    return metrics_message(h, res, {"ingest": 10.0, "analyzed": 10.001})[0].model_dump_json().encode()


def _whole_tables(path: str):
    import h5py

    with h5py.File(path, "r", libver="latest", swmr=True) as f:
        g = f["streams/big"]
        return g["index"][:], g["metrics/table"][:]


def _child(case: str, path: str, out: str) -> dict:
    t0 = time.perf_counter()
    if case == "inspect":
        from mmstream.recording.inspect import summarize

        summarize(path)
    elif case == "inspect, whole tables":
        idx, m = _whole_tables(path)
        _ = (len(idx), np.diff(idx["t_device_s"]).max(), int(idx["gap_before"].sum()))
        _ = {c: (np.nanmean(m[c]), np.nanstd(m[c]), np.nanmin(m[c]), np.nanmax(m[c])) for c in ("echo_mean", "csa_area_mm2", "thickness_mm")}
    elif case.startswith("export") and "whole" not in case:
        from mmstream.recording.export import export_session

        export_session(path, out, metrics_formats=(case.split()[1],))
    elif case == "export csv, whole table":
        _, m = _whole_tables(path)
        with open(Path(out) / "whole.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(m.dtype.names)
            w.writerows(m.tolist())
    elif case == "export parquet, whole table":
        import pyarrow as pa
        import pyarrow.parquet as pq

        _, m = _whole_tables(path)
        cols = {k: (m[k].astype(str) if m[k].dtype.kind == "S" else m[k]) for k in m.dtype.names}
        pq.write_table(pa.table(cols), Path(out) / "whole.parquet", compression="zstd")
    elif case == "report":
        from mmstream.recording.report import build_report

        build_report(path, Path(out) / "r.html")
    return {"seconds": time.perf_counter() - t0, "peak_rss_mb": _peak_rss_mb()}


CASES = ("inspect", "inspect, whole tables", "export csv", "export csv, whole table", "export parquet",
         "export parquet, whole table", "report")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--child", nargs=3, metavar=("CASE", "PATH", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(*args.child)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "30min.h5"
        _make(path)
        for case in CASES:
            out = Path(tmp) / case.replace(" ", "_").replace(",", "")
            out.mkdir()
            r = subprocess.run([sys.executable, __file__, "--child", case, str(path), str(out)], capture_output=True,
                               text=True, check=True)  # fmt: skip
            rows.append({"case": case, "rows": N_ROWS, **json.loads(r.stdout)})
    print(f"{'case':<30}{'rows':>8}{'seconds':>9}{'rows/s':>10}{'peak RSS MB':>13}{'x alternative (time)':>22}")
    for i, r in enumerate(rows):
        alt = rows[i + 1] if i + 1 < len(rows) and "whole" in rows[i + 1]["case"] and "whole" not in r["case"] else None
        r["time_ratio_to_alternative"] = None if alt is None else r["seconds"] / alt["seconds"]
        ratio = "" if alt is None else f"{r['time_ratio_to_alternative']:.2f}"
        print(f"{r['case']:<30}{r['rows']:>8}{r['seconds']:>9.2f}{r['rows'] / r['seconds']:>10.0f}{r['peak_rss_mb']:>13.0f}{ratio:>22}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=2))


if __name__ == "__main__":
    main()
