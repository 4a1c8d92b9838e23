"""Series assembly for sources that receive DICOM instances one at a time (SCP, watch folder).

Instances are registered by file path under their SeriesInstanceUID. A series is assembled when it
has been idle for ``idle_s`` seconds, or at once by :meth:`SeriesCollector.flush` (the SCP flushes the
series of an association when the association is released). More instances of a series that was
already published make it pending again; its next volume is assembled from every instance stored,
for ``retain_s`` seconds after its last instance (then the series is forgotten: memory stays bounded).
"""

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from mmstream.errors import MmstreamError
from mmstream.privacy import redact_paths

from .dicom_series import load_dicom_series
from .model import LoadedVolume

log = logging.getLogger("mmstream.volumes")


class SeriesCollector:
    """Collects instance files per series and hands each assembled volume to ``on_volume``.

    ``on_error(series_uid, exc)`` is called when a series cannot be assembled or ``on_volume`` fails
    for it (its files stay on disk; the message names them by :func:`mmstream.privacy.file_tag`);
    the other series are not affected.
    """

    def __init__(self, on_volume: Callable[[LoadedVolume], None], on_error: Callable[[str, MmstreamError], None], *,
                 idle_s: float = 5.0, max_voxels: int = 64 * 1024 * 1024, gap_tolerance: float = 0.01,
                 retain_s: float = 3600.0):  # fmt: skip
        self.on_volume, self.on_error = on_volume, on_error
        self.idle_s, self.max_voxels, self.gap_tolerance, self.retain_s = idle_s, max_voxels, gap_tolerance, retain_s
        self._touched: dict[str, float] = {}  # series -> monotonic time of its last instance
        self._lock = threading.Lock()
        self._files: dict[str, dict[str, Path]] = {}  # series -> SOP instance UID -> path
        self._pending: dict[str, float] = {}  # series -> monotonic time of its last instance
        self._patient: dict[str, str | None] = {}

    def add(self, series_uid: str, sop_uid: str, path: Path, patient_id: str | None = None) -> None:
        with self._lock:
            self._files.setdefault(series_uid, {})[sop_uid] = Path(path)
            self._pending[series_uid] = self._touched[series_uid] = time.monotonic()
            self._patient[series_uid] = patient_id

    def pending(self) -> list[str]:
        with self._lock:
            return list(self._pending)

    def due(self, now: float | None = None) -> list[str]:
        now = time.monotonic() if now is None else now
        with self._lock:
            for s in [s for s, t in self._touched.items() if now - t > self.retain_s and s not in self._pending]:
                del self._files[s], self._touched[s], self._patient[s]
            return [s for s, t in self._pending.items() if now - t >= self.idle_s]

    def known(self) -> int:
        """Series whose instances are still remembered."""
        with self._lock:
            return len(self._files)

    def flush(self, series_uids: list[str] | None = None) -> int:
        """Assemble the given pending series (default: all pending); returns the number published."""
        with self._lock:
            todo = [s for s in (self._pending if series_uids is None else series_uids) if s in self._pending]
            for s in todo:
                del self._pending[s]
            work = [(s, sorted(self._files[s].values()), self._patient.get(s)) for s in todo]
        done = 0
        for series_uid, paths, patient_id in work:
            try:  # building or publishing one series can fail: only that series is refused
                vol = load_dicom_series(paths, max_voxels=self.max_voxels, gap_tolerance=self.gap_tolerance)
                self.on_volume(vol.with_patient(patient_id))
            except Exception as exc:  # a bug must not stop the flusher thread either: reported like a bad series
                why = str(exc) if isinstance(exc, MmstreamError) else f"{type(exc).__name__}: {exc}"
                reason = exc.reason if isinstance(exc, MmstreamError) else "internal_error"
                # the files by a hash: exported names carry the patient's, a received one its SOP instance UID
                self.on_error(series_uid, MmstreamError(redact_paths(why, map(str, paths)), reason=reason))
                continue
            done += 1
        return done


class IdleFlusher(threading.Thread):
    """Flushes a collector's idle series every ``period_s`` until stopped."""

    def __init__(self, collector: SeriesCollector, period_s: float = 0.25):
        super().__init__(name="mmstream-volumes-flush", daemon=True)
        self.collector, self.period_s = collector, period_s
        self._stop_evt = threading.Event()

    def run(self) -> None:
        while not self._stop_evt.wait(self.period_s):
            try:
                due = self.collector.due()
                if due:
                    self.collector.flush(due)
            except Exception:  # flush reports each series' failure; this is a last resort: keep flushing
                log.exception("series flush failed")

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(5)
