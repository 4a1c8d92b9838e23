"""The session file layout (contract, ``LAYOUT_VERSION``): the one place that defines it.

One HDF5 file per recording part (see ``docs/recording.md``). Every group and dataset is created by
:func:`create_session_file` *before* SWMR writing starts; afterwards rows are only appended::

    /session                      attrs: layout_version, session_id, recording_id, part, software_version,
                                  config_json, start_wall, start_t_host_s, streams_json
    /session/summary              (1,) SESSION_SUMMARY, rewritten at every flush (stop_wall, closed, counts)
    /streams/<stream_id>          attrs: stream_id, rows, cols
        frames                    (N, rows, cols) uint8, chunks (1, rows, cols): one frame per chunk
        index                     (N,) FRAME_INDEX: seq, times, spacing, settings, gap_before, json_*
        json                      (M,) uint8: UTF-8 JSON of each frame header, at index.json_offset
        summary                   (1,) STREAM_SUMMARY, rewritten at every flush
        metrics/table             (K,) METRICS_COLUMNS, one row per metrics message (parent seq)
        metrics/histogram         (K, 256) uint32 echogenicity histogram (zeros when absent)
        metrics/contour_rc        (K, CONTOUR_MAX_POINTS, 2) float32 CSA contour; table.contour_n rows valid
        metrics/superficial_rc    (K, cols, 2) float32 thickness boundary; table.line_n rows valid
        metrics/deep_rc           (K, cols, 2) float32
        metrics/json              (B,) uint8: UTF-8 JSON of each metrics header
    /events, /fused, /biomarkers  table (JSON_LOG_COLUMNS + extra) and json (B,) uint8 heap
    /volumes                      (layout 5) table (V,) VOLUME_COLUMNS, json heap of the Volume headers,
        voxels                    (X,) uint8: each volume's voxel bytes (C order, K x J x I, dtype in
                                  its row), starting at a multiple of VOXEL_CHUNK_BYTES

Committed rows: the counts in the summaries (``n_frames``, ``n_metrics`` per stream; ``n_events``,
``n_fused``, ``n_biomarkers``, ``n_volumes`` per session). The writer writes pixels, arrays, JSON bytes and rows,
makes them durable, and only then writes the counts, so a table can be longer than its count (a
flush cut short) but never a counted row incomplete. Readers count the rows up to the counts
that can be read (in a cleanly closed file, all of them, unless it is a cut copy). Absent numbers are NaN,
absent integers -1, absent strings empty. Units per column are in each table's ``attrs["units"]``
(JSON object column -> unit). No variable-length types anywhere (not SWMR-safe): texts go to the
``json`` byte heaps.
"""

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

LAYOUT_VERSION = 5  # 2: the summaries' counts are the commit record (n_fused, n_biomarkers added); 3: thickness_tracked and the thickness click columns; 4: active_fraction, q_featureless; 5: /volumes, n_volumes
HIST_BINS = 256
CONTOUR_MAX_POINTS = 256  # the CSA kernel returns 64-vertex polygons
HEAP_CHUNK_BYTES = 1 << 16
TABLE_CHUNK_ROWS = 256
VOXEL_CHUNK_BYTES = 1 << 20  # a volume starts at a chunk boundary (tools/bench_record_volume.py)
LIBVER = ("v110", "v110")  # SWMR needs >= 1.10; newer formats are unreadable by the HDF5 1.10 tools (Debian)
COMPRESSIONS = ("none", "gzip", "lzf", "blosc-lz4")
STAMP_NAMES = ("sent", "ingest", "analysis_start", "analyzed", "published")  # monotonic host clock, s


@dataclass(frozen=True)
class Column:
    """One column of a compound table: HDF5 dtype, unit ("" = dimensionless), meaning, and how it
    is taken from a wire header (``None`` for columns the writer fills itself)."""

    name: str
    dtype: str
    unit: str
    doc: str
    get: Callable[[Any], Any] | None = None


def _nan(v) -> float:
    return np.nan if v is None else float(v)


