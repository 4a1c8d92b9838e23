"""The biomarker store: one SQLite file in WAL mode, schema versioned by ``PRAGMA user_version``.

Records are never overwritten: adding a record whose key (patient, site, side, modality,
biomarker, date, tracer) is already stored is a *duplicate* when the value is the same and a
*conflict* when it differs; both are reported and the stored record is kept. Every SQLite failure
becomes a :class:`~mmstream.errors.StoreError` with reason ``locked``, ``corrupt``,
``newer_schema`` or ``unavailable``.
"""

import datetime as dt
import math
import sqlite3
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mmstream.biomarkers.records import BiomarkerRecord
from mmstream.errors import StoreError

# Each entry upgrades the schema from version i to i + 1; never edit a released entry, append one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE biomarkers (
        id INTEGER PRIMARY KEY,
        patient_id TEXT NOT NULL, site TEXT NOT NULL, side TEXT NOT NULL, modality TEXT NOT NULL,
        biomarker TEXT NOT NULL, value REAL NOT NULL, unit TEXT NOT NULL, acquired_on TEXT NOT NULL,
        tracer TEXT NOT NULL, method TEXT, source_file TEXT, source_sha256 TEXT, imported_at TEXT NOT NULL,
        UNIQUE (patient_id, site, side, modality, biomarker, acquired_on, tracer)
    );
    CREATE INDEX biomarkers_by_patient ON biomarkers (patient_id);
    """,
    """
    CREATE TABLE imports (
        id INTEGER PRIMARY KEY, source_file TEXT, source_sha256 TEXT, imported_at TEXT NOT NULL,
        n_added INTEGER NOT NULL, n_duplicate INTEGER NOT NULL, n_conflict INTEGER NOT NULL,
        n_invalid INTEGER NOT NULL
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
_COLUMNS = ("patient_id", "site", "side", "modality", "biomarker", "value", "unit", "acquired_on", "tracer", "method",
            "source_file", "source_sha256")  # fmt: skip


@dataclass
class AddReport:
    """What :meth:`BiomarkerStore.add` did: records added, duplicates skipped, conflicts refused
    (each conflict: the new record and the stored value it disagrees with)."""

    added: int = 0
    duplicates: list[BiomarkerRecord] = field(default_factory=list)
    conflicts: list[tuple[BiomarkerRecord, float]] = field(default_factory=list)


def _store_error(exc: sqlite3.Error, path: Path) -> StoreError:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return StoreError(f"{path}: database is locked by another connection ({text})", reason="locked")
    if isinstance(exc, sqlite3.DatabaseError) and ("not a database" in text or "malformed" in text):
        return StoreError(f"{path}: not a valid SQLite biomarker store ({text})", reason="corrupt")
    return StoreError(f"{path}: {text}", reason="unavailable")


def _row_to_record(row) -> BiomarkerRecord:
    d = dict(zip(_COLUMNS, row))
    d["side"] = d["side"] or None
    d["tracer"] = d["tracer"] or None
    return BiomarkerRecord.model_validate(d)


class BiomarkerStore:
    """Open (creating or migrating) the store at ``path``.

    ``timeout_s``: how long a statement waits for another connection's lock before failing with
    reason ``locked``. A connection may be used from one thread at a time.
    """

    def __init__(self, path: Path | str, timeout_s: float = 2.0, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise StoreError(f"{self.path}: no biomarker store", reason="unavailable")
        try:
            self._db = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise _store_error(exc, self.path) from None
        try:
            with self._errors():
                self._db.execute("PRAGMA journal_mode=WAL").fetchone()
                self._migrate()
        except BaseException:
            self._db.close()
            raise

    @contextmanager
    def _errors(self):
        try:
            yield
        except sqlite3.Error as exc:
            raise _store_error(exc, self.path) from None

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {version} is newer than this mmstream's ({SCHEMA_VERSION})",
                reason="newer_schema",
            )
        for v in range(version, SCHEMA_VERSION):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for stmt in MIGRATIONS[v].split(";"):
                    if stmt.strip():
                        self._db.execute(stmt)
                self._db.execute(f"PRAGMA user_version = {v + 1}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    @property
    def schema_version(self) -> int:
        with self._errors():
            return self._db.execute("PRAGMA user_version").fetchone()[0]

    def data_version(self) -> int:
        """Changes whenever another connection commits (``PRAGMA data_version``): cheap change check."""
        with self._errors():
            return self._db.execute("PRAGMA data_version").fetchone()[0]

    def add(self, records: Iterable[BiomarkerRecord], n_invalid: int = 0, source: tuple[str, str] | None = None) -> AddReport:
        """Insert ``records`` in one transaction; duplicates and conflicts are reported, not stored.

        ``source`` (file name, sha256) and ``n_invalid`` are logged in the ``imports`` table.
        """
        report = AddReport()
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        with self._errors():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for r in records:
                    row = self._db.execute(
                        "SELECT value FROM biomarkers WHERE patient_id=? AND site=? AND side=? AND modality=? "
                        "AND biomarker=? AND acquired_on=? AND tracer=?", r.key,
                    ).fetchone()  # fmt: skip
                    if row is not None:
                        if math.isclose(row[0], r.value, rel_tol=1e-12, abs_tol=0.0):
                            report.duplicates.append(r)
                        else:
                            report.conflicts.append((r, row[0]))
                        continue
                    d = r.model_dump(mode="json")
                    d["side"], d["tracer"] = d["side"] or "", d["tracer"] or ""
                    self._db.execute(
                        f"INSERT INTO biomarkers ({', '.join(_COLUMNS)}, imported_at) VALUES ({', '.join('?' * len(_COLUMNS))}, ?)",
                        [d[c] for c in _COLUMNS] + [now],
                    )
                    report.added += 1
                self._db.execute(
                    "INSERT INTO imports (source_file, source_sha256, imported_at, n_added, n_duplicate, n_conflict, n_invalid)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (*(source or (None, None)), now, report.added, len(report.duplicates), len(report.conflicts), n_invalid),
                )
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        return report

    def query(self, patient_id: str | None = None, site: str | None = None, biomarker: str | None = None) -> list[BiomarkerRecord]:
        """Stored records matching every given filter, ordered by patient, site, biomarker, date."""
        where, args = [], []
        for col, val in (("patient_id", patient_id), ("site", site), ("biomarker", biomarker)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        sql = f"SELECT {', '.join(_COLUMNS)} FROM biomarkers"
        sql += (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY patient_id, site, side, biomarker, acquired_on"
        with self._errors():
            rows = self._db.execute(sql, args).fetchall()
        return [_row_to_record(r) for r in rows]

    def patients(self) -> list[str]:
        with self._errors():
            return [r[0] for r in self._db.execute("SELECT DISTINCT patient_id FROM biomarkers ORDER BY 1")]

    def close(self) -> None:
        self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
