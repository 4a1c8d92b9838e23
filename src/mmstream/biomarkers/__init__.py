"""Biomarker store (SQLite), controlled vocabulary, import and computation from volumes.

``BiomarkerStore`` keeps validated :class:`BiomarkerRecord` values in canonical units;
``read_records`` imports CSV/JSON files row by row; ``compute`` derives biomarkers from volumes.
"""

from mmstream.biomarkers.importer import ReadResult, RowError, read_records
from mmstream.biomarkers.records import BiomarkerRecord, parse_record
from mmstream.biomarkers.store import AddReport, BiomarkerStore
from mmstream.biomarkers.vocabulary import UNIT_FACTORS, VOCABULARY, Biomarker, lookup, to_canonical

__all__ = [
    "AddReport", "Biomarker", "BiomarkerRecord", "BiomarkerStore", "ReadResult", "RowError", "UNIT_FACTORS",
    "VOCABULARY", "lookup", "parse_record", "read_records", "to_canonical",
]  # fmt: skip
