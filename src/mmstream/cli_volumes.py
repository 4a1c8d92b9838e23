"""Volume commands: ``mmstream volumes load|send|scp|watch``.

- ``load FILE_OR_FOLDER``: geometry (LPS mm, (K, J, I)) as JSON on standard output.
- ``send FILE_OR_FOLDER``: load and push one ``volume`` message to a service's ingest endpoint.
- ``scp --config FILE`` / ``watch --config FILE``: run the DICOM Storage SCP or the watch folder of the
  ``[volumes]`` section on their own, pushing volumes to ``endpoints.ingest`` of a running service.

A file that cannot be loaded prints ``mmstream volumes CMD: error: PATH: REASON: message`` on stderr
and exits with status 1.
"""

import json
import sys
from pathlib import Path

from mmstream.cli_args import endpoint, file_error, positive_float, stop_on_signals
from mmstream.errors import MmstreamError


def cmd_load(args) -> int:
    from mmstream.volumes import load_volume

    try:
        vol = load_volume(args.path, series_uid=args.series_uid, index_4d=args.index_4d)
    except MmstreamError as exc:
        return file_error("volumes load", args.path, exc)
    print(json.dumps({"path": str(args.path), **vol.geometry()}, indent=2))
    return 0


def cmd_send(args) -> int:
    from mmstream.config import load_config
    from mmstream.volumes import Outlet, load_volume

    try:
        endpoint = args.endpoint or load_config(args.config).endpoints.ingest
        vol = load_volume(args.path, series_uid=args.series_uid, index_4d=args.index_4d)
    except MmstreamError as exc:
        return file_error("volumes send", args.path, exc)
    outlet = Outlet(endpoint).start()
    try:
        vid = outlet.volume(vol, args.volume_id)
    except MmstreamError as exc:  # e.g. a header value the volume message cannot carry
        return file_error("volumes send", args.path, exc)
    finally:
        outlet.stop(timeout_s=args.timeout_s)
    if outlet.counters["volumes_sent"] != 1:
        print(f"mmstream volumes send: error: {endpoint}: no service took the volume within {args.timeout_s} s",
              file=sys.stderr)  # fmt: skip
        return 1
    print(json.dumps({"volume_id": vid, "endpoint": endpoint}))
    return 0


def _identifier(text: str) -> str:
    """A wire identifier (letters, digits, ``_.:-``, at most 64; argparse usage error otherwise)."""
    import argparse

    from pydantic import TypeAdapter, ValidationError

    from mmstream.messages import Identifier

    try:
        return TypeAdapter(Identifier).validate_python(text)
    except ValidationError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an identifier: a letter or digit, then at most 63 letters, "
                                         "digits, '_', '.', ':' or '-'") from None  # fmt: skip


def _run_sources(args, scp: bool) -> int:
    from mmstream.config import load_config
    from mmstream.volumes.sources import VolumeSources

    try:
        cfg = load_config(args.config)
        sources = VolumeSources(cfg.volumes, cfg.endpoints.ingest, scp=scp, watch=not scp).start()
    except MmstreamError as exc:
        print(f"mmstream volumes {'scp' if scp else 'watch'}: error: {exc}", file=sys.stderr)
        return 1
    stop = stop_on_signals()
    where = f"DICOM {cfg.volumes.scp.ae_title}@{cfg.volumes.scp.host}:{sources.scp.port}" if scp else \
        f"folder {cfg.volumes.watch.folder}"  # fmt: skip
    print(f"mmstream volumes: {where} -> {cfg.endpoints.ingest}", flush=True)
    try:
        while not stop.wait(0.1):
            pass
    finally:
        sources.stop()
        print(json.dumps(sources.status()), flush=True)
    return 0


def register(sub) -> None:
    v = sub.add_parser("volumes", help="MRI/PET/CT volumes: load, send, DICOM SCP, watch folder")
    vs = v.add_subparsers(dest="volumes_command", required=True)

    def _source_args(p):
        p.add_argument("path", type=Path, metavar="FILE_OR_FOLDER")
        p.add_argument("--series-uid", default=None, help="which series of a folder holding several")
        p.add_argument("--index-4d", type=int, default=None, help="which volume of a 4-D NIfTI/NRRD file")

    lo = vs.add_parser("load", help="geometry of a volume file or DICOM series folder, as JSON")
    _source_args(lo)
    lo.set_defaults(func=cmd_load)

    se = vs.add_parser("send", help="load a volume and push it to a service's ingest endpoint")
    _source_args(se)
    se.add_argument("--config", type=Path, default=None, help="service TOML (its endpoints.ingest)")
    se.add_argument("--endpoint", type=endpoint, default=None, help="ingest endpoint (overrides the config)")
    se.add_argument("--volume-id", type=_identifier, default=None,
                    help="identifier on the wire (default: modality and a hash of the series UID)")  # fmt: skip
    se.add_argument("--timeout-s", type=positive_float, default=10.0, help="give up when the service has not taken it after this long")
    se.set_defaults(func=cmd_send)

    sc = vs.add_parser("scp", help="run the DICOM Storage SCP of [volumes.scp]")
    sc.add_argument("--config", type=Path, default=None)
    sc.set_defaults(func=lambda a: _run_sources(a, scp=True))

    wa = vs.add_parser("watch", help="run the watch folder of [volumes.watch]")
    wa.add_argument("--config", type=Path, default=None)
    wa.set_defaults(func=lambda a: _run_sources(a, scp=False))
