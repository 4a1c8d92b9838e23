"""Export a session file: metrics to CSV and Parquet, frames to PNG files or a video.

Everything streams: metrics are written chunk by chunk (one Parquet row group per chunk) and frames
one at a time, so a session of any length exports in constant memory.

``mmstream export FILE --out DIR [--metrics-format csv,parquet] [--frames png|video]`` writes, per
stream ``S``: ``S_metrics.csv`` / ``S_metrics.parquet`` (one row per analysed frame, the columns of
the layout's metrics table, :data:`mmstream.recording.layout.METRICS_COLUMNS`; Parquet fields carry
their unit), and ``S_frames/<seq>.png`` or ``S.avi`` (Motion-JPEG at the recorded mean frame rate).
Errors reading the session are :class:`ReadError`; errors writing the outputs :class:`ExportError`.
"""

import csv
import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from mmstream.errors import InputError, MmstreamError
from mmstream.recording.layout import METRICS_COLUMNS

METRICS_FORMATS = ("csv", "parquet")
FRAME_FORMATS = ("png", "video")
VIDEO_FOURCC = "MJPG"  # Motion-JPEG in AVI: written by every OpenCV build, read by every player

UNITS = {c.name: c.unit for c in METRICS_COLUMNS}
Columns = dict[str, np.ndarray]  # name -> 1-D array, all the same length


class ExportError(MmstreamError):
    """An export target cannot be written (missing optional package, unwritable path, codec)."""

    reason = "export_failed"


@contextmanager
def _writing(path):
    """Output failures (disk full, permission, directory gone) as ExportError ``unwritable``."""
    try:
        yield
    except OSError as exc:
        raise ExportError(f"{path}: cannot write: {exc.strerror or exc}", reason="unwritable") from None


def _csv_column(a: np.ndarray) -> list:
    """Cell values of one column: text decoded, NaN as an empty cell, floats in shortest form."""
    if a.dtype.kind == "S":
        return np.char.decode(a, "utf-8", "replace").tolist()
    if a.dtype.kind == "f":
        text = a.astype(str)
        text[np.isnan(a)] = ""
        return text.tolist()
    return a.tolist()


def write_csv(chunks: Iterable[Columns], path: Path) -> int:
    """Write column chunks as one CSV file (header from the first chunk; NaN as an empty cell).
    Returns the number of rows written."""
    rows = 0
    with _writing(path):
        fh = open(path, "w", newline="", encoding="utf-8")
    try:
        writer = None
        for chunk in chunks:  # reading: its errors are the source's, not the output's
            names = list(chunk)
            cols = [_csv_column(chunk[k]) for k in names]
            with _writing(path):
                if writer is None:
                    writer = csv.writer(fh)
                    writer.writerow(names)
                writer.writerows(zip(*cols))
            rows += len(cols[0]) if cols else 0
    finally:
        with _writing(path):
            fh.close()
    return rows


def _arrow_column(a: np.ndarray):
    import pyarrow as pa

    if a.dtype.kind == "S":
        return pa.array([v.decode("utf-8", "replace") for v in a], type=pa.string())
    if a.dtype.kind == "f":
        return pa.array(a, from_pandas=True)  # NaN -> null: "unknown", not a number
    return pa.array(a)


