"""Source commands: ``mmstream sources list`` and ``mmstream sources probe``.

``probe`` builds a driver with the options a ``[[sources]]`` table would give it (``-o key=value``,
values read as TOML: ``3``, ``0.1``, ``true``, otherwise text) and prints its first frames as JSON
lines -- shape, time, spacing and where it came from, transforms, annotations, metadata -- then the
driver's counters and errors. Use it to check a crop, a depth-scale calibration or a file's B-mode
region before serving. A source that cannot start prints ``mmstream sources: error: REASON: message``
and exits with status 1; so does a source that gave no frame within ``--timeout-s``.
"""

import contextlib
import json
import queue
import sys
import threading
import tomllib

from mmstream.cli_args import positive_float, positive_int

CLOSE_WAIT_S = 5.0  # after the last frame, how long the driver gets to release its device


def option_value(text: str):
    """``key=value`` value as TOML reads it (numbers, booleans, quoted strings), else the text itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _options(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"-o {pair!r}: expected key=value")
        out[key.strip()] = option_value(value.strip())
    return out


def _record(i: int, f) -> dict:
    return {
        "frame": i,
        "shape": list(f.image.shape),
        "t_device_s": f.t_device_s,
        "spacing_mm": f.spacing_mm,
        "spacing_source": f.spacing_source if f.spacing_mm is not None else "unknown",
        "depth_mm": f.imaging.depth_mm,
        "mean_grey": round(float(f.image.mean()), 3),
        "transforms": sorted(f.transforms),
        "annotations": f.annotations,
        "metadata": f.metadata,
    }


def cmd_list(args) -> int:
    import mmstream_drivers

    for name in mmstream_drivers.available():
        print(name)
    return 0


def cmd_probe(args) -> int:
    import mmstream_drivers
    from mmstream.errors import MmstreamError

    try:
        options = _options(args.option or [])
        mmstream_drivers.check_source(args.driver, "probe", {k: v for k, v in options.items() if k != "fps"})
        driver = mmstream_drivers.load(args.driver)(**options)
    except MmstreamError as exc:
        print(f"mmstream sources: error: {exc.reason}: {exc}", file=sys.stderr)
        return 1
    except (KeyError, TypeError, ValueError) as exc:  # unknown driver, option name or malformed -o
        print(f"mmstream sources: error: invalid: {exc}", file=sys.stderr)
        return 1
    frames: queue.Queue = queue.Queue()

    def run():
        try:
            with contextlib.closing(driver.source_frames()) as it:  # closed on break: devices released here
                for i, f in enumerate(it, 1):
                    frames.put(f)
                    if i >= args.frames:
                        break
        except Exception as exc:  # reported below, after the frames that came first
            frames.put(exc)
        frames.put(None)

    reader = threading.Thread(target=run, daemon=True)
    reader.start()
    n, error = 0, None
    while n < args.frames:
        try:
            item = frames.get(timeout=args.timeout_s)
        except queue.Empty:
            break
        if item is None or isinstance(item, Exception):
            error = item
            break
        print(json.dumps(_record(n, item)), flush=True)
        n += 1
    if hasattr(driver, "close"):  # interrupts a driver waiting for its device (not every driver has one)
        driver.close()
    reader.join(CLOSE_WAIT_S)  # let it release its device before the interpreter exits
    health = driver.health.status() if hasattr(driver, "health") else {}
    print(json.dumps({"frames": n, **health}), flush=True)
    if error is not None:
        print(f"mmstream sources: error: {getattr(error, 'reason', type(error).__name__)}: {error}", file=sys.stderr)
        return 1
    if n == 0:
        print(f"mmstream sources: error: no_frames: no frame within {args.timeout_s} s", file=sys.stderr)
        return 1
    return 0


def register(sub) -> None:
    s = sub.add_parser("sources", help="list the installed source drivers, or probe one with its options")
    ss = s.add_subparsers(dest="sources_command", required=True)
    ls = ss.add_parser("list", help="names usable as [[sources]] driver")
    ls.set_defaults(func=cmd_list)
    p = ss.add_parser("probe", help="print a source's first frames (shape, time, spacing, transforms) as JSON lines")
    p.add_argument("driver", help="driver name (see `mmstream sources list`)")
    p.add_argument("-o", "--option", action="append", metavar="KEY=VALUE",
                   help="a driver option, as in the [[sources]] options table (repeatable)")  # fmt: skip
    p.add_argument("--frames", type=positive_int, default=3, help="how many frames to print")
    p.add_argument("--timeout-s", type=positive_float, default=10.0, help="give up when no frame came for this long")
    p.set_defaults(func=cmd_probe)
