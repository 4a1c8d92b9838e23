"""The ``mmstream`` command line.

- ``mmstream analyze IMAGE...``: per-frame metrics of image, DICOM and MetaImage files, one JSON
  object (``--format jsonl``) or CSV row (``--format csv``) per frame on standard output.
- ``mmstream demo``: the service with the simulated probe, a console status line per second.
- ``mmstream serve --config FILE``, ``mmstream status``, ``mmstream keys DIR``,
  ``mmstream config validate FILE``: run, watch and secure the service.

Exit status: 0 when every file was processed, 1 when at least one file failed (the others are still
processed and printed), 2 for a usage error.
"""

import os

# One BLAS thread unless the user chose otherwise, set before numpy loads its BLAS: mmstream's only
# BLAS work is the CSA network's small matrix products on a click, faster on one thread here
# (README, Performance) and not to compete with the analysis threads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import csv  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

from mmstream import __version__  # noqa: E402
from mmstream.analysis import METRICS, NOT_MEASURED, FrameAnalysis, analyze_frame, validate_spacing  # noqa: E402
from mmstream.cli_args import (  # noqa: E402
    add_client_key_options, client_curve, endpoint, positive_float, positive_int, progress, stop_on_signals,
)
from mmstream.errors import ConfigError, InputError, MmstreamError, SpacingError  # noqa: E402

CSV_COLUMNS = [
    "source", "frame", "t_s", "spacing_row_mm", "spacing_col_mm", "spacing_source",
    "echo_region", "echo_mean", "echo_std", "echo_n_px",
    "csa_area_px", "csa_area_mm2", "csa_perimeter_mm", "csa_centroid_row", "csa_centroid_col", "csa_confidence",
    "csa_tracked", "thickness_px", "thickness_mm", "thickness_confidence", "thickness_tracked",
    "thickness_superficial_at_row", "thickness_superficial_at_col", "thickness_deep_at_row", "thickness_deep_at_col",
    "quality_saturated", "quality_no_contact", "quality_frozen", "quality_duplicate", "quality_featureless",
]  # new columns go last: readers by position keep working  # fmt: skip


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
            mode="json", include={"thickness_px", "thickness_mm", "superficial_rc", "deep_rc", "confidence", "region_rc",
                                  "tracked", "superficial_at_rc", "deep_at_rc"}
        ),
        "quality": None if q is None else q.model_dump(mode="json"),
    }  # fmt: skip


def _csv_row(rec: dict) -> dict:
    sp = rec["spacing_mm"] or (None, None)
    e, c, t, q = (rec[k] or {} for k in ("echogenicity", "csa", "thickness", "quality"))
    cen = c.get("centroid_rc") or (None, None)
    sup, deep = (t.get(f"{line}_at_rc") or (None, None) for line in ("superficial", "deep"))
    return {
        "source": rec["source"], "frame": rec["frame"], "t_s": rec["t_s"],
        "spacing_row_mm": sp[0], "spacing_col_mm": sp[1], "spacing_source": rec["spacing_source"],
        "echo_region": e.get("region"), "echo_mean": e.get("mean"), "echo_std": e.get("std"), "echo_n_px": e.get("n_px"),
        "csa_area_px": c.get("area_px"), "csa_area_mm2": c.get("area_mm2"), "csa_perimeter_mm": c.get("perimeter_mm"),
        "csa_centroid_row": cen[0], "csa_centroid_col": cen[1], "csa_confidence": c.get("confidence"),
        "csa_tracked": c.get("tracked"), "thickness_px": t.get("thickness_px"), "thickness_mm": t.get("thickness_mm"),
        "thickness_confidence": t.get("confidence"), "thickness_tracked": t.get("tracked"),
        "thickness_superficial_at_row": sup[0], "thickness_superficial_at_col": sup[1],
        "thickness_deep_at_row": deep[0], "thickness_deep_at_col": deep[1],
        "quality_saturated": q.get("saturated"), "quality_no_contact": q.get("no_contact"),
        "quality_featureless": q.get("featureless"),
        "quality_frozen": q.get("frozen"), "quality_duplicate": q.get("duplicate"),
    }  # fmt: skip


