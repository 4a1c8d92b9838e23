"""Per-patient cache of stored biomarkers, reloaded when the store changes.

At most every ``check_interval_s`` the cache asks SQLite whether another connection committed
(``PRAGMA data_version``) and whether the file was replaced (inode, size, modification time); if so it forgets what it
holds. A store that cannot be read (locked, corrupt, missing) raises
:class:`~mmstream.errors.StoreError` from :meth:`PatientCache.records`, and is tried again only after
``check_interval_s`` (the live path never waits on it more than ``timeout_s`` per interval); what was
cached before the failure is still served, with ``stale_store`` set.
"""

import os
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from mmstream.biomarkers.records import BiomarkerRecord
from mmstream.biomarkers.store import BiomarkerStore
from mmstream.errors import StoreError


class PatientCache:
    def __init__(self, path: Path | str, check_interval_s: float = 0.5, timeout_s: float = 0.05, max_patients: int = 256,
                 clock: Callable[[], float] = time.monotonic):  # fmt: skip
        self.path = Path(path)
        self.check_interval_s = check_interval_s
        self.timeout_s = timeout_s
        self.max_patients = max_patients
        self._clock = clock
        self._store: BiomarkerStore | None = None
        self._identity: tuple | None = None
        self._data_version: int | None = None
        self._next_check = float("-inf")
        self._by_patient: OrderedDict[str, tuple[BiomarkerRecord, ...]] = OrderedDict()
        self.generation = 0  # grows whenever cached data are dropped
        self.error: StoreError | None = None  # the last failure, until the store works again
        self.loads = 0

    def _file_identity(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)  # size and mtime: a copy over it in place too

    def _drop(self) -> None:
        self._by_patient.clear()
        self.generation += 1

    def _check(self) -> None:
        """Open the store if needed and drop the cache when the store changed (raises StoreError)."""
        identity = self._file_identity()
        if self._store is not None and identity != self._identity:
            self.close()  # replaced or deleted: reopen
        if self._store is None:
            if identity is None:
                raise StoreError(f"{self.path.name}: biomarker store not found", reason="unavailable")
            self._store = BiomarkerStore(self.path, timeout_s=self.timeout_s, create=False)
            self._identity = identity
            self._data_version = None
        dv = self._store.data_version()
        if dv != self._data_version:
            if self._data_version is not None or self._by_patient:
                self._drop()
            self._data_version = dv

    def records(self, patient_id: str) -> tuple[BiomarkerRecord, ...]:
        """The patient's stored records (cached). Raises StoreError only when nothing is cached."""
        now = self._clock()
        if now >= self._next_check:
            self._next_check = now + self.check_interval_s
            try:
                self._check()
                self.error = None
            except StoreError as exc:
                self.error = exc
        cached = self._by_patient.get(patient_id)
        if cached is not None:
            self._by_patient.move_to_end(patient_id)
            return cached
        if self.error is not None or self._store is None:
            raise self.error or StoreError(f"{self.path.name}: biomarker store not open", reason="unavailable")
        try:
            recs = tuple(self._store.query(patient_id=patient_id))
        except StoreError as exc:
            self.error = exc
            raise
        self.loads += 1
        self._by_patient[patient_id] = recs
        if len(self._by_patient) > self.max_patients:
            self._by_patient.popitem(last=False)
        return recs

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
            self._drop()