def _sub(part: str, attr: str, conv=_nan, missing=np.nan):
    """Getter of ``header.<part>.<attr>`` (``attr`` may index a tuple: ``"seed_rc.0"``)."""
    name, _, idx = attr.partition(".")

    def get(h):
        obj = getattr(h, part)
        if obj is None:
            return missing
        v = getattr(obj, name)
        return conv(v if not idx or v is None else v[int(idx)])

    return get


def _stamp(name):
    return lambda h: _nan(h.stamps.get(name))


def _spacing(i):
    return lambda h: np.nan if h.spacing_mm is None else float(h.spacing_mm[i])


_HEAP = (
    Column("json_offset", "u8", "byte", "offset of this row's header JSON in the sibling json heap"),
    Column("json_n_bytes", "u4", "byte", "length of this row's header JSON"),
)
_RECORDED = Column("t_recorded_s", "f8", "s", "host monotonic clock when the recorder received it")

FRAME_INDEX = (
    Column("seq", "i8", "", "frame sequence number of the source", lambda h: h.seq),
    Column("t_device_s", "f8", "s", "source clock", lambda h: _nan(h.t_device_s)),
    Column("t_host_s", "f8", "s", "host monotonic clock at ingest", lambda h: _nan(h.t_host_s)),
    Column("t_wall", "S40", "ISO 8601 UTC", "wall clock at the source or ingest", lambda h: h.t_wall or ""),
    _RECORDED,
    Column("spacing_row_mm", "f8", "mm", "pixel spacing along rows (NaN: unknown)", _spacing(0)),
    Column("spacing_col_mm", "f8", "mm", "pixel spacing along columns (NaN: unknown)", _spacing(1)),
    Column("spacing_source", "S24", "", "where the spacing came from", lambda h: h.spacing_source),
    Column("depth_mm", "f8", "mm", "imaging depth", _sub("imaging", "depth_mm")),
    Column("gain_db", "f8", "dB", "gain", _sub("imaging", "gain_db")),
    Column("frequency_mhz", "f8", "MHz", "transmit frequency", _sub("imaging", "frequency_mhz")),
    Column("gap_before", "i8", "frame", "frames missing (seq gap) right before this one"),
    *_HEAP,
)

