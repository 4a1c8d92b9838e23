"""File paths out of what leaves the process: exported file and folder names often carry the
patient's name (``Doe_Jane_1961/cine.dcm``), and events are logged, recorded and published."""

import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path

PATH_OPTIONS = ("path", "url", "plus_config")
"""Source options that name a file."""

# the data file a MetaImage/NRRD header names, as the readers quote it (a Python repr, either quote)
_DATA_FILE = re.compile(r"""(ElementDataFile|data file) (?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")


def file_tag(path) -> str:
    """``<file 1a2b3c4d>``: a file named by a hash of its base name only."""
    return f"<file {hashlib.sha256(Path(str(path)).name.encode()).hexdigest()[:8]}>"


def redact_paths(text: str, paths: Iterable) -> str:
    """``text`` with each of ``paths`` replaced by its tag: as given and as the readers print it
    (normalised, absolute, resolved), and its base name when that looks like a file name (a dot and
    at least 5 characters). A URL is replaced whole. The data file a header names (``ElementDataFile
    '../Doe_Jane/x.raw'``) is replaced by ``<file>`` whatever it is."""
    variants = {}
    for p in paths:
        p = str(p or "")
        if len(p) < 2 or p.strip("./") == "":
            continue
        tag = file_tag(p)
        variants[p] = tag
        if "://" in p:
            continue
        forms = {os.path.normpath(p), str(Path(p)), os.path.abspath(p)}
        try:
            forms.add(str(Path(p).resolve()))
        except (OSError, RuntimeError, ValueError):  # a symlink loop, an unreadable link
            pass
        variants.update({f: tag for f in forms})
        name = Path(p).name
        if len(name) >= 5 and "." in name.strip("."):
            variants[name] = tag
    for v in sorted(variants, key=len, reverse=True):
        text = text.replace(v, variants[v])
    return _DATA_FILE.sub(r"\1 <file>", text)


def source_paths(options: dict) -> list[str]:
    """The file names among a source's options."""
    return [str(options[k]) for k in PATH_OPTIONS if isinstance(options.get(k), str)]
