"""Reading biomarker records from CSV, JSON and JSON Lines files, row by row.

A bad row never costs the good ones: each is reported with its line number and reason, the valid
rows are returned. Only a file that cannot be read at all (missing, not UTF-8, no header or one
repeating a column, a JSON syntax error outside any row) raises :class:`~mmstream.errors.ReadError`.

Source files are named by their tag (:func:`mmstream.privacy.file_tag`), never by their name, which
often carries the patient's. CSV text cells a spreadsheet would run as formulas are written with a
leading ``'`` (:func:`csv_text_out`) and read back without it (:func:`csv_text_in`).
"""

import csv
import hashlib
import io
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from mmstream.biomarkers.records import FIELDS, BiomarkerRecord, parse_record
from mmstream.errors import InputError, ReadError
from mmstream.privacy import file_tag

MAX_FILE_BYTES = 256 * 1024 * 1024
REQUIRED = ("patient_id", "site", "modality", "biomarker", "value", "unit", "acquired_on")
MAX_CELL_CHARS = 4096  # a longer cell (or JSON string) refuses its row; no field comes near it
_TAG = re.compile(r"<file [0-9a-f]{8}>")
_FORMULA = re.compile(r"'*[=+\-@\t\r]")  # OWASP CSV injection: what a spreadsheet runs, behind any quotes


def csv_text_out(value):
    """A CSV cell for export: text a spreadsheet would run as a formula (starting with ``=``, ``+``,
    ``-``, ``@``, tab or CR; OWASP "CSV injection") with a leading ``'``, which spreadsheets show
    as text; numbers and other text as they are. :func:`csv_text_in` undoes it exactly."""
    return "'" + value if isinstance(value, str) and _FORMULA.match(value) else value


def csv_text_in(value: str) -> str:
    """A CSV cell as imported: the ``'`` :func:`csv_text_out` put before a formula-like text removed."""
    return value[1:] if value.startswith("'") and _FORMULA.match(value) else value


@dataclass(frozen=True)
class RowError:
    line: int
    reason: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}: {self.message}"


@dataclass
class ReadResult:
    """Valid records with their line numbers, the rows refused, and the file's sha256."""

    records: list[BiomarkerRecord] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    sha256: str = ""


EXAMPLE_MARK = "EXAMPLE ONLY"
"""A row whose ``method`` starts so (the rows of ``examples/``) is refused."""


class _RepeatedKeys:
    """A JSON object naming a key more than once (``json`` would keep the last value silently)."""

    def __init__(self, keys: list[str]):
        self.keys = keys

    def __repr__(self) -> str:
        return f"<object repeating {self.keys}>"


def _object(pairs: list[tuple[str, object]]):
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    return _RepeatedKeys(sorted(k for k, n in Counter(k for k, _ in pairs).items() if n > 1))


# integers are read as floats: no digit limit (json's int raises a bare ValueError past 4300 digits)
_DECODER = json.JSONDecoder(object_pairs_hook=_object, parse_int=float)


def _row(result: ReadResult, line: int, raw, source: str) -> None:
    if isinstance(raw, _RepeatedKeys):
        result.errors.append(RowError(line, "invalid_record", f"key(s) {raw.keys} given more than once"))
        return
    if isinstance(raw, dict):
        long = [str(k)[:40] for k, v in raw.items() if isinstance(v, str) and len(v) > MAX_CELL_CHARS]
        if long:
            result.errors.append(RowError(line, "invalid_record", f"{', '.join(long)}: over {MAX_CELL_CHARS} characters"))
            return
    try:
        if isinstance(raw, dict):
            raw = {**raw}
            given = raw.get("source_file")
            if not given:
                raw["source_file"] = source
            elif isinstance(given, str) and not _TAG.fullmatch(given):
                raw["source_file"] = file_tag(given)  # a name given in the file: its tag too
            if not raw.get("source_sha256"):
                raw["source_sha256"] = result.sha256
        rec = parse_record(raw)
    except InputError as exc:
        result.errors.append(RowError(line, exc.reason, str(exc)))
        return
    if (rec.method or "").startswith(EXAMPLE_MARK):  # examples/ rows: a format, not a patient's values
        result.errors.append(RowError(line, "example_row", f"method says {EXAMPLE_MARK!r}: placeholder, not imported"))
        return
    result.records.append(rec)
    result.lines.append(line)


def _read_csv(text: str, result: ReadResult, source: str) -> None:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise ReadError(f"CSV header lacks column(s) {missing}; columns: {', '.join(FIELDS)}", reason="bad_header")
    repeated = sorted(c for c, n in Counter(header).items() if n > 1)
    if repeated:
        raise ReadError(f"CSV header names column(s) {repeated} more than once", reason="bad_header")
    start = 2
    limit = csv.field_size_limit(MAX_FILE_BYTES)  # a long cell refuses its row (MAX_CELL_CHARS), not the rest
    try:
        for raw in reader:
            if None in raw:  # more cells than header columns
                result.errors.append(RowError(start, "invalid_record", f"{len(raw[None])} cell(s) beyond the header"))
            elif any(v is None for v in raw.values()):
                result.errors.append(RowError(start, "invalid_record", "fewer cells than header columns"))
            else:
                _row(result, start, {k: csv_text_in(v) for k, v in raw.items()}, source)
            start = reader.line_num + 1
    except csv.Error as exc:
        result.errors.append(RowError(start, "invalid_record", f"CSV syntax: {exc}; rest of the file skipped"))
    finally:
        csv.field_size_limit(limit)