def write_parquet(chunks: Iterable[Columns], path: Path, units: dict[str, str] | None = None) -> int:
    """Write column chunks as one Parquet file, one row group per chunk (NaN stored as null); each
    field's unit, when given, goes to its field metadata (``b"unit"``). Returns the number of rows
    written. ExportError when pyarrow is not installed."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ExportError("Parquet export needs pyarrow: pip install 'mmstream[parquet]'", reason="missing_package") from None
    rows = 0
    writer = None
    try:
        for chunk in chunks:  # reading: its errors are the source's, not the output's
            table = pa.table({k: _arrow_column(v) for k, v in chunk.items()})
            with _writing(path):
                if writer is None:
                    schema = pa.schema([f.with_metadata({"unit": units[f.name]}) if units and units.get(f.name) else f
                                        for f in table.schema])  # fmt: skip
                    writer = pq.ParquetWriter(path, schema, compression="zstd")
                writer.write_table(table.cast(schema))
            rows += table.num_rows
    finally:
        if writer is not None:
            with _writing(path):
                writer.close()
    return rows


def write_pngs(frames: Iterable[tuple[int, np.ndarray]], out_dir: Path) -> int:
    """Write each ``(seq, image)`` as ``out_dir/<seq, zero-padded>.png`` (lossless). Returns the count."""
    with _writing(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    for seq, image in frames:
        if not cv2.imwrite(str(out_dir / f"{seq:08d}.png"), image):
            raise ExportError(f"{out_dir}: cannot write PNG for seq {seq}")
        n += 1
    return n


def write_video(frames: Iterable[tuple[int, np.ndarray]], path: Path, fps: float) -> int:
    """Write the images as a Motion-JPEG AVI at ``fps`` (grey frames stored as 3-channel, the only
    form every player reads). Frames of another size than the first are resized to it. Returns the count."""
    if not (fps > 0 and math.isfinite(fps)):
        raise InputError(f"video frame rate must be > 0, got {fps}")
    writer = None
    n = 0
    try:
        for _, image in frames:
            if writer is None:
                size = (image.shape[1], image.shape[0])  # OpenCV wants (width, height)
                writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*VIDEO_FOURCC), float(fps), size, True)
                if not writer.isOpened():
                    raise ExportError(f"{path}: OpenCV cannot open a {VIDEO_FOURCC} video writer")
            if (image.shape[1], image.shape[0]) != size:
                image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            writer.write(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
            n += 1
    finally:
        if writer is not None:
            writer.release()
    return n


@dataclass
class ExportResult:
    """What was written: file paths and row/frame counts per stream."""

    files: list[Path] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    frames: dict[str, int] = field(default_factory=dict)


def parse_formats(text: str, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    """``"csv,parquet"`` -> ("csv", "parquet"); InputError naming the allowed values otherwise."""
    items = tuple(dict.fromkeys(s.strip().lower() for s in text.split(",") if s.strip()))
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        raise InputError(f"{what}: unknown format {', '.join(bad) or '(empty)'}; choose from {', '.join(allowed)}")
    return items


def _counting(it: Iterable, tick: Callable[[int], None] | None) -> Iterator:
    for item in it:
        yield item
        if tick is not None:
            tick(1)


HIDDEN_COLUMNS = ("json_offset", "json_n_bytes")  # file-internal pointers, not data


def metrics_columns(rows: np.ndarray) -> Columns:
    """A metrics table block (structured rows) as named columns, file-internal pointers left out."""
    return {k: rows[k] for k in rows.dtype.names if k not in HIDDEN_COLUMNS}


def _file_stem(stream_id: str) -> str:
    """The stream id as a file name on every OS: ``:`` as ``%3A`` (``%`` is not allowed in stream ids,
    so two streams never share a file)."""
    return stream_id.replace(":", "%3A")


def _frame_rate_fps(index_first: np.ndarray, index_last: np.ndarray, n: int) -> float:
    for clock in ("t_device_s", "t_host_s"):
        t0, t1 = float(index_first[clock][0]), float(index_last[clock][0])
        if math.isfinite(t0) and math.isfinite(t1) and t1 > t0 and n > 1:
            return (n - 1) / (t1 - t0)
    return 30.0  # no usable clock in the file: any rate shows the frames in order


def export_session(path, out_dir, *, metrics_formats=("csv",), frames: str | None = None,
                   progress: Callable[[int], object] | None = None) -> ExportResult:  # fmt: skip
    """Export every stream of the session file ``path`` into ``out_dir`` (created).

    ``metrics_formats``: subset of :data:`METRICS_FORMATS`; ``frames``: None, ``"png"`` or
    ``"video"``. ``progress(total)`` may return a tqdm-like bar (``update(n)``, ``close()``).
    """
    from mmstream.recording.inspect import READ_CHUNK_ROWS, open_session

    bad = [f for f in metrics_formats if f not in METRICS_FORMATS]
    if bad or (frames is not None and frames not in FRAME_FORMATS):
        raise InputError(f"unknown export format {bad or frames}; metrics: {METRICS_FORMATS}, frames: {FRAME_FORMATS}")
    out_dir = Path(out_dir)
    result = ExportResult()
    with open_session(path) as reader:
        with _writing(out_dir):
            out_dir.mkdir(parents=True, exist_ok=True)
        streams = [reader.stream(s) for s in reader.streams]
        total = sum(s.n_metrics * len(metrics_formats) + (s.n_frames if frames else 0) for s in streams)
        bar = progress(total) if progress is not None else None
        tick = None if bar is None else bar.update
        try:
            for sr in streams:
                stem = _file_stem(sr.stream_id)
                n_metrics = sr.n_metrics  # fixed now: a file still being written exports what it had
                for fmt in metrics_formats:
                    target = out_dir / f"{stem}_metrics.{fmt}"
                    chunks = (metrics_columns(r) for r in _counting_rows(sr.iter_metrics(READ_CHUNK_ROWS), n_metrics, tick))
                    writer = write_csv if fmt == "csv" else partial(write_parquet, units=UNITS)
                    result.rows[sr.stream_id] = _write(writer, chunks, target, sr.group["metrics/table"].dtype)
                    result.files.append(target)
                if frames is not None:
                    n = sr.n_frames
                    items = _counting(((int(h["seq"]), img) for rows, imgs in sr.iter_frames(start=0) for h, img in zip(rows, imgs)), tick)
                    if frames == "png":
                        target = out_dir / f"{stem}_frames"
                        result.frames[sr.stream_id] = write_pngs(items, target)
                    elif n:  # a video of no frame is no file
                        target = out_dir / f"{stem}.avi"
                        result.frames[sr.stream_id] = write_video(items, target, _frame_rate_fps(sr.index(0, 1), sr.index(n - 1, n), n))
                    else:
                        result.frames[sr.stream_id] = 0
                        continue
                    result.files.append(target)
        finally:
            if bar is not None:
                bar.close()
    return result


def _counting_rows(chunks: Iterable[np.ndarray], limit: int, tick) -> Iterator[np.ndarray]:
    seen = 0
    for rows in chunks:
        rows = rows[: max(0, limit - seen)]
        if len(rows) == 0:
            return
        seen += len(rows)
        if tick is not None:
            tick(len(rows))
        yield rows


def _write(writer, chunks: Iterator[Columns], target: Path, dtype: np.dtype) -> int:
    """Write ``chunks``; a stream without metrics still gets a file with the header row/schema."""
    first = next(chunks, None)
    if first is None:
        first = metrics_columns(np.zeros(0, dtype))
    return writer(_prepend(first, chunks), target)


def _prepend(first, rest):
    yield first
    yield from rest