def _one_line(text: str) -> str:
    """``text`` as one printable line: line breaks and runs of blanks become one space, other control
    characters (a file name's escape sequences) are shown escaped (``\\x1b``)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in " ".join(str(text).split()))


def _shown(path) -> str:
    """A file name as printed on the terminal: control characters (newline, escape) shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(path))


def _analyze_file(path: Path, args) -> Iterator[dict]:
    from mmstream.io import read_frames

    previous = None
    frames = read_frames(
        path, spacing_mm=args.spacing_mm, plus_config=args.plus_config, strict_spacing=args.require_spacing
    )
    taps = {k: v for k, v in (("seed", args.seed), ("superficial_at_rc", args.superficial_at),
                              ("deep_at_rc", args.deep_at)) if v is not None}  # fmt: skip
    for frame in frames:
        own = frame.meta.get("file_spacing_mm")
        if frame.index == 0 and own is not None and args.spacing_mm is not None and not all(
            abs(a - b) <= 0.01 * b for a, b in zip(args.spacing_mm, own)
        ):  # a calibrated spacing overridden by hand: say so (once per file)
            print(f"mmstream analyze: warning: {_shown(path)}: --spacing-mm {args.spacing_mm[0]:g} {args.spacing_mm[1]:g} "
                  f"replaces the file's own {own[0]:g} x {own[1]:g} mm ({frame.meta.get('file_spacing_source')})",
                  file=sys.stderr)  # fmt: skip
        region = frame.meta.get("region_rc")  # the file's B-mode region (DICOM US region), if known
        kw = dict(
            spacing_mm=frame.spacing_mm,
            roi=args.roi if args.roi is not None or region is None else tuple(region),
            previous=previous,
            metrics=args.metrics,
        )
        try:
            res = analyze_frame(frame.image, **kw, **taps)
            taps = {}  # applied to the first measured frame
        except InputError as exc:
            if exc.reason not in NOT_MEASURED:
                raise
            res = analyze_frame(frame.image, **kw)  # not measured; the taps wait for a measured frame
        previous = res
        yield _record(str(path), frame, res)
    if taps:
        raise InputError(f"{', '.join(taps)} never applied: no frame was measured (no probe contact, or featureless)", reason="not_measured")


def cmd_analyze(args) -> int:
    from mmstream.io import count_frames

    out = sys.stdout
    if "csa" in args.metrics and args.seed is None and args.metrics != list(METRICS):  # asked for, cannot be given
        print("mmstream analyze: note: the CSA needs --seed ROW COL (a point inside the nerve or muscle); "
              "without it csa is null", file=sys.stderr)  # fmt: skip
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
    bar = progress(total, show and total > 1, "frame")
    failed = 0

    def error(path: Path, reason: str, text: str) -> None:
        msg = f"mmstream analyze: error: {_shown(path)}: {reason}: {_one_line(text)}"  # one line per file
        if bar is not None:
            bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr)

    try:
        with warnings.catch_warnings():  # pydicom warns of what the readers report as errors
            warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
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
                    error(path, exc.reason, str(exc).removeprefix(f"{path}: "))  # the readers' messages name the file
                except MemoryError:  # this file's frames do not fit in memory: the batch goes on
                    failed += 1
                    error(path, "out_of_memory", "not enough memory to decode or analyse its frames")
    except BrokenPipeError:  # the output's reader left (`| head`): stop; the files so far give the status
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        except (OSError, ValueError):
            pass
    if bar is not None:
        bar.close()
    return 1 if failed else 0


