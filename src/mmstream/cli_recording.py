"""Session file commands: ``mmstream inspect``, ``export``, ``report`` and ``replay``.

A file that cannot be used (not HDF5, truncated, another layout version, no such file) prints one line
``mmstream CMD: error: FILE: REASON: message`` on stderr and exits with status 1.
"""

import json
import sys
from pathlib import Path

from mmstream.cli_args import (
    add_client_key_options, client_curve, endpoint, file_error, non_negative_int, positive_float, progress,
)
from mmstream.errors import MmstreamError


def cmd_inspect(args) -> int:
    from mmstream.recording import inspect as insp

    try:
        if args.follow:
            def show(summary):  # noqa: E306
                print(json.dumps(summary) if args.json else insp.format_summary(summary) + "\n", flush=True)

            insp.follow(args.file, show, interval_s=args.interval_s, idle_timeout_s=args.idle_timeout_s)
            return 0
        summary = insp.summarize(args.file)
    except MmstreamError as exc:
        return file_error("inspect", args.file, exc)
    except KeyboardInterrupt:
        return 0
    print(json.dumps(summary, indent=2) if args.json else insp.format_summary(summary))
    return 0


def cmd_export(args) -> int:
    from mmstream.recording import export

    try:
        metrics = export.parse_formats(args.metrics_format, export.METRICS_FORMATS, "--metrics-format") if args.metrics_format else ()
        result = export.export_session(
            args.file, args.out, metrics_formats=metrics, frames=args.frames,
            progress=lambda total: progress(total, not args.no_progress and sys.stderr.isatty(), "row"),
        )  # fmt: skip
    except MmstreamError as exc:
        return file_error("export", args.file, exc)
    for f in result.files:
        print(f)
    return 0


def cmd_report(args) -> int:
    from mmstream.recording import report

    out = args.output or Path(args.file).with_suffix(".html")
    try:
        report.build_report(
            args.file, out, thumbnails=args.thumbnails,
            progress=lambda total: progress(total, not args.no_progress and sys.stderr.isatty(), "row"),
        )  # fmt: skip
    except MmstreamError as exc:
        return file_error("report", args.file, exc)
    print(out)
    return 0


def cmd_replay(args) -> int:
    from mmstream.transport import TransportTimeout
    from mmstream_drivers.replay import Replayer

    try:
        curve = client_curve(args)
    except ValueError as exc:
        print(f"mmstream replay: error: {exc}", file=sys.stderr)
        return 2
    try:
        with Replayer(args.file, streams=args.stream or None, mode=args.mode, speed=args.speed) as rp:
            if args.mode == "step":
                print("mmstream replay: Enter sends the next frame, Ctrl-D stops", file=sys.stderr)
                n = rp.send(args.to, curve=curve, advance=lambda: sys.stdin.readline() != "",
                            on_frame=lambda f: print(f"{f.stream_id} seq {f.frame.seq}", flush=True))  # fmt: skip
            else:
                n = rp.send(args.to, curve=curve)
    except MmstreamError as exc:
        return file_error("replay", args.file, exc)
    except TransportTimeout as exc:
        files = ", ".join(map(str, args.file))
        print(f"mmstream replay: error: {files}: no_receiver: nothing took the frames at {args.to} ({exc}): "
              "is the service running?", file=sys.stderr)  # fmt: skip
        return 1
    except KeyboardInterrupt:
        return 0
    print(f"mmstream replay: {n} frames sent to {args.to}", file=sys.stderr)
    return 0


def register(sub) -> None:
    i = sub.add_parser("inspect", help="streams, frames, duration, frame rate, drops and metric summaries of a session file")
    i.add_argument("file", type=Path)
    i.add_argument("--json", action="store_true", help="one JSON object (one per update with --follow)")
    i.add_argument("--follow", action="store_true", help="read a file still being written (SWMR) and print updates")
    i.add_argument("--interval-s", type=positive_float, default=1.0, help="--follow: seconds between updates")
    i.add_argument("--idle-timeout-s", type=float, default=None,
                   help="--follow: stop after this many seconds without new frames (default: when the writer closes the file, or Ctrl-C)")  # fmt: skip
    i.set_defaults(func=cmd_inspect)

    e = sub.add_parser("export", help="metrics to CSV/Parquet, frames to PNG or video")
    e.add_argument("file", type=Path)
    e.add_argument("--out", type=Path, required=True, help="output directory (created)")
    e.add_argument("--metrics-format", default="csv", help="comma-separated: csv, parquet ('' for none)")
    e.add_argument("--frames", choices=("png", "video"), default=None, help="also export the frames")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=cmd_export)

    r = sub.add_parser("report", help="a self-contained HTML report: metrics over time and frame thumbnails")
    r.add_argument("file", type=Path)
    r.add_argument("-o", "--output", type=Path, default=None, help="HTML file (default: FILE with .html)")
    r.add_argument("--thumbnails", type=non_negative_int, default=12, help="thumbnails per stream")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=cmd_report)

    p = sub.add_parser("replay", help="stream a session file to a service's ingest endpoint, keeping seq and timestamps")
    p.add_argument("file", type=Path, nargs="+", help="a session file, or the parts of one recording")
    p.add_argument("--to", type=endpoint, default="tcp://127.0.0.1:5555", help="the service's ingest endpoint")
    p.add_argument("--stream", action="append", help="stream to replay (repeatable; default: all)")
    p.add_argument("--mode", choices=("realtime", "fast", "step"), default="realtime",
                   help="original timing, as fast as the service takes frames, or one frame per Enter")  # fmt: skip
    p.add_argument("--speed", type=positive_float, default=1.0, help="realtime: time scale (2 = twice as fast)")
    add_client_key_options(p)
    p.set_defaults(func=cmd_replay)

