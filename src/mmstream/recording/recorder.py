"""Recorder node: writes frames, volumes, metrics, events and fusion results of the service to session files.

Attached to the graph on its own copies of the taps (``frames``: every accepted frame and volume;
``bus``: every metrics message and fused message the service publishes; ``bus_events``: its events,
apart, so that an event flood cannot crowd out metrics), lossless unless it falls ``TAP_HWM``
messages behind on one (then counted by the sender: ``status.recording.tap_drops``). A
volume already in the current file part (same id, header and voxels) is counted
(``volumes_duplicate``), not written again; a message of any other type is counted
(``unrecorded_<msg_type>``), not recorded. States::

    idle --start_recording()--> armed --first frames known--> recording --stop_recording()--> idle
                                                                  \\--write error--> failed

``armed`` waits (at most ``discover_s`` after the first frame or volume) until every stream named
in the configuration has sent a frame, so their datasets can be created before SWMR starts, then
opens the file with the streams seen so far (none for volumes only); messages meanwhile are held (at
most ``HELD_MAX``; before any frame or volume the oldest are dropped, and on a stop the events and
metrics held without one are not written: both counted). A frame
of a stream (or shape) that is not in the current file waits, with the later frames and metrics of
its stream, while the others go on in the current part; ``discover_s`` after the first such frame,
but never more than ``flush_interval_s`` (what waits is in memory only), or when ``HELD_MAX``
messages or ``PENDING_MAX_BYTES`` wait, the part is closed and the next one,
``<recording_id>.part<k>.h5``, opened for every stream seen and flushed at once: streams that start
together share one new part (an unknown-stream flood opened a part per stream). A stream gets at
most ``max_stream_parts_per_minute`` new parts in any ``PART_RATE_WINDOW_S``: one more and it is not
recorded (``stream_not_recorded`` event, counted ``streams_not_recorded`` and
``frames_not_recorded``; its frame shape keeps changing: two sources on one stream id), the others
go on; it is recorded again (``stream_recorded_again``) once it needed fewer new parts than that in
the last ``PART_RATE_WINDOW_S`` (a shape change meanwhile counts as a need). At most ``max_parts``
parts: beyond, the recording stops with ``too_many_parts``. A write error (disk full,
permission, directory gone) ends the recording with an error event and status; the live service is
not affected and everything flushed before stays readable.

With a biomarker store, ``/biomarkers`` holds the snapshot of each patient's stored records that
fusion uses: written when the patient's first metrics reach a file part, and again after the store
changed (read through the same :class:`~mmstream.fusion.cache.PatientCache` as the fusion node).
"""

import errno
import json
import os
import re
import threading
import time
from collections import deque
from datetime import datetime, timezone
from pathlib import Path

import mmstream
from mmstream.codec import Decoded
from mmstream.config import RecorderSection
from mmstream.errors import InputError, RecordingError, StoreError
from mmstream.fusion.cache import PatientCache
from mmstream.messages import Event, Frame, Fused, Metrics, Volume
from mmstream.nodes.base import Node, Out, Port
from mmstream.privacy import PATH_OPTIONS, file_tag
from mmstream.recording.writer import SessionWriter

HELD_MAX = 4096  # messages held while armed before the file is opened anyway
PENDING_MAX_BYTES = 64 * 2**20  # flush early when this many pixel or voxel bytes wait (bursts, many probes, a volume)
PART_RATE_WINDOW_S = 60.0  # max_stream_parts_per_minute counts the new parts a stream needed in this window
_ERRNO_REASON = {
    errno.ENOSPC: "disk_full", errno.EFBIG: "disk_full", errno.EDQUOT: "disk_full",
    errno.EACCES: "permission_denied", errno.EPERM: "permission_denied", errno.EROFS: "permission_denied",
    errno.ENOENT: "no_directory", errno.ENOTDIR: "no_directory",
}  # fmt: skip


def _reason(exc: BaseException) -> str:
    """Map an OS/HDF5 error to a recording reason (HDF5 puts ``errno = N`` in its message)."""
    code = getattr(exc, "errno", None)
    if code is None:
        m = re.search(r"errno = (\d+)", str(exc))
        code = int(m.group(1)) if m else None
    return _ERRNO_REASON.get(code, "write_failed")