def _format_status_line(st: dict, last: dict | None) -> str:
    parts = []
    for sid, s in sorted(st.get("streams", {}).items()):
        fps = "-" if s["fps"] is None else f"{s['fps']:.1f}"
        p50 = "-" if s["latency_p50_ms"] is None else f"{s['latency_p50_ms']:.2f}"
        p99 = "-" if s["latency_p99_ms"] is None else f"{s['latency_p99_ms']:.2f}"
        parts.append(f"{sid}: {s['frames']} frames {fps} fps  latency p50 {p50} ms p99 {p99} ms")
    drops = sum(sum(n.get("queue_drops", {}).values()) + sum(n.get("send_drops", {}).values())
                for n in st.get("nodes", {}).values())  # fmt: skip
    rejects = sum(sum(n.get("rejected", {}).values()) for n in st.get("nodes", {}).values())
    line = "  ".join(parts) or "no frames yet"
    line += f"  drops {drops} rejects {rejects}"
    if last is not None:
        c, t, a = last.get("csa"), last.get("thickness"), last.get("annotations", {})
        if c is not None and c.get("area_mm2") is not None:
            line += f"  CSA {c['area_mm2']:.1f} mm2"
            if "truth_nerve_area_mm2" in a:
                line += f" (truth {a['truth_nerve_area_mm2']:.1f})"
        if t is not None and t.get("thickness_mm") is not None:
            line += f"  thickness {t['thickness_mm']:.2f} mm"
            if "truth_thickness_mm" in a:
                line += f" (truth {a['truth_thickness_mm']:.2f})"
    return line


def _service_process(cfg) -> None:
    """Process settings of a running service: ``log_level`` for the libraries' and mmstream's
    loggers (stderr), and the soft open-files limit raised to the hard one (at most 65536), since
    every probe, page and recording holds descriptors."""
    import logging
    import resource

    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for lib in ("websockets", "pynetdicom"):  # at debug they log message contents: the clinical context, DICOM tags
        logging.getLogger(lib).setLevel(max(logging.INFO, logging.getLogger(lib).getEffectiveLevel()))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def cmd_demo(args) -> int:
    from mmstream.codec import decode
    from mmstream.config import load_config
    from mmstream.service import Service
    from mmstream.transport import TransportTimeout, make_socket
    from mmstream_drivers.sim import SimProbe

    if args.record:  # asked for on the command line: refused now, not after the demo has run unrecorded
        from mmstream.recording.recorder import check_directory

        try:
            check_directory(args.record)
        except MmstreamError as exc:
            print(f"mmstream demo: error: {exc}", file=sys.stderr)
            return 1
    record = {"recorder": {"enabled": True, "directory": str(args.record)}} if args.record else {}
    cfg = load_config(args.config, sources=[{"driver": "sim", "stream_id": "sim", "fps": args.fps}], **record)
    _service_process(cfg)
    seed = SimProbe(seed=0).frame(0).truth.nerve_center_rc  # the operator's click on the nerve
    svc = Service(cfg)
    svc.graph.settings.update("sim", seed_rc=seed)
    try:
        svc.start()
    except MmstreamError as exc:
        print(f"mmstream demo: error: {exc}", file=sys.stderr)
        return 1
    ep = svc.graph.endpoints
    print(f"mmstream demo: ingest {ep['ingest']}  metrics {ep['metrics']}  control {ep['control']}", flush=True)
    if svc.web is not None:
        print(f"mmstream demo: live view {svc.web.url}", flush=True)
    sub = make_socket("sub", ep["metrics"], bind=False, subscribe=("metrics.",))
    t_end = None if args.duration is None else time.monotonic() + args.duration
    last, t_print = None, time.monotonic()
    stop = stop_on_signals()
    try:
        while not stop.is_set() and (t_end is None or time.monotonic() < t_end):
            try:
                msg = decode(sub.recv(timeout_ms=200))
                last = msg.header.model_dump(include={"csa", "thickness", "annotations"})
            except TransportTimeout:
                pass
            if time.monotonic() - t_print >= 1.0:
                t_print = time.monotonic()
                print(_format_status_line(svc.graph.status(), last), flush=True)
    finally:
        sub.close()
        print(_format_status_line(svc.graph.status(), last), flush=True)
        svc.stop()
    rec = svc.recorder.recording_status()
    if rec["files"] or rec["last_error"]:
        print(f"mmstream demo: recorded {rec['files']}" + (f", error: {rec['last_error']['message']}" if rec["last_error"] else ""))
    print("mmstream demo: stopped", flush=True)
    return 0


