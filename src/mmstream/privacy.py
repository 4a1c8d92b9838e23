"""File paths out of what leaves the process: exported file and folder names often carry the
patient's name (``Doe_Jane_1961/cine.dcm``), and events are logged, recorded and published."""

import hashlib
from collections.abc import Iterable
from pathlib import Path

PATH_OPTIONS = ("path", "url", "plus_config")
"""Source options that name a file."""


def file_tag(path) -> str:
    """``<file 1a2b3c4d>``: a file named by a hash of its base name only."""
    return f"<file {hashlib.sha256(Path(str(path)).name.encode()).hexdigest()[:8]}>"


def redact_paths(text: str, paths: Iterable) -> str:
    """``text`` with each of ``paths`` (as given, resolved, and its base name when that looks like a
    file name: a dot and at least 5 characters) replaced by its tag. A URL is replaced whole."""
    variants = {}
    for p in paths:
        p = str(p or "")
        if len(p) < 2:
            continue
        tag = file_tag(p)
        variants[p] = tag
        if "://" not in p:
            variants[str(Path(p).resolve())] = tag
            name = Path(p).name
            if len(name) >= 5 and "." in name.strip("."):
                variants[name] = tag
    for v in sorted(variants, key=len, reverse=True):
        text = text.replace(v, variants[v])
    return text


def source_paths(options: dict) -> list[str]:
    """The file names among a source's options."""
    return [str(options[k]) for k in PATH_OPTIONS if isinstance(options.get(k), str)]