_BOOL = (lambda v: bool(v)), False
METRICS_COLUMNS = (
    Column("seq", "i8", "", "seq of the parent frame", lambda h: h.parent[1]),
    Column("t_device_s", "f8", "s", "source clock of the parent frame", lambda h: _nan(h.t_device_s)),
    _RECORDED,
    *(Column(f"stamp_{n}", "f8", "s", f"stage stamp '{n}' (host monotonic)", _stamp(n)) for n in STAMP_NAMES),
    Column("has_echogenicity", "?", "", "echogenicity computed", lambda h: h.echogenicity is not None),
    Column("echo_region", "S8", "", "roi, csa or frame", _sub("echogenicity", "region", str, "")),
    Column("echo_mean", "f8", "grey level", "mean grey value in the region", _sub("echogenicity", "mean")),
    Column("echo_std", "f8", "grey level", "standard deviation", _sub("echogenicity", "std")),
    Column("echo_n_px", "i8", "pixel", "pixels in the region", _sub("echogenicity", "n_px", int, -1)),
    Column("has_csa", "?", "", "CSA computed", lambda h: h.csa is not None),
    Column("csa_seed_r", "f8", "pixel", "seed row", _sub("csa", "seed_rc.0")),
    Column("csa_seed_c", "f8", "pixel", "seed column", _sub("csa", "seed_rc.1")),
    Column("csa_tracked", "?", "", "contour tracked from the previous frame", _sub("csa", "tracked", *_BOOL)),
    Column("csa_area_px", "f8", "pixel^2", "area", _sub("csa", "area_px")),
    Column("csa_area_mm2", "f8", "mm^2", "area (NaN: spacing unknown)", _sub("csa", "area_mm2")),
    Column("csa_perimeter_px", "f8", "pixel", "perimeter", _sub("csa", "perimeter_px")),
    Column("csa_perimeter_mm", "f8", "mm", "perimeter (NaN: spacing unknown)", _sub("csa", "perimeter_mm")),
    Column("csa_centroid_r", "f8", "pixel", "centroid row", _sub("csa", "centroid_rc.0")),
    Column("csa_centroid_c", "f8", "pixel", "centroid column", _sub("csa", "centroid_rc.1")),
    Column("csa_confidence", "f8", "", "0..1", _sub("csa", "confidence")),
    Column("contour_n", "i4", "point", "valid rows of metrics/contour_rc (0: none)"),
    Column("has_thickness", "?", "", "thickness computed", lambda h: h.thickness is not None),
    *(Column(f"thickness_region_{k}", "i4", "pixel", f"region {k} (row0, col0, row1, col1)",
             _sub("thickness", f"region_rc.{i}", int, -1)) for i, k in enumerate(("r0", "c0", "r1", "c1"))),
    Column("thickness_px", "f8", "pixel", "median thickness", _sub("thickness", "thickness_px")),
    Column("thickness_mm", "f8", "mm", "median thickness (NaN: spacing unknown)", _sub("thickness", "thickness_mm")),
    Column("thickness_confidence", "f8", "", "0..1", _sub("thickness", "confidence")),
    Column("thickness_tracked", "?", "", "lines tracked from the previous frame", _sub("thickness", "tracked", *_BOOL)),
    *(Column(f"thickness_{line}_at_{a}", "f8", "pixel", f"{line} line held by a click: {name} (NaN: not held)",
             _sub("thickness", f"{line}_at_rc.{i}"))
      for line in ("superficial", "deep") for i, (a, name) in enumerate((("r", "row"), ("c", "click column")))),
    Column("line_n", "i4", "point", "valid rows of metrics/superficial_rc and deep_rc (0: none)"),
    Column("has_quality", "?", "", "quality flags computed", lambda h: h.quality is not None),
    Column("saturated_fraction", "f8", "", "fraction of saturated pixels", _sub("quality", "saturated_fraction")),
    Column("dark_fraction", "f8", "", "fraction of dark pixels", _sub("quality", "dark_fraction")),
    Column("active_fraction", "f8", "", "fraction of non-dark pixels differing from the pixel below",
           _sub("quality", "active_fraction")),
    Column("thumb_mean_abs_diff", "f8", "grey level", "thumbnail change from the previous frame",
           _sub("quality", "thumb_mean_abs_diff")),
    *(Column(f"q_{k}", "?", "", f"quality flag {k}", _sub("quality", k, *_BOOL))
      for k in ("duplicate", "frozen", "saturated", "no_contact", "featureless")),
    Column("truncated", "?", "", "a contour or line was longer than its dataset and was cut"),
    *_HEAP,
)  # fmt: skip

JSON_LOG_COLUMNS = (_RECORDED, *_HEAP)
EVENT_COLUMNS = (
    Column("t_host_s", "f8", "s", "host monotonic clock of the event", lambda h: h.t_host_s),
    _RECORDED,
    Column("level", "S8", "", "info, warning or error", lambda h: h.level),
    Column("node", "S64", "", "node that sent it", lambda h: h.node),
    Column("reason", "S64", "", "machine-readable reason", lambda h: h.reason),
    Column("stream_id", "S64", "", "stream concerned (empty: none)", lambda h: h.stream_id or ""),
    Column("seq", "i8", "", "frame concerned (-1: none)", lambda h: -1 if h.seq is None else h.seq),
    *_HEAP,
)
FUSED_COLUMNS = (
    _RECORDED,
    Column("msg_type", "S32", "", "wire message type", lambda h: h.msg_type),
    Column("stream_id", "S64", "", "stream concerned (empty: none)", lambda h: getattr(h, "stream_id", None) or ""),
    *_HEAP,
)


def _shape(i):
    return lambda h: int(h.buffers[0].shape[i])


