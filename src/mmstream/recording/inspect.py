"""What a session file holds: streams, frames, duration, frame rate, drops, metric summaries.

``mmstream inspect FILE [--json] [--follow]``. The file is read in chunks (constant memory) and
incrementally: :class:`Summarizer` remembers how far it has read, so ``--follow`` (SWMR: the file may
be still being written) only reads the rows appended since the previous update.

Durations and frame rates use the source clock ``t_device_s`` where the source gave one, else the
recording host's ``t_host_s`` (which is reported as ``clock``). Drops are the frames missing from
``seq`` gaps (``gap_before`` in the index) plus what the recorder counted as lost or rejected.
Rows the file's commit record counts but that cannot be read (a cut copy, a file cleared with
``h5clear`` after rows were lost) are reported as such (``frames_committed`` > ``frames``); both
counts of one update come from one snapshot of the commit record (taken by the reader's refresh),
so a flush between them is never mistaken for damage.
Volumes are listed by id, version, modality, shape, dtype and spacing (never the patient context
or the series UID their headers carry).
"""

import math
import time
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from mmstream.errors import ReadError
from mmstream.recording.layout import METRICS_COLUMNS
from mmstream.recording.reader import SessionReader

# metric columns summarised (mean, std, min, max over finite values); units from the layout
SUMMARY_COLUMNS = (
    "echo_mean", "echo_std", "csa_area_mm2", "csa_area_px", "csa_perimeter_mm", "csa_confidence",
    "thickness_mm", "thickness_px", "thickness_confidence", "saturated_fraction", "dark_fraction",
)  # fmt: skip
FLAG_COLUMNS = ("q_duplicate", "q_frozen", "q_saturated", "q_no_contact", "q_featureless")  # layouts < 4 lack q_featureless
UNITS = {c.name: c.unit for c in METRICS_COLUMNS}
READ_CHUNK_ROWS = 4096


@contextmanager
def open_session(path):
    """A :class:`SessionReader` whose read failures inside the ``with`` block (HDF5 cannot read an
    object or chunk; a recorded header that is not valid JSON of its model) become
    :class:`ReadError` with reason ``damaged``; a missing file is reason ``not_found``."""
    path = Path(path)
    if not path.exists():
        raise ReadError(f"{path}: no such file", reason="not_found")
    if path.is_dir():
        raise ReadError(f"{path}: is a directory, not a session file", reason="unreadable")
    try:
        with SessionReader(path) as reader:
            yield reader
    except BrokenPipeError:  # our output closed early (`| head`): not the file's fault
        raise
    except (OSError, KeyError, RuntimeError, ValueError, TypeError, IndexError, AttributeError) as exc:  # ValidationError, UnicodeDecodeError are ValueErrors
        raise ReadError(f"{path}: damaged session file: {type(exc).__name__}: {str(exc)[:300]}", reason="damaged") from None


class _Stats:
    """Running count, mean, variance (Chan et al. merge of chunk moments), min, max of finite values."""

    __slots__ = ("n", "mean", "m2", "lo", "hi")

    def __init__(self):
        self.n, self.mean, self.m2, self.lo, self.hi = 0, 0.0, 0.0, math.inf, -math.inf

    def add(self, values: np.ndarray) -> None:
        v = values[np.isfinite(values)].astype(np.float64)
        if v.size == 0:
            return
        n, mean = v.size, float(v.mean())
        m2 = float(((v - mean) ** 2).sum())
        total = self.n + n
        delta = mean - self.mean
        self.m2 += m2 + delta * delta * self.n * n / total
        self.mean += delta * n / total
        self.n = total
        self.lo, self.hi = min(self.lo, float(v.min())), max(self.hi, float(v.max()))

    def result(self) -> dict:
        if self.n == 0:
            return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
        std = math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else 0.0
        return {"n": self.n, "mean": self.mean, "std": std, "min": self.lo, "max": self.hi}


class _StreamState:
    def __init__(self):
        self.frames = self.metrics = self.dropped = self.frames_committed = self.metrics_committed = 0
        self.first_seq = self.last_seq = None
        self.t_first = {"t_device_s": None, "t_host_s": None}
        self.t_last = {"t_device_s": None, "t_host_s": None}
        self.max_interval_s = {"t_device_s": 0.0, "t_host_s": 0.0}
        self.spacing: set = set()
        self.stats = {c: _Stats() for c in SUMMARY_COLUMNS}
        self.flags = Counter()


