"""Optional de-identification on ingest: patient name and ID replaced by a study pseudonym.

The pseudonym of a patient is drawn at random (``prefix`` + 12 hex digits) the first time the
patient's ID is seen, and kept in a local SQLite mapping table (one file, readable by its owner
only) so that later series of the same patient get the same pseudonym. Neither the identifiers nor
the table's contents are ever logged. Besides ``PatientName`` and ``PatientID``, the attributes in
:data:`ALSO_REMOVED` are blanked; this is not a full PS3.15 de-identification profile (dates, UIDs,
free text and burned-in annotations are kept).
"""

import hashlib
import os
import secrets
import sqlite3
import threading
from pathlib import Path

from mmstream.errors import ConfigError

ALSO_REMOVED = ("OtherPatientIDs", "OtherPatientNames", "OtherPatientIDsSequence", "PatientAddress",
                "PatientTelephoneNumbers", "PatientMotherBirthName")  # fmt: skip


class Pseudonymizer:
    """Maps patient identity to a stable pseudonym stored in ``db_path`` (SQLite)."""

    def __init__(self, db_path: Path, prefix: str = "P"):
        self.db_path = Path(db_path)
        self.prefix = prefix
        self._lock = threading.Lock()
        try:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            fresh = not self.db_path.exists()
            self._db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
            if fresh:
                os.chmod(self.db_path, 0o600)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS pseudonyms (patient_key TEXT PRIMARY KEY, patient_id TEXT, "
                "patient_name TEXT, pseudonym TEXT UNIQUE NOT NULL, created TEXT DEFAULT CURRENT_TIMESTAMP)"
            )
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"cannot open the pseudonym table {self.db_path}: {exc}") from None

    @staticmethod
    def _key(patient_id: str, patient_name: str) -> str:
        basis = patient_id.strip() or f"name:{patient_name.strip()}"
        return hashlib.sha256(basis.encode()).hexdigest()

    def pseudonym(self, patient_id: str, patient_name: str = "") -> str:
        """The patient's pseudonym, created on first sight."""
        key = self._key(patient_id, patient_name)
        with self._lock:
            row = self._db.execute("SELECT pseudonym FROM pseudonyms WHERE patient_key = ?", (key,)).fetchone()
            if row:
                return row[0]
            while True:
                pseudo = f"{self.prefix}{secrets.token_hex(6)}"
                try:
                    self._db.execute("INSERT INTO pseudonyms (patient_key, patient_id, patient_name, pseudonym) "
                                     "VALUES (?, ?, ?, ?)", (key, patient_id, patient_name, pseudo))  # fmt: skip
                    return pseudo
                except sqlite3.IntegrityError:  # pseudonym collision (1 in 2**48): draw again
                    continue

    def apply(self, ds) -> str:
        """De-identify a pydicom dataset in place; returns the pseudonym written as name and ID."""
        pseudo = self.pseudonym(str(ds.get("PatientID", "") or ""), str(ds.get("PatientName", "") or ""))
        ds.PatientID = pseudo
        ds.PatientName = pseudo
        for kw in ALSO_REMOVED:
            if kw in ds:
                delattr(ds, kw)
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "mmstream: patient name/ID replaced by study pseudonym"
        return pseudo

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM pseudonyms").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