VOLUME_COLUMNS = (
    _RECORDED,
    Column("volume_id", "S64", "", "volume id (a series sent again keeps its id)", lambda h: h.volume_id),
    Column("version", "i4", "", "1: first content recorded under this id in this file part; 2: the next different one..."),
    Column("modality", "S16", "", "modality as sent (DICOM Modality)", lambda h: h.modality),
    Column("dtype", "S8", "", "numpy dtype of the voxels with byte order, e.g. <i2", lambda h: np.dtype(h.buffers[0].dtype).str),
    *(Column(f"shape_{a}", "i8", "voxel", f"voxels along {a} ({name})", _shape(i))
      for i, (a, name) in enumerate((("k", "slices"), ("j", "rows"), ("i", "columns")))),
    *(Column(f"spacing_{a}_mm", "f8", "mm", f"voxel spacing along {a}", lambda h, i=i: float(h.spacing_mm[i]))
      for i, a in enumerate("kji")),
    *(Column(f"origin_{a}_mm", "f8", "mm", f"centre of voxel (0, 0, 0), LPS {a.upper()}", lambda h, i=i: float(h.origin_lps_mm[i]))
      for i, a in enumerate("lps")),
    Column("voxels_offset", "u8", "byte", "offset of the voxel bytes in /volumes/voxels"),
    Column("voxels_n_bytes", "u8", "byte", "length of the voxel bytes"),
    Column("voxels_sha256", "S64", "", "SHA-256 (hex) of the voxel bytes"),
    *_HEAP,
)  # fmt: skip
STREAM_SUMMARY = (
    Column("n_frames", "i8", "frame", "committed frames"),
    Column("n_metrics", "i8", "message", "committed metrics rows"),
    Column("dropped_frames", "i8", "frame", "seq gaps seen by the recorder (sum of index.gap_before)"),
    Column("first_seq", "i8", "", "-1: no frame yet"),
    Column("last_seq", "i8", "", "-1: no frame yet"),
)
SESSION_SUMMARY = (
    Column("t_wall_flushed", "S40", "ISO 8601 UTC", "wall clock of the last flush"),
    Column("stop_wall", "S40", "ISO 8601 UTC", "set when the part was closed cleanly (empty: open or crashed)"),
    Column("closed", "?", "", "closed cleanly"),
    Column("n_frames", "i8", "frame", "committed frames, all streams"),
    Column("dropped_frames", "i8", "frame", "seq gaps, all streams"),
    Column("rejected_messages", "i8", "message", "rejection events (level warning) seen from the service"),
    Column("lost_frames", "i8", "frame", "frames the recorder received but could not write"),
    Column("n_events", "i8", "message", "committed events"),
    Column("n_fused", "i8", "message", "committed fused rows"),
    Column("n_biomarkers", "i8", "message", "committed biomarker snapshots"),
    Column("n_volumes", "i8", "volume", "committed volumes (layout 5)"),
)


def dtype_of(columns: tuple[Column, ...]) -> np.dtype:
    return np.dtype([(c.name, c.dtype) for c in columns])


_PLANS: dict[int, tuple] = {}


def _plan(columns: tuple[Column, ...]) -> tuple:
    """(name, getter, string length or 0) per column, computed once per table (tables are constants)."""
    plan = _PLANS.get(id(columns))
    if plan is None:
        plan = _PLANS[id(columns)] = tuple((c.name, c.get, int(c.dtype[1:]) if c.dtype[0] == "S" else 0) for c in columns)
    return plan


def row_of(columns: tuple[Column, ...], header, **filled) -> tuple:
    """One table row (a tuple in column order) from a wire header; ``filled`` gives the columns
    without a getter (``t_recorded_s``, ``json_offset``...); those not given are 0."""
    out = []
    for name, get, n_chars in _plan(columns):
        v = filled[name] if name in filled else (get(header) if get is not None else 0)
        out.append(v.encode()[:n_chars] if n_chars else v)
    return tuple(out)


def frame_filters(compression: str) -> dict:
    """h5py ``create_dataset`` keywords for the frames dataset of ``compression``."""
    if compression == "none":
        return {}
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": 1}
    if compression == "lzf":
        return {"compression": "lzf"}
    if compression == "blosc-lz4":
        import hdf5plugin  # optional extra: pip install "mmstream[blosc]"

        return dict(hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.NOSHUFFLE))
    raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")


def _units(columns) -> str:
    return json.dumps({c.name: c.unit for c in columns})


