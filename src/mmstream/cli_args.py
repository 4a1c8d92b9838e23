"""Shared pieces of the command line: argument types (numbers refused by argparse, usage error
status 2, when out of range, instead of failing later with a traceback or being silently used), the
one-line error for a file a command cannot use, the progress bar of long batches, the stop signals
of long-running commands, and the CURVE key options of a client of a secured service."""

import argparse
import math
import signal
import sys
import threading
from pathlib import Path

from mmstream.errors import MmstreamError


def file_error(cmd: str, path, exc: MmstreamError) -> int:
    """Print ``mmstream CMD: error: PATH: REASON: message`` on stderr, the path once (``path``: a
    file, or the files of one command), and return 1."""
    if isinstance(path, (list, tuple)):
        path = next((p for p in path if str(exc).startswith(f"{p}: ")), ", ".join(map(str, path)))
    msg = str(exc).removeprefix(f"{path}: ")
    print(f"mmstream {cmd}: error: {path}: {exc.reason}: {msg}", file=sys.stderr)
    return 1


def progress(total: int, enabled: bool, unit: str):
    """A tqdm bar on stderr of ``total`` ``unit``s, cleared when done; None when not ``enabled``."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False)


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT (what ``timeout``, systemd, ``docker stop`` and Ctrl-C
    send): a long-running command checks it and shuts down cleanly (closing its recording)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _number(kind, low: float, low_ok: bool, high: float | None = None):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(value) or value < low or (value == low and not low_ok) or (high is not None and value > high):
            bound = f"{'>=' if low_ok else '>'} {low:g}" + ("" if high is None else f" and <= {high:g}")
            raise argparse.ArgumentTypeError(f"{text} must be {bound}")
        return value

    return parse


positive_int = _number(int, 1, True)
"""An integer >= 1."""
non_negative_int = _number(int, 0, True)
"""An integer >= 0."""
positive_float = _number(float, 0.0, False)
"""A finite number > 0."""
age_years = _number(float, 0.0, True, 150.0)
"""An age in years, 0 to 150 (as ClinicalContext takes it)."""


def endpoint(text: str) -> str:
    """A ZeroMQ endpoint (tcp://HOST:PORT, ipc:///PATH, inproc://NAME)."""
    from mmstream.errors import ConfigError
    from mmstream.transport import check_endpoint

    try:
        return check_endpoint(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_client_key_options(parser: argparse.ArgumentParser) -> None:
    """``--client-secret-key`` and ``--server-key``: what a client needs to reach a service whose
    ``[security]`` requires CURVE (``mmstream keys``; read with :func:`client_curve`)."""
    parser.add_argument("--client-secret-key", type=Path, default=None, metavar="FILE",
                        help="CURVE: this client's .key_secret (mmstream keys), for a service with [security]")  # fmt: skip
    parser.add_argument("--server-key", type=Path, default=None, metavar="FILE", help="CURVE: the service's public .key")


def client_curve(args):
    """The :class:`~mmstream.transport.Curve` of :func:`add_client_key_options`' options, None without
    them; ValueError (a usage error) when only one of the two is given."""
    from mmstream.transport import Curve

    if (args.client_secret_key is None) != (args.server_key is None):
        raise ValueError("--client-secret-key and --server-key go together")
    return None if args.server_key is None else Curve(secret_key_file=args.client_secret_key, server_key_file=args.server_key)
