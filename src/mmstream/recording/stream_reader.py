"""One stream of a session file (see :mod:`mmstream.recording.layout`): frames, index, metrics,
read in chunks from the summary snapshot of :class:`mmstream.recording.reader.SessionReader`."""

from collections.abc import Iterator

import h5py
import numpy as np

from mmstream.messages import Frame, Metrics
from mmstream.recording.rows import headers, readable_prefix, reads, row_at, text_at


def counts_checked(summary: dict, where: str) -> dict:
    """``summary`` (a summary row as a dict), or ValueError for a negative ``n_*`` count (a damaged
    or crafted file)."""
    if any(isinstance(v, int) and v < 0 for k, v in summary.items() if k.startswith("n_")):
        raise ValueError(f"negative count in {where}/summary: {summary}")
    return summary


class StreamReader:
    """One stream of a session file: frames, index, metrics. Row ranges follow Python slicing.

    A table counts at most the rows its summary committed (a write failing inside a flush leaves
    that flush's new extents, not its rows), and of those the readable prefix (a killed writer can
    leave the superblock's end of allocation short of rows it wrote, ``h5clear -s`` then cuts them;
    a cut copy lacks what was past the cut): every row reported can be read, with its pixels and
    JSON header. Both counts come from the summary snapshot of the last :meth:`refresh` (or the
    opening) and are computed once per snapshot. ``counted``: the summary holds commit counts
    (layout 2; layout 1 files are read by the readable prefix alone)."""

    def __init__(self, group: h5py.Group, counted: bool = True):
        self.group = group
        self._counted = counted
        self.stream_id: str = group.attrs["stream_id"]
        self.shape: tuple[int, int] = (int(group.attrs["rows"]), int(group.attrs["cols"]))
        m = group["metrics"]
        self._ds = [group["index"], group["json"], group["frames"], m["table"], m["json"],
                    m["histogram"], m["contour_rc"], m["superficial_rc"], m["deep_rc"]]  # fmt: skip
        self._snapshot()

    def _snapshot(self) -> None:
        row = self.group["summary"][0]
        self._summary = counts_checked({k: int(row[k]) for k in row.dtype.names}, self.group.name)
        self._n: dict[str, int] = {}  # readable rows per table, of this snapshot

    def refresh(self) -> None:
        """The commit counts first (one snapshot), then the tables they count."""
        self.group["summary"].refresh()
        self._snapshot()
        for ds in self._ds:
            ds.refresh()

    @property
    def n_frames(self) -> int:
        return self._once("frames", self._readable_frames)

    def _once(self, table: str, count) -> int:
        """``count()`` of ``table``, computed once per snapshot."""
        if table not in self._n:
            self._n[table] = count()
        return self._n[table]

    def _readable_frames(self) -> int:
        index, frames, heap = self.group["index"], self.group["frames"], self.group["json"]
        n = min(len(index), len(frames))
        n = min(n, self._summary["n_frames"]) if self._counted else n

        def row_ok(i):
            def header():
                row = index[i]
                text_at(heap, int(row["json_offset"]), int(row["json_n_bytes"]))

            return reads(header, lambda: row_at(frames, i))

        return readable_prefix(n, row_ok)

    @property
    def n_metrics(self) -> int:
        return self._once("metrics", self._readable_metrics)

    def _readable_metrics(self) -> int:
        m = self.group["metrics"]
        table = m["table"]
        n = min(len(table), self._summary["n_metrics"]) if self._counted else len(table)

        def row_ok(i):
            def header():
                row = table[i]
                text_at(m["json"], int(row["json_offset"]), int(row["json_n_bytes"]))

            return reads(header, *(lambda k=k: row_at(m[k], i) for k in ("histogram", "contour_rc", "superficial_rc", "deep_rc")))

        return readable_prefix(n, row_ok)

    @property
    def committed_frames(self) -> int:
        """Frames the file's commit record counts (the snapshot's ``n_frames``; a layout 1 file:
        :attr:`n_frames`). More than :attr:`n_frames`: the file is damaged (cut, or cleared with
        ``h5clear`` after rows were lost) and rows past ``n_frames`` cannot be read."""
        return self._summary["n_frames"] if self._counted else self.n_frames

    @property
    def committed_metrics(self) -> int:
        """Metrics rows the commit record counts (see :attr:`committed_frames`)."""
        return self._summary["n_metrics"] if self._counted else self.n_metrics

    @property
    def dropped_frames(self) -> int:
        """Frames missing from seq gaps, over the committed index."""
        return int(sum(int(rows["gap_before"].sum()) for rows in self._chunks(self.group["index"], self.n_frames, 4096)))

    def summary(self) -> dict:
        """The ``summary`` row as of the opening or the last :meth:`refresh`."""
        return dict(self._summary)

    def index(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Index rows (structured array, FRAME_INDEX columns)."""
        return self.group["index"][slice(*slice(start, stop).indices(self.n_frames))]

    def frames(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Frames ``start:stop`` as an (n, rows, cols) uint8 array."""
        return self.group["frames"][slice(*slice(start, stop).indices(self.n_frames))]

    @staticmethod
    def _chunks(ds, n: int, chunk: int, start: int = 0):
        for i in range(start, n, chunk):
            yield ds[i : min(i + chunk, n)]

    def iter_frames(self, chunk: int = 32, start: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(index rows, frames) blocks of at most ``chunk`` frames, from frame ``start`` to the
        committed end as of the call."""
        n = self.n_frames
        for i in range(start, n, chunk):
            j = min(i + chunk, n)
            yield self.group["index"][i:j], self.group["frames"][i:j]

    def frame_headers(self, start: int = 0, stop: int | None = None) -> list[Frame]:
        """The recorded wire headers (:class:`Frame`) of frames ``start:stop``."""
        rows = self.index(start, stop)
        return [Frame.model_validate_json(t) for t in headers(rows, self.group["json"])]

    def iter_frame_messages(self, chunk: int = 32, start: int = 0) -> Iterator[tuple[Frame, np.ndarray]]:
        """(Frame header, (rows, cols) uint8 image) per frame, exactly as recorded (for replay)."""
        for rows, frames in self.iter_frames(chunk, start):
            for text, image in zip(headers(rows, self.group["json"]), frames):
                yield Frame.model_validate_json(text), image

    def metrics_table(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Metrics rows (structured array, METRICS_COLUMNS)."""
        return self.group["metrics/table"][slice(*slice(start, stop).indices(self.n_metrics))]

    def iter_metrics(self, chunk: int = 1024, start: int = 0) -> Iterator[np.ndarray]:
        """Blocks of metrics rows, from ``start`` to the committed end as of the call."""
        yield from self._chunks(self.group["metrics/table"], self.n_metrics, chunk, start)

    def metrics_messages(self, start: int = 0, stop: int | None = None) -> list[tuple[Metrics, dict[str, np.ndarray]]]:
        """(Metrics header, arrays) of rows ``start:stop`` as recorded; arrays as on the wire:
        ``histogram`` (256,) int64, ``contour_rc``/``superficial_rc``/``deep_rc`` (K, 2) float32."""
        sl = slice(*slice(start, stop).indices(self.n_metrics))
        rows = self.group["metrics/table"][sl]
        m = self.group["metrics"]
        hist, contour, sup, deep = (m[k][sl] for k in ("histogram", "contour_rc", "superficial_rc", "deep_rc"))
        out = []
        for i, text in enumerate(headers(rows, m["json"])):
            h = Metrics.model_validate_json(text)
            names = [b.name for b in h.buffers]
            arrays = {}
            if "histogram" in names:
                arrays["histogram"] = hist[i].astype(np.int64)
            if "contour_rc" in names:
                arrays["contour_rc"] = contour[i, : rows["contour_n"][i]]
            if "superficial_rc" in names:
                arrays["superficial_rc"] = sup[i, : rows["line_n"][i]]
                arrays["deep_rc"] = deep[i, : rows["line_n"][i]]
            out.append((h, {b: arrays[b] for b in names}))
        return out