def _table(group: h5py.Group, name: str, columns) -> h5py.Dataset:
    ds = group.create_dataset(name, (0,), maxshape=(None,), dtype=dtype_of(columns), chunks=(TABLE_CHUNK_ROWS,),
                              compression="gzip", compression_opts=1)  # fmt: skip
    ds.attrs["units"] = _units(columns)
    return ds


def _heap(group: h5py.Group) -> None:
    ds = group.create_dataset("json", (0,), maxshape=(None,), dtype="u1", chunks=(HEAP_CHUNK_BYTES,),
                              compression="gzip", compression_opts=1)  # fmt: skip
    ds.attrs["units"] = json.dumps({"json": "UTF-8 bytes of one wire header per table row"})


def _single(group: h5py.Group, name: str, columns) -> None:
    # written at creation, so its storage is allocated before SWMR starts: allocated at the first
    # flush instead, a writer killed then left a header pointing past the end of the file
    ds = group.create_dataset(name, data=np.zeros(1, dtype_of(columns)))
    ds.attrs["units"] = _units(columns)


def _array(group, name, shape, dtype, unit):
    ds = group.create_dataset(name, (0, *shape), maxshape=(None, *shape), dtype=dtype, chunks=(16, *shape),
                              compression="gzip", compression_opts=1)  # fmt: skip
    ds.attrs["units"] = unit


def create_session_file(path, attrs: dict, streams: dict[str, tuple[int, int]], compression: str = "none") -> h5py.File:
    """Create the whole layout in a new file (fails if ``path`` exists) and return it open for
    writing, SWMR not yet started. ``attrs`` go to ``/session`` (strings or numbers);
    ``streams`` maps stream id -> frame shape (rows, cols).

    The layout is built in memory and its bytes written to ``path`` by Python, so a write that
    fails (disk full, file size limit) is an OSError raised outside HDF5, and the file is removed;
    HDF5 then opens a complete file. (Built on disk, a write failing inside HDF5 left dataset
    handles HDF5 could not free, and the process died of SIGSEGV when HDF5 freed them at exit.)"""
    image = memoryview(_layout_image(os.fspath(path), attrs, streams, compression))
    fh = open(path, "xb", buffering=0)  # fails if ``path`` exists: nothing created, nothing removed
    try:
        with fh:
            while image:
                image = image[fh.write(image) :]
        return h5py.File(path, "r+", libver=LIBVER)
    except OSError as exc:
        Path(path).unlink(missing_ok=True)  # created here: no damaged file left behind
        if exc.filename is None and exc.errno is not None:  # a failed write names no file: name it
            raise OSError(exc.errno, exc.strerror, os.fspath(path)) from None
        raise
    except BaseException:
        Path(path).unlink(missing_ok=True)
        raise


def _layout_image(name: str, attrs: dict, streams: dict[str, tuple[int, int]], compression: str) -> bytes:
    """The bytes of a new file holding the whole layout, built in memory (HDF5 core driver, no
    backing store: ``name`` only identifies it while it is open)."""
    f = h5py.File(name, "w", driver="core", backing_store=False, libver=LIBVER)
    try:
        s = f.create_group("session")
        for k, v in {**attrs, "layout_version": LAYOUT_VERSION, "streams_json": json.dumps(streams)}.items():
            s.attrs[k] = v
        _single(s, "summary", SESSION_SUMMARY)
        filters = frame_filters(compression)
        f.create_group("streams")  # also with no stream (a recording of volumes only)
        for sid, (rows, cols) in streams.items():
            g = f.create_group(f"streams/{sid}")
            g.attrs.update({"stream_id": sid, "rows": rows, "cols": cols})
            fr = g.create_dataset("frames", (0, rows, cols), maxshape=(None, rows, cols), dtype="u1",
                                  chunks=(1, rows, cols), **filters)  # fmt: skip
            fr.attrs.update({"units": "grey level", "axes": "frame, row, col", "compression": compression})
            _table(g, "index", FRAME_INDEX)
            _heap(g)
            _single(g, "summary", STREAM_SUMMARY)
            m = g.create_group("metrics")
            _table(m, "table", METRICS_COLUMNS)
            _heap(m)
            _array(m, "histogram", (HIST_BINS,), "u4", "pixel count per grey level")
            _array(m, "contour_rc", (CONTOUR_MAX_POINTS, 2), "f4", "pixel (row, col)")
            _array(m, "superficial_rc", (cols, 2), "f4", "pixel (row, col)")
            _array(m, "deep_rc", (cols, 2), "f4", "pixel (row, col)")
        for name, cols_ in (("events", EVENT_COLUMNS), ("fused", FUSED_COLUMNS), ("biomarkers", JSON_LOG_COLUMNS)):
            g = f.create_group(name)
            _table(g, "table", cols_)
            _heap(g)
        g = f.create_group("volumes")
        _table(g, "table", VOLUME_COLUMNS)
        _heap(g)
        # uncompressed whatever ``compression`` says: gzip held the recorder 5.9 s per 64 Mi-voxel volume
        vx = g.create_dataset("voxels", (0,), maxshape=(None,), dtype="u1", chunks=(VOXEL_CHUNK_BYTES,))
        vx.attrs["units"] = "bytes of each volume's voxels (dtype, shape: its table row)"
        f.flush()
        return f.id.get_file_image()
    finally:
        f.close()