class Summarizer:
    """Incremental summary of an open session: each :meth:`update` reads only new rows."""

    def __init__(self, reader: SessionReader):
        self.reader = reader
        self._streams: dict[str, _StreamState] = {}
        self._events_seen = 0
        self._events = Counter()

    def _frames(self, sid: str, st: _StreamState) -> None:
        sr = self.reader.stream(sid)
        n = sr.n_frames
        for start in range(st.frames, n, READ_CHUNK_ROWS):
            rows = sr.index(start, min(start + READ_CHUNK_ROWS, n))
            st.first_seq = int(rows["seq"][0]) if st.first_seq is None else st.first_seq
            st.last_seq = int(rows["seq"][-1])
            st.dropped += int(rows["gap_before"].sum())
            for clock in ("t_device_s", "t_host_s"):
                t = rows[clock]
                t = t[np.isfinite(t)]
                if t.size == 0:
                    continue
                prev = st.t_last[clock]
                seq_t = t if prev is None else np.concatenate(([prev], t))
                if seq_t.size > 1:
                    st.max_interval_s[clock] = max(st.max_interval_s[clock], float(np.diff(seq_t).max()))
                if st.t_first[clock] is None:
                    st.t_first[clock] = float(t[0])
                st.t_last[clock] = float(t[-1])
            sp = np.stack([rows["spacing_row_mm"], rows["spacing_col_mm"]], axis=1)
            st.spacing.update(tuple(None if math.isnan(v) else float(v) for v in r) for r in np.unique(sp, axis=0))
        st.frames = n
        st.frames_committed = sr.committed_frames

    def _metrics(self, sid: str, st: _StreamState) -> None:
        sr = self.reader.stream(sid)
        for rows in sr.iter_metrics(chunk=READ_CHUNK_ROWS, start=st.metrics):
            for c in SUMMARY_COLUMNS:
                st.stats[c].add(rows[c])
            for c in FLAG_COLUMNS:
                if c in rows.dtype.names:
                    st.flags[c[2:]] += int(rows[c].sum())
            st.metrics += len(rows)
        st.metrics_committed = sr.committed_metrics

    def _new_events(self) -> None:
        rows = self.reader.event_table(self._events_seen)
        self._events.update(f"{lv.decode()}:{r.decode()}" for lv, r in zip(rows["level"], rows["reason"]))
        self._events_seen += len(rows)

    def update(self) -> dict:
        """Refresh the file (SWMR), read what is new, return the summary (JSON-serialisable)."""
        self.reader.refresh()
        for sid in self.reader.streams:
            st = self._streams.setdefault(sid, _StreamState())
            self._frames(sid, st)
            self._metrics(sid, st)
        self._new_events()
        return self._result()

    def _volumes(self) -> list[dict]:
        return [{"volume_id": r["volume_id"].decode(), "version": int(r["version"]), "modality": r["modality"].decode(),
                 "shape_kji": [int(r[f"shape_{a}"]) for a in "kji"], "dtype": np.dtype(r["dtype"].decode()).name,
                 "spacing_mm": [_finite(r[f"spacing_{a}_mm"]) for a in "kji"], "n_bytes": int(r["voxels_n_bytes"])}
                for r in self.reader.volume_table()]  # fmt: skip

    def _result(self) -> dict:
        attrs = self.reader.attrs
        summ = self.reader.summary()
        streams = {}
        for sid, st in self._streams.items():
            clock = "t_device_s" if st.t_first["t_device_s"] is not None else "t_host_s"
            t0, t1 = st.t_first[clock], st.t_last[clock]
            duration = None if t0 is None else t1 - t0
            streams[sid] = {
                "frames": st.frames,
                "frames_committed": st.frames_committed,
                "shape_rc": list(self.reader.stream(sid).shape),
                "first_seq": st.first_seq,
                "last_seq": st.last_seq,
                "clock": clock,
                "duration_s": duration,
                "frame_rate_fps": (st.frames - 1) / duration if duration else None,
                "max_interval_ms": st.max_interval_s[clock] * 1e3 if st.frames > 1 else None,
                "dropped_frames": st.dropped,
                "spacing_mm": [list(s) if s[0] is not None else None for s in sorted(st.spacing, key=str)],
                "metrics_rows": st.metrics,
                "metrics_committed": st.metrics_committed,
                "metrics": {c: {"unit": UNITS[c], **st.stats[c].result()} for c in SUMMARY_COLUMNS},
                "quality_flags": {k: st.flags[k] for k in (c[2:] for c in FLAG_COLUMNS)},
            }
        return {
            "file": str(self.reader.path),
            "layout_version": int(attrs["layout_version"]),
            "session_id": str(attrs.get("session_id", "")),
            "software_version": str(attrs.get("software_version", "")),
            "start_wall": str(attrs.get("start_wall", "")),
            "stop_wall": summ["stop_wall"] or None,
            "closed": bool(summ["closed"]),
            "lost_frames": int(summ["lost_frames"]),
            "rejected_messages": int(summ["rejected_messages"]),
            "events": dict(sorted(self._events.items())),
            "events_committed": self.reader.committed("events"),
            "volumes": self._volumes(),
            "volumes_committed": self.reader.committed("volumes"),
            "streams": streams,
        }


def summarize(path) -> dict:
    """The summary of the session file ``path`` (see :class:`Summarizer`)."""
    with open_session(path) as reader:
        return Summarizer(reader).update()