def _line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def _next_row_start(text: str, pos: int) -> int:
    """Index of the next line that starts with ``{`` after ``pos`` (resynchronising after a syntax
    error), or -1."""
    i = text.find("\n", pos)
    while i >= 0:
        j = i + 1
        while j < len(text) and text[j] in " \t\r":
            j += 1
        if text[j:j + 1] == "{":
            return j
        i = text.find("\n", j)
    return -1


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _records_array(text: str, i: int) -> int:
    """Index of the ``[`` of the top-level ``records`` array of the JSON object at ``text[i]``: its
    keys are read in order (decoded, so an escaped key is the same key) and the values before it
    skipped; ReadError ``malformed_json`` when the object has none or is malformed before it."""
    i += 1
    while True:
        i = _skip_ws(text, i)
        if text[i:i + 1] in ("}", ""):
            raise ReadError("a JSON object file needs a 'records' array", reason="malformed_json")
        try:
            key, i = _DECODER.raw_decode(text, i)
            i = _skip_ws(text, i)
            if not isinstance(key, str) or text[i:i + 1] != ":":
                raise ReadError(f"JSON object malformed at line {_line_of(text, i)}", reason="malformed_json")
            i = _skip_ws(text, i + 1)
            if key == "records":
                if text[i:i + 1] != "[":
                    raise ReadError("'records' is not an array", reason="malformed_json")
                return i
            _, i = _DECODER.raw_decode(text, i)  # another key's value
        except (json.JSONDecodeError, RecursionError) as exc:
            line = exc.lineno if isinstance(exc, json.JSONDecodeError) else _line_of(text, i)
            raise ReadError(f"JSON syntax error before the records, at line {line}", reason="malformed_json") from None
        i = _skip_ws(text, i)
        if text[i:i + 1] == ",":
            i += 1


def _read_json(text: str, result: ReadResult, source: str) -> None:
    """A JSON array of objects, or an object with a ``records`` array (the first such key); each
    element is one row, and a malformed row is reported while reading resumes at the next one."""
    i = len(text) - len(text.lstrip())
    if text[i:i + 1] == "{":
        i = _records_array(text, i)
    elif text[i:i + 1] != "[":
        raise ReadError("JSON file must hold an array of records or an object with 'records'", reason="malformed_json")
    i += 1
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if i >= len(text):
            raise ReadError("JSON array is not closed", reason="malformed_json")
        if text[i] == "]":
            return
        try:
            raw, end = _DECODER.raw_decode(text, i)
        except (json.JSONDecodeError, RecursionError) as exc:
            if isinstance(exc, RecursionError):  # nested beyond the parser: a row, not the file
                exc = json.JSONDecodeError("row nested too deeply", text, i)
            nxt = _next_row_start(text, exc.pos)
            result.errors.append(RowError(_line_of(text, i), "malformed_json", f"{exc.msg} (line {exc.lineno})"
                                          + ("" if nxt >= 0 else "; rest of the file skipped")))  # fmt: skip
            if nxt < 0:
                return
            i = nxt
            continue
        _row(result, _line_of(text, i), raw, source)
        i = end


def _read_jsonl(text: str, result: ReadResult, source: str) -> None:
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = _DECODER.decode(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            result.errors.append(RowError(n, "malformed_json", getattr(exc, "msg", "row nested too deeply")))
            continue
        _row(result, n, raw, source)


def read_records(path: Path | str) -> ReadResult:
    """Records of a ``.csv``, ``.json`` or ``.jsonl`` file (columns/keys: ``records.FIELDS``;
    ``source_file`` and ``source_sha256`` default to the file's tag (:func:`~mmstream.privacy.file_tag`)
    and hash; a ``source_file`` given by name is stored as its tag)."""
    path = Path(path)
    readers = {".csv": _read_csv, ".json": _read_json, ".jsonl": _read_jsonl}
    if path.suffix.lower() not in readers:
        raise ReadError(f"{path}: unsupported file type (use .csv, .json or .jsonl)", reason="unsupported_format")
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ReadError(f"{path}: larger than {MAX_FILE_BYTES} bytes", reason="too_large")
        data = path.read_bytes()
    except OSError as exc:
        raise ReadError(f"{path}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ReadError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})", reason="not_utf8") from None
    result = ReadResult(sha256=hashlib.sha256(data).hexdigest())
    try:
        readers[path.suffix.lower()](text, result, file_tag(path))
    except ReadError as exc:
        raise ReadError(f"{path}: {exc}", reason=exc.reason) from None
    return result