def describe() -> dict:
    """Machine-readable description of the layout (exported to ``schemas/session-layout.json``)."""

    def cols(columns):
        return [{"name": c.name, "dtype": c.dtype, "unit": c.unit, "doc": c.doc} for c in columns]

    heap = {"dtype": "uint8", "shape": ["B"], "doc": "UTF-8 JSON wire headers, addressed by json_offset/json_n_bytes"}
    return {
        "layout_version": LAYOUT_VERSION,
        "doc": __doc__.strip().splitlines()[0],
        "committed_rows": ("the summaries' counts (streams/<id>/summary n_frames, n_metrics; session/summary "
                           "n_events, n_fused, n_biomarkers, n_volumes), written after the rows are durable; a table may "
                           "be longer than its count in a file not closed cleanly"),
        "session": {
            "attrs": ["layout_version", "session_id", "recording_id", "part", "software_version", "config_json",
                      "start_wall", "start_t_host_s", "previous_part", "streams_json"],
            "summary": {"shape": [1], "columns": cols(SESSION_SUMMARY)},
        },  # fmt: skip
        "streams/<stream_id>": {
            "attrs": ["stream_id", "rows", "cols"],
            "frames": {"dtype": "uint8", "shape": ["N", "rows", "cols"], "chunks": [1, "rows", "cols"],
                       "attrs": ["units", "axes", "compression"], "compressions": list(COMPRESSIONS)},
            "index": {"shape": ["N"], "columns": cols(FRAME_INDEX)},
            "json": heap,
            "summary": {"shape": [1], "columns": cols(STREAM_SUMMARY)},
            "metrics/table": {"shape": ["K"], "columns": cols(METRICS_COLUMNS)},
            "metrics/histogram": {"dtype": "uint32", "shape": ["K", HIST_BINS]},
            "metrics/contour_rc": {"dtype": "float32", "shape": ["K", CONTOUR_MAX_POINTS, 2], "valid": "contour_n"},
            "metrics/superficial_rc": {"dtype": "float32", "shape": ["K", "cols", 2], "valid": "line_n"},
            "metrics/deep_rc": {"dtype": "float32", "shape": ["K", "cols", 2], "valid": "line_n"},
            "metrics/json": heap,
        },  # fmt: skip
        "events": {"table": {"shape": ["E"], "columns": cols(EVENT_COLUMNS)}, "json": heap},
        "fused": {"table": {"shape": ["F"], "columns": cols(FUSED_COLUMNS)}, "json": heap},
        "biomarkers": {"table": {"shape": ["S"], "columns": cols(JSON_LOG_COLUMNS)}, "json": heap},
        "volumes": {"table": {"shape": ["V"], "columns": cols(VOLUME_COLUMNS)}, "json": heap,
                    "voxels": {"dtype": "uint8", "shape": ["X"], "chunks": [VOXEL_CHUNK_BYTES],
                               "doc": "voxel bytes of each volume (C order, shape and dtype in its row), "
                                      "starting at a multiple of the chunk size; uncompressed"}},
    }
