"""SWMR writer of one session file part (layout: :mod:`mmstream.recording.layout`).

Frames and volumes (by reference), table rows and their JSON wait in memory until :meth:`SessionWriter.flush`
(the recorder calls it every ``flush_interval_s``), which writes, per table, the JSON bytes and the
pixels or arrays first and the rows last, flushes HDF5 and fsyncs, and only then writes the row
counts into the summaries (flushed and fsynced again). So a writer killed, or failing a write, at
any moment leaves every row committed by the last flush complete and no row of a later one counted,
and memory holds at most one flush interval of frames (and the volumes received in it).
"""

import errno
import gc
import os
import resource
import sys
import time
import zlib
from datetime import datetime, timezone

import h5py
import numpy as np

from mmstream.errors import InputError, RecordingError
from mmstream.messages import Event, Frame, Metrics, Volume
from mmstream.recording import layout as L
from mmstream.recording.volumes import VolumeLog


RESERVE_BYTES = 16 * 2**20  # room kept free for the metadata of a flush and a clean close


def room_bytes(path) -> int:
    """Bytes ``path`` can still grow by: free space of its file system for this user, and the
    process's file size limit (RLIMIT_FSIZE)."""
    st = os.statvfs(os.path.dirname(os.path.abspath(path)))
    room = st.f_bavail * st.f_frsize
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY:
        room = min(room, limit - os.path.getsize(path))
    return room