def _failure(exc: BaseException) -> tuple[str, str, bool]:
    """(message, reason, foreseen) of a recording failure; keeps no reference to the exception."""
    if isinstance(exc, RecordingError):
        return str(exc), exc.reason, True
    return f"{type(exc).__name__}: {exc}", _reason(exc), False


def check_directory(directory: Path) -> Path:
    """The recording directory, or RecordingError (``no_directory``, ``permission_denied``)."""
    d = Path(directory)
    if not d.is_dir():
        what = "is not a directory" if d.exists() else "does not exist (create it first)"
        raise RecordingError(f"recording directory {d} {what}", reason="no_directory")
    if not os.access(d, os.W_OK | os.X_OK):
        raise RecordingError(f"recording directory {d} is not writable", reason="permission_denied")
    return d


class Recorder(Node):
    """The graph node; :meth:`start_recording` / :meth:`stop_recording` are thread-safe (control)."""

    name = "recorder"
    inputs = (Port("frames", capacity=256, policy="block"), Port("bus", capacity=1024, policy="block"),
              Port("bus_events", capacity=1024, policy="block"))  # bus: metrics and fused; events apart (floods)
    outputs = (Port("events"),)

    def __init__(self, options: RecorderSection, session_id: str, config_json: str = "{}",
                 expected_streams: tuple[str, ...] = (), name: str | None = None, biomarkers=None):  # fmt: skip
        """``biomarkers``: a :class:`~mmstream.fusion.cache.PatientCache` of the biomarker store, or
        None (no ``/biomarkers`` snapshots)."""
        super().__init__(name)
        self._biomarkers = biomarkers
        self._snapshots: set[tuple[str, int]] = set()  # (patient, store generation) in the current part
        self.options = options
        self.session_id = session_id
        self.config_json = config_json
        self.expected = set(expected_streams)
        self._rlock = threading.RLock()
        self._state = "idle"
        self._shapes: dict[str, tuple[int, int]] = {}  # stream -> frame shape the next part is created with
        self._held: list[Decoded] = []
        self._t_first_held: float | None = None  # first frame or volume held while armed (the discover_s clock)
        self._last_keys: dict[str, tuple[str, int]] = {}  # stream -> (session, seq) of its last frame in a closed part
        self._writer: SessionWriter | None = None
        self._recording_id: str | None = None
        self._part = 0
        self._files: list[str] = []
        self._t_flush = 0.0
        self._out: list[Out] = []
        self._last_error: dict | None = None
        self._flushed_frames = 0  # committed in closed parts of this recording
        self._flushed_dropped = 0  # dropped (seq gaps) in closed parts of this recording
        self._waiting: dict[str, list[Decoded]] = {}  # stream -> its messages waiting for the next part
        self._t_waiting: float | None = None  # when the first of them began waiting
        self._waiting_bytes = 0
        self._part_times: dict[str, deque] = {}  # stream -> its last max_stream_parts_per_minute needs of a new part
        self._not_recorded: dict[str, tuple] = {}  # stream whose shape changes too often -> its last frame shape
        self.tap_drops = lambda: {}  # messages the taps could not queue for this node (attach_recorder)

    # -- control (any thread) -------------------------------------------------------------------
    def start_recording(self) -> dict:
        """Arm a new recording (a new file); RecordingError when the directory is unusable."""
        with self._rlock:
            if self._state in ("armed", "recording"):
                return self.recording_status()
            try:
                directory = check_directory(self.options.directory)
            except RecordingError as exc:
                self._fail(str(exc), exc.reason, True)
                raise
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            rid, k = f"{self.session_id}_{stamp}", 1
            while any(directory.glob(f"{rid}*.h5")):
                k += 1
                rid = f"{self.session_id}_{stamp}_{k}"
            self._recording_id, self._part, self._files, self._flushed_frames, self._flushed_dropped = rid, 0, [], 0, 0
            self._state, self._held, self._t_first_held, self._last_keys, self._last_error = "armed", [], None, {}, None
            self._shapes = {}  # streams (and their frame shapes) as they come in now, not those gone since
            self._part_times, self._not_recorded = {}, {}
            self._waiting, self._t_waiting, self._waiting_bytes = {}, None, 0
            self._say("info", "recording_armed", f"recording {rid} armed in {directory}")
            return self.recording_status()

    def stop_recording(self) -> dict:
        """Close the current file (writing what is held); returns the recording status."""
        with self._rlock:
            if self._state == "armed" and self._t_first_held is not None:
                self._guard(self._open)  # with the streams seen so far (none if only volumes came)
            elif self._state == "armed" and self._held:  # events, metrics: no frame or volume to open a file for
                self.count("held_not_written", len(self._held))
                self._held = []
            while self._waiting and self._state == "recording":
                self._guard(self._next_part)  # what waits for the next part is written in it
            if self._writer is not None:
                self._close_part()
            if self._state in ("armed", "recording"):
                self._state = "idle"
                self._say("info", "recording_stopped", f"recording {self._recording_id} stopped: "
                          f"{', '.join(Path(f).name for f in self._files) or 'no file written'}")  # fmt: skip
            return self.recording_status()

    def recording_status(self) -> dict:
        with self._rlock:
            w = self._writer
            return {
                "state": self._state,
                "recording": self._state in ("armed", "recording"),
                "recording_id": self._recording_id,
                "path": w.path if w is not None else None,
                "files": list(self._files),
                "frames": self._flushed_frames + (sum(w.committed["frames"].values()) if w is not None else 0),
                "dropped_frames": self._flushed_dropped + (sum(s.dropped for s in w.streams.values()) if w is not None else 0),
                "committed": w.committed if w is not None else None,  # current part, as of the last flush
                "waiting": sum(len(m) for m in self._waiting.values()),  # messages held for the next part
                "not_recorded": sorted(self._not_recorded),  # streams whose frame shape kept changing
                "tap_drops": self.tap_drops(),  # messages lost before the recorder (it fell behind)
                "last_error": self._last_error,
            }

    def status(self) -> dict:
        out = super().status()
        out["recording"] = self.recording_status()
        return out

    # -- node -----------------------------------------------------------------------------------
    def process(self, port: str, msg: Decoded) -> list[Out]:
        with self._rlock:
            h = msg.header
            now = time.monotonic()
            if isinstance(h, Frame) and self._state == "armed":
                if not any(isinstance(m.header, Frame) and m.header.stream_id == h.stream_id for m in self._held):
                    self._shapes[h.stream_id] = tuple(msg.arrays["image"].shape)  # held frames: the first one's
            if self._state == "armed" and self._t_first_held is None and isinstance(h, (Frame, Volume)):
                self._t_first_held = now
            if self._state == "armed":
                if self._t_first_held is None and len(self._held) >= HELD_MAX:  # no frame or volume yet to open a file with
                    self._held.pop(0)
                    self.count("held_dropped")
                self._held.append(msg)
                self._maybe_open(now)
            elif self._state == "recording":
                self._route(msg, now)
                self._maybe_next_part(now)
            else:
                self.count("not_recording")
            return self._take_out()

    def tick(self, now: float) -> list[Out]:
        with self._rlock:
            if self._state == "armed":
                self._maybe_open(now)
            elif self._state == "recording":
                self._maybe_next_part(now)
                if self._state == "recording" and now - self._t_flush >= self.options.flush_interval_s:
                    self._guard(self._flush)
            return self._take_out()

    def close(self) -> None:
        self.stop_recording()
        if self._biomarkers is not None:
            self._biomarkers.close()

    # -- internals (under the lock) -------------------------------------------------------------
    def _take_out(self) -> list[Out]:
        out, self._out = self._out, []
        return out

    def _say(self, level: str, reason: str, message: str) -> None:
        self._out.append(self.event(level, reason, message))

    def _fail(self, message: str, reason: str, foreseen: bool) -> None:
        """End the recording. Called outside ``except`` blocks: a live traceback would keep HDF5
        handles of a fenced file alive past its close (HDF5 crashes when they are freed later)."""
        self.count(f"error_{reason}")
        self._last_error = {"reason": reason, "message": message[:500], "t_wall": datetime.now(timezone.utc).isoformat()}
        self._say("error", f"recording_{reason}", f"recording stopped: {reason}: {message}")
        w, self._writer = self._writer, None
        if w is not None:
            if foreseen:  # no room for the next flush: nothing failed, close cleanly
                w.discard_pending()
                try:
                    w.close()
                except (OSError, RuntimeError):
                    w.abandon()
            else:  # a write failed: touch the file no more
                w.abandon()
            self._flushed_frames += sum(w.committed["frames"].values())
            self._flushed_dropped += sum(st.dropped for st in w.streams.values())
        self._state = "failed" if self._state in ("armed", "recording") else self._state
        self._held, self._waiting, self._t_waiting, self._waiting_bytes = [], {}, None, 0

    def _guard(self, fn, *args) -> None:
        failure = None
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001  h5py raises OSError/RuntimeError; anything else also ends the recording (never a part per frame)
            failure = _failure(exc)
        if failure is not None:
            self._fail(*failure)

    def _maybe_open(self, now: float) -> None:
        if self._t_first_held is None:
            return  # no frame or volume of this recording yet: keep holding (bounded in process)
        waited = now - self._t_first_held >= self.options.discover_s
        if self.expected <= set(self._shapes) or waited or len(self._held) >= HELD_MAX:
            self._guard(self._open)

    def _path(self, part: int) -> Path:
        suffix = "" if part == 1 else f".part{part}"
        return Path(self.options.directory) / f"{self._recording_id}{suffix}.h5"

    def _open(self) -> None:
        if self._part >= self.options.max_parts:
            raise RecordingError(f"{self._part} file parts already: the frame shape or the set of streams keeps "
                                 "changing (two sources on one stream?)", reason="too_many_parts")  # fmt: skip
        self._part += 1
        path = self._path(self._part)
        attrs = {
            "session_id": self.session_id, "recording_id": self._recording_id, "part": self._part,
            "previous_part": self._files[-1] if self._files else "", "software_version": mmstream.__version__,
            "config_json": self.config_json, "start_wall": datetime.now(timezone.utc).isoformat(),
            "start_t_host_s": time.monotonic(),
        }  # fmt: skip
        self._writer = SessionWriter(path, attrs, dict(self._shapes), self.options.compression, self.options.fsync,
                                     follows=self._last_keys)  # fmt: skip
        self._snapshots = set()
        self._files.append(str(path))
        self._state, self._t_flush = "recording", time.monotonic()
        self._say("info", "recording_started", f"recording to {path.name} ({len(self._shapes)} streams)")
        held, self._held = self._held, []
        now = time.monotonic()
        for msg in held:
            self._route(msg, now)  # a held frame of another shape than its stream's first waits for the next part
            if self._state != "recording":
                break

    def _flush(self) -> None:
        self._writer.flush()
        self._t_flush = time.monotonic()

    def _close_part(self) -> None:
        w, self._writer = self._writer, None
        failure = None
        try:
            w.close()
        except (OSError, RuntimeError, RecordingError) as exc:
            failure = _failure(exc)
        if failure is not None:
            self._writer = w
            self._fail(*failure)
            return
        self._flushed_frames += sum(w.committed["frames"].values())
        self._flushed_dropped += sum(st.dropped for st in w.streams.values())
        self._last_keys.update(w.last_keys())

    def _route(self, msg: Decoded, now: float) -> None:
        """Write ``msg`` to the current part, or hold it for the next one: a frame that does not fit
        the part (new stream or shape) and what follows of its stream wait (see the module docstring),
        as do metrics of a stream not in the part (its first frame may come after them: the taps
        of frames and of metrics are read in turn)."""
        h = msg.header
        sid = h.stream_id if isinstance(h, (Frame, Metrics)) else None
        if sid in self._not_recorded and not (isinstance(h, Frame) and self._recorded_again(sid, msg, now)):
            self.count("frames_not_recorded" if isinstance(h, Frame) else "metrics_not_recorded")
            return
        if isinstance(h, Frame):
            fits = self._writer.accepts(sid, msg.arrays["image"].shape)
        else:
            fits = sid is None or sid in self._writer.streams
        if sid not in self._waiting and fits:
            self._write(msg)
            return
        waiting = self._waiting.setdefault(sid, [])
        if isinstance(h, Frame) and not any(isinstance(m.header, Frame) for m in waiting):
            self._shapes[sid] = tuple(msg.arrays["image"].shape)  # the next part is made for this frame
        self._t_waiting = now if self._t_waiting is None else self._t_waiting
        waiting.append(msg)
        self._waiting_bytes += sum(a.nbytes for a in msg.arrays.values())

    def _maybe_next_part(self, now: float) -> None:
        """Open the next part when what waits for it has waited ``discover_s``, but never longer than
        ``flush_interval_s``: it is in memory only until then (a crash loses it), and everything older
        than ``flush_interval_s`` is promised to survive one."""
        if self._t_waiting is None:
            return
        n = sum(len(m) for m in self._waiting.values())
        wait_s = min(self.options.discover_s, self.options.flush_interval_s)
        if now - self._t_waiting >= wait_s or n >= HELD_MAX or self._waiting_bytes >= PENDING_MAX_BYTES:
            self._guard(self._next_part)

    def _needs_part(self, sid: str, now: float) -> bool:
        """Count that ``sid`` needs a new part now; False when it had ``max_stream_parts_per_minute``
        in the last ``PART_RATE_WINDOW_S`` already (refused needs count too: a stream that keeps
        changing stays refused for as long as it keeps changing)."""
        limit = self.options.max_stream_parts_per_minute
        times = self._part_times.get(sid)
        if times is None or times.maxlen != limit:
            times = self._part_times[sid] = deque(times or (), maxlen=limit)
        while times and now - times[0] >= PART_RATE_WINDOW_S:
            times.popleft()
        allowed = len(times) < limit
        times.append(now)
        return allowed

    def _recorded_again(self, sid: str, msg: Decoded, now: float) -> bool:
        """Whether the frame ``msg`` of the unrecorded ``sid`` is recorded: its stream is taken back
        once it needed fewer than ``max_stream_parts_per_minute`` new parts in the last
        ``PART_RATE_WINDOW_S`` (a shape change while unrecorded counts as a need)."""
        shape = tuple(msg.arrays["image"].shape)
        if shape != self._not_recorded[sid]:
            self._not_recorded[sid] = shape
            self._needs_part(sid, now)
            return False
        times = self._part_times[sid]
        while times and now - times[0] >= PART_RATE_WINDOW_S:
            times.popleft()
        if len(times) >= self.options.max_stream_parts_per_minute:
            return False
        del self._not_recorded[sid]
        self.count("streams_recorded_again")
        self._say("info", "stream_recorded_again", f"stream {sid} is recorded again: its frame shape changed "
                  f"fewer than {self.options.max_stream_parts_per_minute} times in the last "
                  f"{PART_RATE_WINDOW_S:g} s")  # fmt: skip
        return True

    def _next_part(self) -> None:
        """Close the current part and open the next for the streams that wait (less those that
        needed too many parts of late), then write what waited."""
        waiting, self._waiting, self._t_waiting, self._waiting_bytes = self._waiting, {}, None, 0
        now = time.monotonic()
        for sid in [sid for sid, msgs in waiting.items() if not any(isinstance(m.header, Frame) for m in msgs)]:
            self.count("unknown_stream", len(waiting.pop(sid)))  # metrics whose stream sent no frame meanwhile
        for sid in list(waiting):
            if not self._needs_part(sid, now):
                self._stop_recording_stream(sid, waiting.pop(sid))
        if not waiting:
            return
        self._close_part()
        if self._state != "recording":
            return
        streams = ", ".join(sorted(waiting)[:5]) + (f" and {len(waiting) - 5} more" if len(waiting) > 5 else "")
        self._say("info", "recording_new_part", f"new stream or frame shape on {streams}: next file part")
        self._open()
        for msgs in waiting.values():
            for msg in msgs:
                if self._state != "recording":
                    return
                self._route(msg, now)
        self._flush()  # what waited is committed at once: it is already up to flush_interval_s old

    def _stop_recording_stream(self, sid: str, dropped: list[Decoded]) -> None:
        """Record ``sid`` no more while its frame shape keeps changing (see :meth:`_recorded_again`)."""
        frames = [m for m in dropped if isinstance(m.header, Frame)]
        self._not_recorded[sid] = tuple(frames[-1].arrays["image"].shape)
        self._shapes.pop(sid, None)
        n_frames = len(frames)
        self.count("streams_not_recorded")
        self.count("frames_not_recorded", n_frames)
        self.count("metrics_not_recorded", len(dropped) - n_frames)
        self._say("warning", "stream_not_recorded", f"stream {sid} had {self.options.max_stream_parts_per_minute} "
                  f"new file parts in the last {PART_RATE_WINDOW_S:g} s and needs one more (its frame shape keeps "
                  "changing: two sources on one stream id?): not recorded until its shape changes less often; "
                  "the other streams are")  # fmt: skip

    def _write(self, msg: Decoded) -> None:
        h = msg.header
        w = self._writer
        failure = None
        try:
            if isinstance(h, Frame):
                w.add_frame(h, msg.arrays["image"])
                self.count("frames")
            elif isinstance(h, Volume):
                self.count("volumes" if w.add_volume(h, msg.arrays["voxels"]) else "volumes_duplicate")
            elif isinstance(h, Metrics):
                w.add_metrics(h, msg.arrays)
                self.count("metrics")
                if self._biomarkers is not None and h.clinical.patient_id:
                    self._snapshot(w, h.clinical.patient_id)
            elif isinstance(h, Event):
                w.add_event(h)
            elif isinstance(h, Fused):
                w.add_fused(h)
            else:
                self.count(f"unrecorded_{h.msg_type}")
            if w.pending_bytes >= PENDING_MAX_BYTES:
                self._flush()
        except InputError as exc:  # metrics of a stream without frames: counted, not recorded
            self.count(exc.reason)
        except (OSError, RuntimeError, RecordingError) as exc:
            failure = _failure(exc)
        if failure is not None:
            self._fail(*failure)

    def _snapshot(self, w: SessionWriter, patient_id: str) -> None:
        """Write the patient's stored records to ``/biomarkers`` unless this part holds them as they
        are (source file paths left out: file names may carry the patient's name; their SHA-256 stays)."""
        try:
            records = self._biomarkers.records(patient_id)
        except StoreError as exc:
            self.count(f"biomarkers_{exc.reason}")
            return
        key = (patient_id, self._biomarkers.generation)
        if key in self._snapshots:
            return
        self._snapshots.add(key)
        w.add_biomarkers(json.dumps({
            "patient_id": patient_id, "store_generation": key[1], "t_host_s": time.monotonic(),
            "records": [r.model_dump(mode="json", exclude={"source_file"}) for r in records],
        }))  # fmt: skip
        self.count("biomarker_snapshots")