def cmd_serve(args) -> int:
    from mmstream.config import load_config
    from mmstream.service import Service

    cfg = load_config(args.config)
    _service_process(cfg)
    stop = stop_on_signals()
    with Service(cfg) as svc:
        ep = svc.graph.endpoints
        print(f"mmstream serve: ingest {ep['ingest']}  metrics {ep['metrics']}  control {ep['control']}", flush=True)
        if svc.web is not None:
            print(f"mmstream serve: live view {svc.web.url}", flush=True)
        while not stop.wait(0.1):
            pass
    print("mmstream serve: stopped", flush=True)
    return 0


def cmd_status(args) -> int:
    from mmstream.codec import decode, encode
    from mmstream.messages import Control
    from mmstream.transport import TransportTimeout, make_socket

    try:
        curve = client_curve(args)
    except ValueError as exc:
        print(f"mmstream status: error: {exc}", file=sys.stderr)
        return 2
    with make_socket("req", args.control, bind=False, curve=curve) as sock:
        try:  # the send too: to a CURVE endpoint without an allowed key it never leaves
            sock.send(encode(Control(command="status")), timeout_ms=args.timeout_ms)
            reply = decode(sock.recv(timeout_ms=args.timeout_ms)).header
        except TransportTimeout:
            hint = "" if curve else " (a service with [security] needs --client-secret-key and --server-key)"
            print(f"mmstream status: error: no answer from {args.control} within {args.timeout_ms} ms{hint}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(reply.data, indent=2))
        return 0
    st = reply.data
    print(f"session {st['session_id']}  up {st['uptime_s']:.0f} s")
    print(f"{'stream':<16}{'frames':>8}{'fps':>8}{'idle s':>8}{'e2e p50 ms':>12}{'e2e p99 ms':>12}")
    for sid, s in sorted(st["streams"].items()):
        row = [s["frames"], s["fps"], s["idle_s"], s["latency_p50_ms"], s["latency_p99_ms"]]
        print(f"{sid:<16}{row[0]:>8}" + "".join(f"{'-' if v is None else f'{v:.2f}':>{w}}" for v, w in zip(row[1:], (8, 8, 12, 12))))
    print(f"{'node':<16}{'drops':>8}{'rejects':>9}  counters")
    for name, n in sorted(st["nodes"].items()):
        drops = sum(n.get("queue_drops", {}).values()) + sum(n.get("send_drops", {}).values())
        rej = n.get("rejected", {})
        extra = ", ".join(f"{k}={v}" for k, v in sorted({**n.get("counters", {}), **rej}.items()))
        print(f"{name:<16}{drops:>8}{sum(rej.values()):>9}  {extra}")
    for line in _source_lines(st):
        print(line)
    rec = st.get("recording") or {}
    if rec.get("state") not in (None, "idle") or rec.get("last_error"):
        err = rec.get("last_error")
        print(f"recording: {rec.get('state')}" + (f"  {rec.get('path')}" if rec.get("path") else "")
              + (f"  last error: {err['reason']}: {err['message']}" if err else ""))  # fmt: skip
    if st.get("web"):  # the bedside live view (docs/webview.md)
        from mmstream.web import status_lines

        print("\n".join(status_lines(st["web"])))
    return 0


def _source_lines(st: dict) -> list[str]:
    """One line per source: FAILED and why, or its frame count; its error counters, the frames the
    service would have refused (``source_invalid_frames``) and pace jumps, when there are any."""
    health, failed = st.get("sources", {}), st.get("source_errors", {})
    invalid, jumps = st.get("source_invalid_frames", {}), st.get("source_pace_jumps", {})
    lines = []
    for sid in sorted(set(health) | set(failed)):
        facts = []
        if sid in health:  # a source that failed while being built has no health
            errors = ", ".join(f"{k}={v}" for k, v in sorted(health[sid].get("errors", {}).items()))
            facts = [f"{health[sid].get('counters', {}).get('frames', 0)} frames",
                     f"errors: {errors}" if errors else "no errors"]  # fmt: skip
        if invalid.get(sid):
            facts.append(f"{invalid[sid]} refused as not sendable (source_invalid_frames)")
        if jumps.get(sid):
            facts.append(f"{jumps[sid]} pace jumps")
        if sid in failed:
            lines.append(f"source {sid}: FAILED: {failed[sid]}" + (f" ({', '.join(facts)})" if facts else ""))
        else:
            lines.append(f"source {sid}: {', '.join(facts)}")
    return lines


def cmd_keys(args) -> int:
    """Server and client CURVE key pairs in a directory. An existing pair is kept, never replaced:
    running it again to add a client must not lock out the clients given the old server key."""
    from mmstream.transport import make_keys

    out = Path(args.directory)

    def pair(directory: Path, name: str) -> tuple[Path, Path, str]:
        public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
        if public.is_file() and secret.is_file():
            return public, secret, " (existing, kept)"
        if public.exists() or secret.exists():
            raise ConfigError(f"{directory}: only half of the key pair {name!r} exists: remove it or use another name")
        return *make_keys(directory, name), ""

    try:
        server_pub, server_sec, s_note = pair(out / "server", "server")
        client_pub, client_sec, c_note = pair(out / "clients", args.client)
        (out / "allowed_clients").mkdir(mode=0o700, exist_ok=True)  # who may connect: the user's only
        allowed = out / "allowed_clients" / client_pub.name
        fd = os.open(allowed, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # nobody else may swap the key
        os.fchmod(fd, 0o600)  # also a file that was there before
        with os.fdopen(fd, "wb") as fh:
            fh.write(client_pub.read_bytes())
    except ConfigError as exc:
        print(f"mmstream keys: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"mmstream keys: error: {out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"server secret key: {server_sec}{s_note}  (service: [security] server_secret_key_file)")
    print(f"server public key: {server_pub}{s_note}  (give to clients)")
    print(f"client secret key: {client_sec}{c_note}  (give to the client {args.client!r} only)")
    print(f"allowed clients:   {allowed.parent}  (service: [security] allowed_clients_dir)")
    return 0


def cmd_config(args) -> int:
    from mmstream.config import load_config, preflight
    from mmstream.recording.recorder import check_directory

    try:
        cfg = load_config(args.file)
    except MmstreamError as exc:
        print(f"mmstream config: error: {exc}", file=sys.stderr)
        return 1
    try:
        preflight(cfg)  # what serve checks before it binds: the files and folders named, the sources
    except MmstreamError as exc:
        print(f"mmstream config: error: {args.file or 'defaults'}: {exc}", file=sys.stderr)
        return 1
    if cfg.recorder.enabled:  # of this machine, not of the file: warnings
        try:
            check_directory(cfg.recorder.directory)
        except MmstreamError as exc:
            print(f"mmstream config: warning: recorder: {exc}", file=sys.stderr)
    for section in cfg.sources:
        for key in ("path", "plus_config"):
            value = section.options.get(key)
            if isinstance(value, str) and not Path(value).exists():
                print(f"mmstream config: warning: source {section.stream_id!r}: {key} {value} does not exist here",
                      file=sys.stderr)  # fmt: skip
    print(f"{args.file}: valid" if args.file else "defaults: valid")
    if args.show:
        print(cfg.model_dump_json(indent=2))
    return 0


def _metrics_arg(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"empty: name at least one of {','.join(METRICS)}")
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {','.join(unknown)}; choose from {','.join(METRICS)}")
    return names


class _SpacingArg(argparse.Action):
    """``--spacing-mm ROW_MM COL_MM``: two numbers in the range every spacing must be in."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            setattr(namespace, self.dest, validate_spacing(values))
        except SpacingError as exc:
            parser.error(f"argument {option_string}: {exc}")  # the analyze command's usage


# modules that add their own subcommands: each has ``register(subparsers)`` and imports heavy things lazily
COMMAND_MODULES: tuple[str, ...] = ("mmstream.cli_volumes", "mmstream.cli_biomarkers", "mmstream.cli_recording", "mmstream.cli_sources")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmstream", description="Real-time ultrasound quantitative analysis")
    p.add_argument("--version", action="version", version=f"mmstream {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("analyze", help="per-frame metrics of image, DICOM and MetaImage files")
    a.add_argument("images", nargs="+", metavar="IMAGE")
    a.add_argument("--spacing-mm", nargs=2, type=float, action=_SpacingArg, metavar=("ROW_MM", "COL_MM"),
                   help="pixel spacing, overriding the file's")  # fmt: skip
    a.add_argument("--roi", nargs=4, type=int, metavar=("R0", "C0", "R1", "C1"),
                   help="end-exclusive rectangle (echogenicity region, thickness search region)")  # fmt: skip
    a.add_argument("--seed", nargs=2, type=float, metavar=("R", "C"),
                   help="a point inside the nerve or muscle whose CSA is wanted (first frame with probe contact; tracked after)")  # fmt: skip
    for line in ("superficial", "deep"):
        a.add_argument(f"--{line}-at", nargs=2, type=float, metavar=("R", "C"),
                       help=f"a point on the {line} aponeurosis: the thickness line passes through it "
                            "(first frame with probe contact; tracked after)")  # fmt: skip
    a.add_argument("--metrics", type=_metrics_arg, default=list(METRICS),
                   help=f"comma-separated subset of {','.join(METRICS)}")  # fmt: skip
    a.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    a.add_argument("--plus-config", type=Path, default=None, metavar="XML",
                   help="PLUS configuration giving the spacing of .igs.mha/.mhd sequences")  # fmt: skip
    a.add_argument("--require-spacing", action="store_true",
                   help="fail a file whose pixel spacing is unknown instead of reporting pixels only")  # fmt: skip
    a.add_argument("--no-progress", action="store_true", help="no progress bar on a terminal")
    a.set_defaults(func=cmd_analyze)

    d = sub.add_parser("demo", help="the service with the simulated probe, console status once a second")
    d.add_argument("--config", type=Path, default=None, help="service TOML (default: embedded defaults)")
    d.add_argument("--fps", type=positive_float, default=30.0, help="frame rate of the simulated probe (default 30)")
    d.add_argument("--duration", type=positive_float, default=None, help="stop after this many seconds (default: Ctrl-C)")
    d.add_argument("--record", type=Path, default=None, metavar="DIR",
                   help="record the session to an HDF5 file in DIR (must exist; docs/recording.md)")
    d.set_defaults(func=cmd_demo)

    s = sub.add_parser("serve", help="run the service from a TOML configuration")
    s.add_argument("--config", type=Path, default=None)
    s.set_defaults(func=cmd_serve)

    st = sub.add_parser("status", help="fps, latency, drops and rejects of a running service")
    st.add_argument("--control", type=endpoint, default="tcp://127.0.0.1:5557", help="the service's control endpoint")
    st.add_argument("--timeout-ms", type=positive_int, default=3000, help="give up after this long without a reply (default 3000)")
    st.add_argument("--json", action="store_true", help="the whole status as one JSON object")
    add_client_key_options(st)
    st.set_defaults(func=cmd_status)

    k = sub.add_parser("keys", help="make CURVE keys for a service bound beyond loopback")
    k.add_argument("directory")
    k.add_argument("--client", default="client", help="name of the client key pair")
    k.set_defaults(func=cmd_keys)

    c = sub.add_parser("config", help="validate a configuration file")
    c.add_argument("action", choices=("validate",))
    c.add_argument("file", type=Path, nargs="?")
    c.add_argument("--show", action="store_true", help="print the resulting configuration")
    c.set_defaults(func=cmd_config)
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("serve", "demo"):
        from mmstream.config import load_config

        try:
            load_config(args.config)
        except MmstreamError as exc:
            print(f"mmstream {args.command}: error: {exc}", file=sys.stderr)
            return 1
    try:
        return args.func(args)
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except MmstreamError as exc:  # e.g. `serve` when a port (endpoint, live view) is taken
        print(f"mmstream {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