def _fsync_directory(path: str) -> None:
    """fsync a directory where the file system allows it (some refuse: EINVAL, ENOTSUP, EACCES)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except PermissionError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EACCES):
            raise
    finally:
        os.close(fd)


def _wall() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class _Table:
    """A compound table plus its JSON heap; rows wait in ``pending`` until :meth:`commit`."""

    def __init__(self, table: h5py.Dataset, heap: h5py.Dataset, columns):
        self.table, self.heap, self.columns = table, heap, columns
        self.dtype = L.dtype_of(columns)
        self.n = 0
        self.heap_n = 0
        self.pending: list[tuple] = []
        self._blobs: list[bytes] = []
        self._pending_bytes = 0

    def add(self, header, **filled) -> None:
        blob = header.model_dump_json().encode() if hasattr(header, "model_dump_json") else header
        off = self.heap_n + self._pending_bytes
        self._blobs.append(blob)
        self._pending_bytes += len(blob)
        self.pending.append(L.row_of(self.columns, header, json_offset=off, json_n_bytes=len(blob), **filled))

    def discard(self) -> int:
        """Drop the pending rows (not written); returns how many."""
        n = len(self.pending)
        self.pending.clear()
        self._blobs.clear()
        self._pending_bytes = 0
        return n

    def commit(self, before_rows=None) -> None:
        """Write heap bytes, then ``before_rows()`` (arrays the rows point to), then the rows."""
        if not self.pending:
            return
        if self._blobs:
            data = np.frombuffer(b"".join(self._blobs), np.uint8)
            self.heap.resize((self.heap_n + len(data),))
            self.heap[self.heap_n :] = data
            self.heap_n += len(data)
            self._blobs.clear()
            self._pending_bytes = 0
        if before_rows is not None:
            before_rows()
        rows = np.array(self.pending, dtype=self.dtype)
        self.table.resize((self.n + len(rows),))
        self.table[self.n :] = rows
        self.n += len(rows)
        self.pending.clear()


class _Stream:
    def __init__(self, g: h5py.Group, compression: str):
        self.g = g
        self.shape = (int(g.attrs["rows"]), int(g.attrs["cols"]))
        self.frames = g["frames"]
        self.n_written = 0  # frames in the dataset
        self.index = _Table(g["index"], g["json"], L.FRAME_INDEX)
        self.metrics = _Table(g["metrics/table"], g["metrics/json"], L.METRICS_COLUMNS)
        self.arrays = {k: g[f"metrics/{k}"] for k in ("histogram", "contour_rc", "superficial_rc", "deep_rc")}
        self.pending_arrays: dict[str, list] = {k: [] for k in self.arrays}
        self.last_seq = -1
        self.first_seq = -1
        self.last_key: tuple[str, int] | None = None  # (session_id, seq) of the last frame, here or in the part before
        self.dropped = 0
        self.pending_frames: list[np.ndarray] = []
        self._encode = {"none": lambda a: a, "gzip": lambda a: zlib.compress(a, 1)}.get(compression)

    def write_frames(self) -> None:
        """Append the pending frames: one resize, then one chunk per frame (straight to the file
        for uncompressed and gzip frames, through the HDF5 filter pipeline otherwise)."""
        n0, k = self.n_written, len(self.pending_frames)
        if not k:
            return
        self.frames.resize((n0 + k, *self.shape))
        for i, image in enumerate(self.pending_frames):
            if self._encode is not None:
                self.frames.id.write_direct_chunk((n0 + i, 0, 0), self._encode(np.ascontiguousarray(image)))
            else:
                self.frames[n0 + i] = image
        self.n_written = n0 + k
        self.pending_frames.clear()

    def write_arrays(self) -> None:
        k0 = self.metrics.n
        n = len(self.pending_arrays["histogram"])
        for name, ds in self.arrays.items():
            ds.resize((k0 + n, *ds.shape[1:]))
            ds[k0:] = np.stack(self.pending_arrays[name])
            self.pending_arrays[name].clear()


def _padded(a, rows: int) -> tuple[np.ndarray, int, bool]:
    """(rows, 2) float32 with ``a`` at the top; valid count; whether ``a`` had to be cut."""
    out = np.zeros((rows, 2), np.float32)
    if a is None:
        return out, 0, False
    k = min(len(a), rows)
    out[:k] = a[:k]
    return out, k, len(a) > rows


class SessionWriter:
    """One session file part, written in SWMR mode.

    ``streams`` maps stream id -> frame shape (rows, cols): the file holds exactly these; a frame of
    another stream or shape raises InputError (the recorder then starts a new part).
    ``committed`` holds what the last :meth:`flush` made durable.
    """

    def __init__(self, path, attrs: dict, streams: dict[str, tuple[int, int]], compression: str = "none",
                 fsync: bool = True, follows: dict[str, tuple[str, int]] | None = None):  # fmt: skip
        """``follows``: each stream's (session_id, seq) of its last frame in the part before, so a
        seq gap across the part boundary is counted here."""
        self.path = os.fspath(path)
        self.file = L.create_session_file(self.path, attrs, streams, compression)
        self._fsync = fsync
        try:
            self.file.swmr_mode = True
            if fsync:  # the new file's directory entry too: a power loss must not lose the whole part
                self.file.flush()
                os.fsync(self.file.id.get_vfd_handle())
        except BaseException:
            try:
                self.file.close()
            except Exception:  # noqa: BLE001  a failed file may fail to close too: removed all the same
                pass
            os.unlink(self.path)  # created here, holds nothing: no damaged part left behind
            raise
        if fsync:
            _fsync_directory(os.path.dirname(os.path.abspath(self.path)))
        self.streams = {sid: _Stream(self.file[f"streams/{sid}"], compression) for sid in streams}
        for sid, key in (follows or {}).items():
            if sid in self.streams:
                self.streams[sid].last_key = key
        self.logs = {
            name: _Table(self.file[f"{name}/table"], self.file[f"{name}/json"], cols)
            for name, cols in (("events", L.EVENT_COLUMNS), ("fused", L.FUSED_COLUMNS), ("biomarkers", L.JSON_LOG_COLUMNS))
        }  # fmt: skip
        g = self.file["volumes"]
        self.volumes = VolumeLog(_Table(g["table"], g["json"], L.VOLUME_COLUMNS), g["voxels"])
        self.rejected_messages = 0
        self.lost_frames = 0
        self.pending_bytes = 0  # pixels waiting for the next flush
        self.committed: dict = {"frames": {s: 0 for s in streams}, "metrics": {s: 0 for s in streams},
                                "events": 0, "fused": 0, "biomarkers": 0, "volumes": 0}  # fmt: skip
        self._lost_recorded = 0  # lost_frames as the summary holds it
        self.closed = False

    def accepts(self, stream_id: str, shape: tuple[int, ...]) -> bool:
        st = self.streams.get(stream_id)
        return st is not None and st.shape == tuple(shape)

    def add_frame(self, header: Frame, image: np.ndarray) -> None:
        """Queue the frame (a reference, no copy) for the next flush."""
        st = self.streams.get(header.stream_id)
        if st is None or image.shape != st.shape:
            raise InputError(f"frame {header.stream_id} {image.shape} does not fit this file part",
                             reason="new_stream_or_shape")  # fmt: skip
        prev = st.last_key  # a gap within one session of the source; a restarted source starts anew
        gap = header.seq - prev[1] - 1 if prev is not None and prev[0] == header.session_id and header.seq > prev[1] + 1 else 0
        st.pending_frames.append(image)
        self.pending_bytes += image.nbytes
        st.dropped += gap
        st.last_seq = header.seq
        st.last_key = (header.session_id, header.seq)
        if st.first_seq < 0:
            st.first_seq = header.seq
        st.index.add(header, t_recorded_s=time.monotonic(), gap_before=gap)

    def last_keys(self) -> dict[str, tuple[str, int]]:
        """Each stream's (session_id, seq) of its last frame (for the next part's ``follows``)."""
        return {sid: st.last_key for sid, st in self.streams.items() if st.last_key is not None}

    def add_metrics(self, header: Metrics, arrays: dict[str, np.ndarray]) -> None:
        st = self.streams.get(header.stream_id)
        if st is None:
            raise InputError(f"metrics of stream {header.stream_id!r} that is not in this file part",
                             reason="unknown_stream")  # fmt: skip
        hist = np.zeros(L.HIST_BINS, np.uint32)
        if "histogram" in arrays:
            hist[:] = np.asarray(arrays["histogram"])[: L.HIST_BINS]
        contour, contour_n, cut_c = _padded(arrays.get("contour_rc"), L.CONTOUR_MAX_POINTS)
        sup, line_n, cut_s = _padded(arrays.get("superficial_rc"), st.shape[1])
        deep, _, cut_d = _padded(arrays.get("deep_rc"), st.shape[1])
        for k, v in zip(st.pending_arrays, (hist, contour, sup, deep)):
            st.pending_arrays[k].append(v)
        st.metrics.add(header, t_recorded_s=time.monotonic(), contour_n=contour_n, line_n=line_n,
                       truncated=cut_c or cut_s or cut_d)  # fmt: skip

    def add_event(self, header: Event) -> None:
        if header.level == "warning" and header.node != "recorder":
            self.rejected_messages += 1
        self.logs["events"].add(header, t_recorded_s=time.monotonic())

    def add_fused(self, header) -> None:
        """A fusion result, kept as its JSON."""
        self.logs["fused"].add(header, t_recorded_s=time.monotonic())

    def add_volume(self, header: Volume, voxels: np.ndarray) -> bool:
        """Queue a volume (a reference, no copy) for the next flush; False, nothing queued, when
        this part already holds it (same id, header and voxels): a changed one is a new version."""
        if not self.volumes.add(header, voxels):
            return False
        self.pending_bytes += voxels.nbytes
        return True

    def add_biomarkers(self, snapshot_json: str) -> None:
        """The biomarker snapshot (JSON text) fusion works with."""
        self.logs["biomarkers"].add(snapshot_json.encode(), t_recorded_s=time.monotonic())

    def _write_summaries(self, stop_wall: str = "") -> None:
        n_frames = dropped = 0
        for st in self.streams.values():
            st.g["summary"][0] = (st.index.n, st.metrics.n, st.dropped, st.first_seq, st.last_seq)
            n_frames += st.index.n
            dropped += st.dropped
        now = stop_wall or _wall()
        self.file["session/summary"][0] = (now.encode(), stop_wall.encode(), bool(stop_wall), n_frames, dropped,
                                           self.rejected_messages, self.lost_frames,
                                           *(self.logs[k].n for k in ("events", "fused", "biomarkers")),
                                           self.volumes.table.n)  # fmt: skip

    def discard_pending(self) -> int:
        """Drop everything not yet flushed (counted in ``lost_frames``); returns the frames dropped."""
        lost = 0
        for st in self.streams.values():
            lost += st.index.discard()
            st.metrics.discard()
            st.pending_frames.clear()
            for v in st.pending_arrays.values():
                v.clear()
        for t in self.logs.values():
            t.discard()
        self.volumes.discard()
        self.lost_frames += lost
        self.pending_bytes = 0
        return lost

    def flush(self, stop_wall: str = "") -> dict:
        """Commit every pending row and return ``committed``, in two steps, each ending with an HDF5
        flush and an fsync: first the pixels, arrays, JSON bytes and table rows; then the row counts,
        written in place into the summaries (the commit record: readers of a file whose writer died
        count no row past them, so rows of a flush cut short by a crash or a write error stay out).
        ``stop_wall`` marks the part closed. Nothing to commit and no ``stop_wall``: nothing is
        written. RecordingError ``disk_full``, before anything is written, when the disk (or the
        process's file size limit) has no room for the pending frames plus RESERVE_BYTES."""
        tables = [t for st in self.streams.values() for t in (st.index, st.metrics)] + [*self.logs.values(), self.volumes.table]
        if not stop_wall and self.lost_frames == self._lost_recorded and not any(t.pending for t in tables):
            return self.committed
        room = room_bytes(self.path)
        if self.pending_bytes and self.pending_bytes + RESERVE_BYTES > room:
            raise RecordingError(f"{self.path}: {room} bytes of room left, the next flush needs "
                                 f"{self.pending_bytes} + {RESERVE_BYTES} reserved", reason="disk_full")  # fmt: skip
        for st in self.streams.values():
            st.index.commit(st.write_frames)
            st.metrics.commit(st.write_arrays)
        for t in self.logs.values():
            t.commit()
        self.volumes.table.commit(self.volumes.write_voxels)
        self.pending_bytes = 0
        self._sync()
        self._write_summaries(stop_wall)
        self._sync()
        self._lost_recorded = self.lost_frames
        for sid, st in self.streams.items():
            self.committed["frames"][sid] = st.index.n
            self.committed["metrics"][sid] = st.metrics.n
        for name, t in self.logs.items():
            self.committed[name] = t.n
        self.committed["volumes"] = self.volumes.table.n
        return self.committed

    def _sync(self) -> None:
        self.file.flush()
        if self._fsync:
            os.fsync(self.file.id.get_vfd_handle())

    def close(self) -> None:
        """Final flush with ``stop_wall`` and ``closed`` set, then close. If the flush fails, its
        error is raised and the file is left open for :meth:`abandon` (closing it normally would
        write metadata pointing past the failed write)."""
        if self.closed:
            return
        self.flush(stop_wall=_wall())
        self.closed = True
        self.file.close()

    def abandon(self) -> None:
        """Give up after a write error, changing the file no more: its descriptor is replaced by
        /dev/null (writes discarded, so HDF5 can close without errors) before HDF5 closes it, and
        the file stays as the last flush left it (closing normally would write metadata pointing
        past the failed write)."""
        if self.closed:
            return
        self.closed = True
        try:
            null = os.open(os.devnull, os.O_RDWR)
            try:
                os.dup2(null, self.file.id.get_vfd_handle())
            finally:
                os.close(null)
        except Exception:  # no descriptor to fence (file already closed by HDF5)
            pass
        hook, sys.unraisablehook = sys.unraisablehook, lambda *_: None  # handles failing to close, by design
        try:
            self.streams, self.logs, self.volumes = {}, {}, None  # drop every dataset handle before the file
            gc.collect()
            self.file.close()
        except Exception:  # the writes HDF5 attempts on close fail by design
            pass
        finally:
            sys.unraisablehook = hook
