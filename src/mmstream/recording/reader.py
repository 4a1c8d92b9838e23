"""Read session files (see :mod:`mmstream.recording.layout`) in chunks, also while they are written.

    with SessionReader(path) as s:
        for sid in s.streams:
            st = s.stream(sid)
            for index_rows, frames in st.iter_frames(chunk=64):   # (n,) FRAME_INDEX, (n, rows, cols) uint8
                ...
            table = st.metrics_table()                            # (K,) METRICS_COLUMNS

Nothing is loaded whole: every accessor reads the rows it is asked for. Files are opened in SWMR
read mode; :meth:`SessionReader.refresh` picks up rows a live writer appended since. Only committed
rows that can be read are visible (see the layout's "Committed rows"), in every file: a cleanly
closed one may be a cut copy cleared with ``h5clear``. Counts come from one snapshot of the
summaries, taken at opening and at each refresh.
"""

import json
import math
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from mmstream.errors import ReadError
from mmstream.messages import Event, Volume, message_adapter
from mmstream.recording.layout import LAYOUT_VERSION, VOLUME_COLUMNS, dtype_of
from mmstream.recording.rows import headers, readable_prefix, reads, row_at, text_at
from mmstream.recording.stream_reader import StreamReader, counts_checked
from mmstream.recording.volumes import read_voxels

READS_VERSIONS = (1, 2, 3, 4, LAYOUT_VERSION)  # layout 1 (before 2026-11-27): rows counted by the readable prefix; 2 to 4 lack what later layouts added (4: /volumes)


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def stored_eof(path) -> int | None:
    """End of file as the HDF5 superblock at offset 0 records it (None: no superblock there)."""
    with open(path, "rb") as fh:
        head = fh.read(48)
    if not head.startswith(_HDF5_SIGNATURE) or len(head) < 16:
        return None
    version = head[8]
    n_off, at = {0: (head[13], 24), 1: (head[13], 28), 2: (head[9], 12), 3: (head[9], 12)}.get(version, (0, 0))
    if n_off not in (2, 4, 8) or len(head) < at + 3 * n_off:
        return None
    base = int.from_bytes(head[at : at + n_off], "little")
    return base + int.from_bytes(head[at + 2 * n_off : at + 3 * n_off], "little")


