"""Which committed rows of a session file can be read: the checks :mod:`mmstream.recording.reader`
runs on every table (a killed writer's file, a cut copy cleared with ``h5clear``)."""

import h5py
import numpy as np


class NotOnDisk(Exception):
    """A row points past the end of a dataset (a writer killed before that data was flushed)."""


MAX_HEADER_BYTES = 16 << 20  # a recorded header is about 0.4-40 kB; a crafted length must not take GBs of memory


def text_at(heap: h5py.Dataset, offset: int, n: int) -> str:
    if n > MAX_HEADER_BYTES:
        raise ValueError(f"a recorded header of {n} bytes (at most {MAX_HEADER_BYTES})")
    if offset + n > heap.shape[0]:
        raise NotOnDisk(f"JSON text at {offset} needs {n} bytes, the heap holds {heap.shape[0]}")
    return bytes(heap[offset : offset + n]).decode()


def row_at(ds: h5py.Dataset, i: int):
    if i >= ds.shape[0]:
        raise NotOnDisk(f"row {i} of {ds.name}, which holds {ds.shape[0]}")
    return ds[i]


def headers(table_rows: np.ndarray, heap: h5py.Dataset) -> list[str]:
    """The JSON texts of ``table_rows`` with one heap read covering them all."""
    if len(table_rows) == 0:
        return []
    lo = int(table_rows["json_offset"].min())
    hi = int((table_rows["json_offset"] + table_rows["json_n_bytes"]).max())
    blob = bytes(heap[lo:hi])
    return [blob[o - lo : o - lo + n].decode() for o, n in zip(table_rows["json_offset"].tolist(), table_rows["json_n_bytes"].tolist())]


def readable_prefix(n: int, row_ok) -> int:
    """The largest k <= n with ``row_ok(k - 1)`` (0 if none), assuming readable rows form a prefix."""
    if n == 0 or row_ok(n - 1):
        return n
    lo, hi = 0, n - 1  # row_ok(hi) is False; rows below lo are readable
    while lo < hi:
        mid = (lo + hi) // 2
        if row_ok(mid):
            lo = mid + 1
        else:
            hi = mid
    return lo


def reads(*reads) -> bool:
    """True if every read succeeds; False if one fails as reads of a killed writer's file do: the
    chunk is not on disk (OSError), or a dataset or the JSON heap ends before the row (NotOnDisk).
    Anything else (corrupt text, a layout bug) is raised."""
    try:
        for read in reads:
            read()
    except (OSError, NotOnDisk):
        return False
    return True