def follow(path, emit: Callable[[dict], None], interval_s: float = 1.0, idle_timeout_s: float | None = None) -> dict:
    """Summaries of a file being written, passed to ``emit`` every ``interval_s`` while anything
    changed (frames, metrics, events, volumes), until the writer closes the file cleanly or
    ``idle_timeout_s`` passes without new rows. Returns the last summary."""
    with open_session(path) as reader:
        s = Summarizer(reader)
        last_key, t_change = None, time.monotonic()
        while True:
            summary = s.update()
            key = (tuple((k, v["frames"], v["metrics_rows"]) for k, v in summary["streams"].items()),
                   summary["closed"], sum(summary["events"].values()), len(summary["volumes"]))  # fmt: skip
            if key != last_key:
                emit(summary)
                last_key, t_change = key, time.monotonic()
            if summary["closed"]:
                return summary
            if idle_timeout_s is not None and time.monotonic() - t_change > idle_timeout_s:
                return summary
            time.sleep(interval_s)


def damage(s: dict) -> list[str]:
    """What a summary says the file lost: committed rows that cannot be read."""
    out = [f"stream {sid}: {_count(st[k + '_committed'], what)} committed, {st[n]} readable (file damaged: the "
           "rest is not in the file)" for sid, st in s["streams"].items()
           for k, n, what in (("frames", "frames", "frame"), ("metrics", "metrics_rows", "metrics row"))
           if st[k + "_committed"] > st[n]]  # fmt: skip
    for what, committed, readable in (("volume", s["volumes_committed"], len(s["volumes"])),
                                      ("event", s["events_committed"], sum(s["events"].values()))):  # fmt: skip
        if committed > readable:
            out.append(f"{_count(committed, what)} committed, {readable} readable (file damaged)")
    return out


def _count(n: int, noun: str) -> str:
    """``1 volume``, ``2 volumes``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _finite(v) -> float | None:
    """A recorded number for JSON output: None for NaN or infinity (strict JSON has neither)."""
    v = float(v)
    return v if math.isfinite(v) else None


def spacing_text(volume: dict) -> str:
    """A summary volume's spacing as ``3 x 0.8 x 0.7`` (``?`` where the file gives no finite one)."""
    return " x ".join("?" if x is None else f"{x:g}" for x in volume["spacing_mm"])


def _size(n_bytes: int) -> str:
    """``n_bytes`` in MB, kB or bytes, with at least two significant digits (999,999 bytes is
    ``1.00 MB``, not ``1000.0 kB``)."""
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        digits = 1 if n_bytes >= 10 * scale else 2
        if round(n_bytes / scale, digits) >= 1:
            return f"{n_bytes / scale:.{digits}f} {unit}"
    return f"{n_bytes} bytes"


def _num(v, fmt="{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def format_summary(s: dict) -> str:
    """Human-readable text of a summary."""
    state = "closed cleanly" if s["closed"] else "open (being written) or not closed (writer stopped)"
    lines = [
        f"{s['file']}: session {s['session_id']}  layout v{s['layout_version']}  mmstream {s['software_version']}",
        f"  started {s['start_wall']}  stopped {s['stop_wall'] or '-'}  ({state})",
        f"  lost frames {s['lost_frames']}  rejected messages {s['rejected_messages']}",
    ]
    if s["events"]:
        lines.append("  events: " + ", ".join(f"{k} x{v}" for k, v in s["events"].items()))
    lines += [f"  WARNING: {w}" for w in damage(s)]
    for v in s["volumes"]:
        k, j, i = v["shape_kji"]
        sp = spacing_text(v)
        lines.append(f"volume {v['volume_id']} v{v['version']}: {v['modality']} {k}x{j}x{i} (k, j, i) {v['dtype']}"
                     f"  spacing {sp} mm  {_size(v['n_bytes'])}")  # fmt: skip
    for sid, st in s["streams"].items():
        sp = ", ".join("unknown" if v is None else f"{v[0]:g} x {v[1]:g} mm" for v in st["spacing_mm"]) or "-"
        seqs = "-" if st["first_seq"] is None else f"{st['first_seq']}..{st['last_seq']}"
        lines += [
            f"stream {sid}: {st['frames']} frames {st['shape_rc'][0]}x{st['shape_rc'][1]}  seq {seqs}",
            f"  duration {_num(st['duration_s'])} s ({st['clock']})  frame rate {_num(st['frame_rate_fps'])} fps"
            f"  longest interval {_num(st['max_interval_ms'], '{:.1f}')} ms",
            f"  dropped frames (seq gaps) {st['dropped_frames']}  spacing {sp}  metrics rows {st['metrics_rows']}",
        ]
        flags = "  ".join(f"{k} {v}" for k, v in st["quality_flags"].items())
        lines.append(f"  quality flags (frames): {flags}")
        measured = {name: m for name, m in st["metrics"].items() if m["n"]}
        if measured:
            lines.append(f"  {'metric':<22}{'unit':<12}{'n':>8}{'mean':>11}{'std':>11}{'min':>11}{'max':>11}")
        for name, m in measured.items():
            lines.append(f"  {name:<22}{m['unit'] or '-':<12}{m['n']:>8}"
                         + "".join(f"{_num(m[k], '{:.3f}'):>11}" for k in ("mean", "std", "min", "max")))  # fmt: skip
    return "\n".join(lines)


__all__ = ["Summarizer", "summarize", "follow", "format_summary", "open_session", "damage", "spacing_text"]