def recorder_config_json(config) -> str:
    """The service configuration as stored in ``/session``: secrets masked by pydantic, the sources'
    file names by a hash (they may carry the patient's name)."""
    cfg = json.loads(config.model_dump_json())
    for src in cfg.get("sources", []):
        for key in PATH_OPTIONS:
            if isinstance(src["options"].get(key), str):
                src["options"][key] = file_tag(src["options"][key])
    return json.dumps(cfg, sort_keys=True)


def attach_recorder(graph) -> Recorder:
    """Create the recorder of ``graph.config.recorder``, give it its own copies of the graph's
    frame and bus taps (:meth:`~mmstream.graph.Graph.tap_copy`: what it falls too far behind for is
    counted, ``status.recording.tap_drops``), register ``record_start`` / ``record_stop`` with the
    control node and add ``recording`` to the service status. With ``enabled`` it is armed at once
    (a directory error is reported as an event and in status; the service still starts)."""
    cfg = graph.config
    expected = (*cfg.streams, *(s.stream_id for s in cfg.sources))
    bio = cfg.biomarkers
    cache = None if bio.store is None else PatientCache(bio.store, check_interval_s=bio.check_interval_s,
                                                        timeout_s=bio.store_timeout_s)  # fmt: skip
    rec = Recorder(cfg.recorder, graph.session_id, recorder_config_json(cfg), expected_streams=expected, biomarkers=cache)
    copies = {  # input port -> (tap, topics, the copy's name in status.recording.tap_drops)
        "frames": ("frames", ("",), "frames"),
        "bus": ("bus", ("metrics.", "fused."), "metrics"),
        "bus_events": ("bus", ("event.",), "events"),
    }
    inputs = {port: graph.tap_copy(tap, f"{rec.name}_{what}", topics) for port, (tap, topics, what) in copies.items()}
    rec.tap_drops = lambda: {what: graph.copy_drops(f"{rec.name}_{what}") for _, _, what in copies.values()}
    graph.attach(rec, inputs, {"events": [graph.events_spec()]})
    graph.control.handlers["record_start"] = lambda _req: rec.start_recording()
    graph.control.handlers["record_stop"] = lambda _req: rec.stop_recording()
    graph.status_hooks.append(lambda: {"recording": rec.recording_status()})
    if cfg.recorder.enabled:
        try:
            rec.start_recording()
        except RecordingError:
            pass  # announced as an event, kept in status["recording"]["last_error"]
    return rec
