"""The ``mmstream`` command line.

- ``mmstream analyze IMAGE...``: per-frame metrics of image, DICOM and MetaImage files, one JSON
  object (``--format jsonl``) or CSV row (``--format csv``) per frame on standard output.
- ``mmstream demo``: the simulated probe analysed live, with a console status line per second.

Exit status: 0 when every file was processed, 1 when at least one file failed (the others are still
processed and printed), 2 for a usage error.
"""

import argparse
import csv
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from mmstream import __version__
from mmstream.analysis import METRICS, FrameAnalysis, analyze_frame, validate_spacing
from mmstream.errors import MmstreamError, SpacingError

CSV_COLUMNS = [
    "source", "frame", "t_s", "spacing_row_mm", "spacing_col_mm", "spacing_source",
    "echo_region", "echo_mean", "echo_std", "echo_n_px",
    "csa_area_px", "csa_area_mm2", "csa_perimeter_mm", "csa_centroid_row", "csa_centroid_col", "csa_confidence",
    "thickness_px", "thickness_mm", "thickness_confidence",
    "quality_saturated", "quality_no_contact", "quality_frozen", "quality_duplicate",
]  # fmt: skip


def _record(source: str, frame, res: FrameAnalysis) -> dict:
    """The JSON record of one frame (contract: DESIGN.md, ``mmstream analyze``)."""
    e, c, t, q = res.echogenicity, res.csa, res.thickness, res.quality
    return {
        "source": source,
        "frame": frame.index,
        "t_s": frame.t_s,
        "spacing_mm": res.spacing_mm,
        "spacing_source": frame.spacing_source if res.spacing_mm is not None else "unknown",
        "echogenicity": None if e is None else {"region": e.region, "mean": e.mean, "std": e.std, "n_px": e.n_px},
        "csa": None if c is None else c.model_dump(
            mode="json", include={"area_px", "area_mm2", "perimeter_px", "perimeter_mm", "centroid_rc", "contour_rc", "confidence", "tracked"}
        ),
        "thickness": None if t is None else t.model_dump(
            mode="json", include={"thickness_px", "thickness_mm", "superficial_rc", "deep_rc", "confidence", "region_rc"}
        ),
        "quality": None if q is None else q.model_dump(mode="json"),
    }  # fmt: skip


def _csv_row(rec: dict) -> dict:
    sp = rec["spacing_mm"] or (None, None)
    e, c, t, q = (rec[k] or {} for k in ("echogenicity", "csa", "thickness", "quality"))
    cen = c.get("centroid_rc") or (None, None)
    return {
        "source": rec["source"], "frame": rec["frame"], "t_s": rec["t_s"],
        "spacing_row_mm": sp[0], "spacing_col_mm": sp[1], "spacing_source": rec["spacing_source"],
        "echo_region": e.get("region"), "echo_mean": e.get("mean"), "echo_std": e.get("std"), "echo_n_px": e.get("n_px"),
        "csa_area_px": c.get("area_px"), "csa_area_mm2": c.get("area_mm2"), "csa_perimeter_mm": c.get("perimeter_mm"),
        "csa_centroid_row": cen[0], "csa_centroid_col": cen[1], "csa_confidence": c.get("confidence"),
        "thickness_px": t.get("thickness_px"), "thickness_mm": t.get("thickness_mm"),
        "thickness_confidence": t.get("confidence"),
        "quality_saturated": q.get("saturated"), "quality_no_contact": q.get("no_contact"),
        "quality_frozen": q.get("frozen"), "quality_duplicate": q.get("duplicate"),
    }  # fmt: skip


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", file=sys.stderr, dynamic_ncols=True)


def _analyze_file(path: Path, args) -> Iterator[dict]:
    from mmstream.io import read_frames

    previous = None
    frames = read_frames(
        path, spacing_mm=args.spacing_mm, plus_config=args.plus_config, strict_spacing=args.require_spacing
    )
    for i, frame in enumerate(frames):
        res = analyze_frame(
            frame.image,
            spacing_mm=frame.spacing_mm,
            roi=args.roi,
            seed=args.seed if i == 0 else None,
            previous=previous,
            metrics=args.metrics,
        )
        previous = res
        yield _record(str(path), frame, res)