class SessionReader:
    """A session file opened for reading (SWMR: works on files being written)."""

    def __init__(self, path):
        self.path = Path(path)
        try:  # SWMR opens skip HDF5's own size check, and reading past the end then never returns
            eof = stored_eof(self.path)
        except FileNotFoundError:
            raise ReadError(f"{self.path}: no such file", reason="not_found") from None
        except OSError as exc:
            raise ReadError(f"{self.path}: cannot read: {exc.strerror}", reason="unreadable") from None
        if eof is not None and self.path.stat().st_size < eof:
            raise ReadError(f"{self.path}: {self.path.stat().st_size} bytes, the file says {eof}: a cut or "
                            "incomplete copy (what was past the cut is lost), or a recorder that died or failed "
                            "mid-write. `h5clear -s --increment=0` on a copy makes it open (it recovers nothing "
                            "past a cut); then the tools say, per table, how many committed rows can still be read",
                            reason="truncated")  # fmt: skip
        try:  # a closed file: plain read, where damaged metadata fails at once (SWMR reads retry)
            self.file = h5py.File(self.path, "r", libver="latest")
        except (OSError, ValueError):
            try:  # open for writing by a live recorder, or its writer died: SWMR read
                self.file = h5py.File(self.path, "r", libver="latest", swmr=True)
            except (OSError, ValueError) as exc:
                raise ReadError(f"{self.path}: cannot open as an HDF5 session file: {exc}", reason="unreadable") from None
        try:
            version = int(self.file["session"].attrs["layout_version"])
        except (KeyError, ValueError, TypeError):
            self.file.close()
            raise ReadError(f"{self.path}: not an mmstream session file (no /session layout_version)",
                            reason="not_a_session")  # fmt: skip
        if version not in READS_VERSIONS:
            self.file.close()
            raise ReadError(f"{self.path}: session layout version {version}, this mmstream reads {READS_VERSIONS}",
                            reason="layout_version")  # fmt: skip
        self._load_filters()
        try:
            self._open_layout(version)
        except (OSError, KeyError, ValueError, TypeError, AttributeError, IndexError) as exc:  # damaged metadata, missing groups
            self.file.close()
            raise ReadError(f"{self.path}: damaged session layout: {type(exc).__name__}: {str(exc)[:300]}",
                            reason="damaged") from None  # fmt: skip

    def _load_filters(self) -> None:
        """Register the blosc filter (hdf5plugin) when a stream's frames use it: without it their
        rows cannot be decompressed and would read as lost. ReadError ``missing_plugin`` when the
        optional package is not installed."""
        try:
            blosc = any(g["frames"].attrs.get("compression") == "blosc-lz4" for g in self.file["streams"].values())
        except (OSError, KeyError, ValueError, TypeError, AttributeError):
            return  # damaged: said by _open_layout
        if blosc:
            try:
                import hdf5plugin  # noqa: F401  (importing it registers the filters with HDF5)
            except ImportError:
                self.file.close()
                raise ReadError(f"{self.path}: its frames are compressed with blosc-lz4: pip install "
                                "'mmstream[blosc]' to read them", reason="missing_plugin") from None

    def _open_layout(self, version: int) -> None:
        # rows are checked in every file: one being written, one whose writer died (also after
        # `h5clear -s`: rows past a stale end of allocation), and a cut copy of a closed one
        # cleared with `h5clear` (its summary says closed, its tables end at the cut)
        self._counted = version >= 2
        self._snapshot()
        self._streams = {g.attrs["stream_id"]: StreamReader(g, self._counted) for g in self.file["streams"].values()}
        self._log_names = ("events", "fused", "biomarkers", *(("volumes",) if version >= 5 else ()))
        self._logs = [self.file[f"{n}/{k}"] for n in self._log_names for k in ("table", "json")]
        if version >= 5:
            self._logs.append(self.file["volumes/voxels"])
        missing = {f"n_{n}" for n in self._log_names} - set(self._summary)
        if missing:
            raise KeyError(f"/session/summary lacks {sorted(missing)}")
        if any(x is None for x in self._logs):
            raise KeyError("a log dataset is missing")

    def close(self) -> None:
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def refresh(self) -> None:
        """See rows appended by a live writer since opening or the last refresh (a file that was
        closed when opened does not change: nothing to do)."""
        if not self.file.swmr_mode:
            return
        self.file["session/summary"].refresh()
        self._snapshot()  # before the tables: they then hold at least the rows it counts
        for st in self._streams.values():
            st.refresh()
        for ds in self._logs:
            ds.refresh()

    @property
    def part(self) -> tuple[int, str]:
        """(part number, recording id) of this file: what putting a recording's parts in order needs
        (read without decoding the JSON attributes, so a file whose ``config_json`` is damaged
        still replays)."""
        a = self.file["session"].attrs
        return int(a.get("part", 0)), str(a.get("recording_id", ""))

    @property
    def attrs(self) -> dict:
        """``/session`` attributes; ``config_json`` and ``streams_json`` decoded as ``config``, ``streams``.
        Raises :class:`ReadError` ``damaged`` if either is not JSON text."""
        a = dict(self.file["session"].attrs)
        for key, default in (("config", "null"), ("streams", "{}")):
            try:
                a[key] = json.loads(a.pop(f"{key}_json", default))
            except (ValueError, TypeError) as exc:  # JSONDecodeError, undecodable bytes, a non-text attribute
                raise ReadError(f"{self.path}: /session attribute {key}_json is not JSON text: {str(exc)[:300]}",
                                reason="damaged") from None  # fmt: skip
        return a

    def _snapshot(self) -> None:
        row = self.file["session/summary"][0]
        self._summary = counts_checked({k: (row[k].decode() if isinstance(row[k], bytes) else row[k].item())
                                         for k in row.dtype.names}, "/session")  # fmt: skip
        self._n: dict[str, int] = {}  # readable rows per log, of this snapshot

    def summary(self) -> dict:
        """The session summary as of the last flush before the opening or the last :meth:`refresh`;
        ``closed`` False means still open or crashed."""
        return dict(self._summary)

    @property
    def streams(self) -> list[str]:
        return list(self._streams)

    def stream(self, stream_id: str) -> StreamReader:
        try:
            return self._streams[stream_id]
        except KeyError:
            raise ReadError(f"{self.path}: no stream {stream_id!r} (has {self.streams})", reason="no_stream") from None

    def _log_rows(self, name: str) -> int:
        """Rows of log ``name`` (events, fused, biomarkers, volumes; 0 for a log the file's layout
        lacks): at most the committed count, and of those the readable prefix (for volumes, with
        the last byte of their voxels)."""
        if name not in self._log_names:
            return 0
        if name not in self._n:
            self._n[name] = self._readable_log(name)
        return self._n[name]

    def _readable_log(self, name: str) -> int:
        t, heap = self.file[f"{name}/table"], self.file[f"{name}/json"]
        n = min(len(t), self._summary[f"n_{name}"]) if self._counted else len(t)

        def row_ok(i):
            def read():
                row = t[i]
                text_at(heap, int(row["json_offset"]), int(row["json_n_bytes"]))
                if name == "volumes" and row["voxels_n_bytes"]:
                    row_at(self.file["volumes/voxels"], int(row["voxels_offset"]) + int(row["voxels_n_bytes"]) - 1)

            return reads(read)

        return readable_prefix(n, row_ok)

    def committed(self, name: str) -> int:
        """Rows of log ``name`` the commit record counts (see :attr:`StreamReader.committed_frames`)."""
        if name not in self._log_names:
            return 0
        return int(self._summary[f"n_{name}"]) if self._counted else self._log_rows(name)

    def _log(self, name: str, start: int = 0, stop: int | None = None) -> list[str]:
        if name not in self._log_names:
            return []
        t = self.file[f"{name}/table"]
        return headers(t[slice(*slice(start, stop).indices(self._log_rows(name)))], self.file[f"{name}/json"])

    def events(self, start: int = 0, stop: int | None = None) -> list[Event]:
        return [Event.model_validate_json(t) for t in self._log("events", start, stop)]

    def event_table(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Event rows ``start:stop`` (structured array, EVENT_COLUMNS)."""
        return self.file["events/table"][slice(*slice(start, stop).indices(self._log_rows("events")))]

    def fused(self, start: int = 0, stop: int | None = None) -> list:
        """Fusion messages as recorded (models when the type is known to this version, else dicts)."""
        out = []
        for text in self._log("fused", start, stop):
            try:
                out.append(message_adapter.validate_json(text))
            except ValueError:
                out.append(json.loads(text))
        return out

    def biomarkers(self) -> list:
        """Biomarker snapshots as recorded (decoded JSON), oldest first."""
        return [json.loads(t) for t in self._log("biomarkers")]

    def volume_table(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Volume rows ``start:stop`` (structured array, VOLUME_COLUMNS; empty before layout 5)."""
        if "volumes" not in self._log_names:
            return np.zeros(0, dtype_of(VOLUME_COLUMNS))
        with self._reading("volume table"):
            rows = self.file["volumes/table"][slice(*slice(start, stop).indices(self._log_rows("volumes")))]
            for r in rows:  # what a row says of its voxels must hold together (a crafted file: numpy infers a -1)
                shape = [int(r[f"shape_{a}"]) for a in "kji"]
                if min(shape) < 0 or math.prod(shape) * np.dtype(r["dtype"].decode()).itemsize != int(r["voxels_n_bytes"]):
                    raise ValueError(f"volume row {r['volume_id']!r}: shape {shape}, dtype {r['dtype']!r} and "
                                     f"{int(r['voxels_n_bytes'])} bytes disagree")  # fmt: skip
            return rows

    def volumes(self, start: int = 0, stop: int | None = None) -> list[Volume]:
        """The recorded :class:`Volume` headers of volumes ``start:stop``, in the order received."""
        with self._reading("volume headers"):
            return [Volume.model_validate_json(t) for t in self._log("volumes", start, stop)]

    def voxels(self, i: int) -> np.ndarray:
        """The (K, J, I) voxels of volume ``i`` (read whole; checked against the recorded SHA-256:
        ReadError ``damaged`` if they differ or cannot be read)."""
        with self._reading(f"volume {i}"):
            n = self._log_rows("volumes")
            if not 0 <= i < n:
                raise ReadError(f"{self.path}: no volume {i} (holds {n})", reason="no_volume")
            (row,) = self.volume_table(i, i + 1)  # its shape, dtype and length checked
            return read_voxels(self.file["volumes/voxels"], row)

    @contextmanager
    def _reading(self, what: str):
        """HDF5 failing to read (OSError) becomes ReadError ``damaged``; so does an invalid header."""
        try:
            yield
        except (OSError, ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:  # ValidationError, UnicodeDecodeError are ValueErrors; the others: crafted tables
            raise ReadError(f"{self.path}: cannot read the {what}: {type(exc).__name__}: {str(exc)[:300]}",
                            reason="damaged") from None  # fmt: skip