def cmd_analyze(args) -> int:
    from mmstream.io import count_frames

    out = sys.stdout
    writer = None
    if args.format == "csv":
        writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
    paths = [Path(p) for p in args.images]
    show = sys.stderr.isatty() and not args.no_progress
    total = 0
    if show:
        for p in paths:
            try:
                total += count_frames(p)
            except MmstreamError:
                total += 1
    bar = _progress(total, show and total > 1)
    failed = 0
    for path in paths:
        try:
            for rec in _analyze_file(path, args):
                if writer is None:
                    out.write(json.dumps(rec, allow_nan=False) + "\n")
                else:
                    writer.writerow(_csv_row(rec))
                out.flush()
                if bar is not None:
                    bar.update(1)
        except MmstreamError as exc:
            failed += 1
            text = str(exc).removeprefix(f"{path}: ")  # the readers' messages name the file already
            msg = f"mmstream analyze: error: {path}: {exc.reason}: {text}"
            if bar is not None:
                bar.write(msg, file=sys.stderr)
            else:
                print(msg, file=sys.stderr)
    if bar is not None:
        bar.close()
    return 1 if failed else 0


def cmd_demo(args) -> int:
    from mmstream_drivers.sim import SimProbe

    probe = SimProbe(fps=args.fps)
    first = probe.frame(0)
    seed = first.truth.nerve_center_rc
    previous = None
    t_end = None if args.duration is None else time.monotonic() + args.duration
    n = 0
    lat = []
    last_print = time.monotonic()
    t0 = last_print
    try:
        for fr in probe.frames(args.frames):
            t_start = time.perf_counter()
            res = analyze_frame(
                fr.image, spacing_mm=fr.truth.spacing_mm, seed=seed if n == 0 else None, previous=previous
            )
            lat.append(time.perf_counter() - t_start)
            previous = res
            n += 1
            now = time.monotonic()
            if now - last_print >= 1.0 or (args.frames is not None and n == args.frames):
                last_print = now
                c, t = res.csa, res.thickness
                lat_ms = sorted(lat)
                print(
                    f"frame {fr.index:5d}  {n / (now - t0):6.1f} fps  analysis p50 "
                    f"{1e3 * lat_ms[len(lat_ms) // 2]:.2f} ms  "
                    f"CSA {c.area_mm2:6.1f} mm2 (truth {fr.truth.nerve_area_mm2:5.1f})  "
                    f"thickness {t.thickness_mm:5.2f} mm (truth {fr.truth.thickness_mm:5.2f})  "
                    f"echo {res.echogenicity.mean:5.1f}",
                    flush=True,
                )
                lat.clear()
            if t_end is not None and now >= t_end:
                break
            if args.realtime:
                time.sleep(max(0.0, t0 + n / args.fps - time.monotonic()))
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    return 0


def _spacing_arg(values):
    return validate_spacing(values)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmstream", description="Real-time ultrasound quantitative analysis")
    p.add_argument("--version", action="version", version=f"mmstream {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("analyze", help="per-frame metrics of image, DICOM and MetaImage files")
    a.add_argument("images", nargs="+", metavar="IMAGE")
    a.add_argument("--spacing-mm", nargs=2, type=float, metavar=("ROW_MM", "COL_MM"),
                   help="pixel spacing, overriding the file's")  # fmt: skip
    a.add_argument("--roi", nargs=4, type=int, metavar=("R0", "C0", "R1", "C1"),
                   help="end-exclusive rectangle (echogenicity region, thickness search region)")  # fmt: skip
    a.add_argument("--seed", nargs=2, type=float, metavar=("R", "C"),
                   help="a point inside the nerve or muscle whose CSA is wanted (first frame; tracked after)")  # fmt: skip
    a.add_argument("--metrics", type=lambda s: [m.strip() for m in s.split(",") if m.strip()],
                   default=list(METRICS), help=f"comma-separated subset of {','.join(METRICS)}")  # fmt: skip
    a.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    a.add_argument("--plus-config", type=Path, default=None, metavar="XML",
                   help="PLUS configuration giving the spacing of .igs.mha/.mhd sequences")  # fmt: skip
    a.add_argument("--require-spacing", action="store_true",
                   help="fail a file whose pixel spacing is unknown instead of reporting pixels only")  # fmt: skip
    a.add_argument("--no-progress", action="store_true", help="no progress bar on a terminal")
    a.set_defaults(func=cmd_analyze)

    d = sub.add_parser("demo", help="simulated probe analysed live with a console status")
    d.add_argument("--fps", type=float, default=30.0)
    d.add_argument("--frames", type=int, default=None, help="stop after this many frames")
    d.add_argument("--duration", type=float, default=10.0, help="stop after this many seconds")
    d.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=True,
                   help="pace frames at --fps (default) or run as fast as possible")  # fmt: skip
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "analyze":
        bad = set(args.metrics) - set(METRICS)
        if bad or not args.metrics:
            parser.error(f"--metrics: unknown {sorted(bad)}; choose from {','.join(METRICS)}")
        try:
            args.spacing_mm = _spacing_arg(args.spacing_mm)
        except SpacingError as exc:
            parser.error(f"--spacing-mm: {exc}")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
