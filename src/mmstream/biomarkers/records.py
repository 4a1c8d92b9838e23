"""The biomarker record: one value of one biomarker of one patient's site, with its provenance."""

import datetime as dt
import math
import numbers
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mmstream.biomarkers.vocabulary import VOCABULARY, lookup, to_canonical
from mmstream.errors import InputError
from mmstream.messages import SiteName

PatientId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]
Side = Literal["left", "right", "midline"]
FIELDS = (
    "patient_id", "site", "side", "modality", "biomarker", "value", "unit", "acquired_on",
    "tracer", "method", "source_file", "source_sha256",
)  # fmt: skip
_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(nan|inf|infinity)", re.ASCII | re.IGNORECASE)
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)


class BiomarkerRecord(BaseModel):
    """A stored value, always in the canonical unit of its biomarker (see ``vocabulary``).

    ``patient_id`` is a study pseudonym. ``tracer`` is required for PET biomarkers (e.g. ``FDG``,
    ``11C-PK11195``, ``11C-raclopride``); ``method`` says how the value was obtained (free text:
    reference region of an SUVR, label number, software).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    patient_id: PatientId
    site: SiteName
    side: Side | None = None
    modality: Literal["MRI", "PET", "CT", "US"]
    biomarker: str
    value: Annotated[float, Field(allow_inf_nan=False)]
    unit: str
    acquired_on: dt.date
    tracer: Annotated[str, Field(max_length=32)] | None = None
    method: Annotated[str, Field(max_length=200)] | None = None
    source_file: Annotated[str, Field(max_length=500)] | None = None
    source_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None

    @model_validator(mode="after")
    def _in_vocabulary(self):
        b = VOCABULARY.get(self.biomarker)
        if b is None:
            raise ValueError(f"unknown biomarker {self.biomarker!r}")
        if self.unit != b.unit:
            raise ValueError(f"{self.biomarker} is stored in {b.unit!r}, not {self.unit!r}")
        if not (b.low <= self.value <= b.high):
            raise ValueError(f"{self.biomarker} = {self.value} outside [{b.low}, {b.high}]")
        if self.modality not in b.modalities:
            raise ValueError(f"{self.biomarker} is not measured by {self.modality} (only {', '.join(b.modalities)})")
        if b.needs_tracer and not self.tracer:
            raise ValueError(f"{self.biomarker} needs a tracer (e.g. FDG, 11C-PK11195)")
        return self

    @property
    def key(self) -> tuple:
        """What identifies a measurement: two records with one key and different values conflict."""
        return (self.patient_id, self.site, self.side or "", self.modality, self.biomarker, self.acquired_on.isoformat(),
                self.tracer or "")  # fmt: skip


def _number(v) -> float:
    """``value`` given as a number (not a boolean) or as the text of a decimal number (ASCII digits,
    point, optional exponent: a CSV cell; JSON text is read the same way)."""
    if isinstance(v, str) and _DECIMAL.fullmatch(v.strip()):
        return float(v)
    if isinstance(v, numbers.Real) and not isinstance(v, bool):
        try:
            return float(v)
        except OverflowError:  # an integer beyond float
            raise InputError("value is an integer too large for a float", reason="out_of_range") from None
    raise InputError(f"value {repr(v)[:40]} is not a number", reason="invalid_record")


def parse_record(raw: dict) -> BiomarkerRecord:
    """A record from loosely typed input (a CSV row, a JSON object): empty strings are missing
    values, the value is converted to the canonical unit. ``value``: see :func:`_number`;
    ``acquired_on``: a date or ISO date text (YYYY-MM-DD), never a number (pydantic would read
    one as Unix seconds).

    Raises InputError with reason ``invalid_record``, ``unknown_biomarker``, ``unknown_unit`` or
    ``out_of_range``.
    """
    if not isinstance(raw, dict):
        raise InputError(f"a record must be an object, got {type(raw).__name__}", reason="invalid_record")
    data = {k: (None if isinstance(v, str) and v.strip() == "" else v) for k, v in raw.items()}
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise InputError(f"unknown field(s) {unknown}; fields: {', '.join(FIELDS)}", reason="invalid_record")
    for name in ("biomarker", "value", "unit"):
        if data.get(name) is None:
            raise InputError(f"missing {name}", reason="invalid_record")
    b = lookup(str(data["biomarker"]))
    value = _number(data["value"])
    day = data.get("acquired_on")
    if not (day is None or isinstance(day, dt.date) or isinstance(day, str) and _ISO_DATE.match(day)):
        raise InputError(f"acquired_on {repr(day)[:40]} is not an ISO date (YYYY-MM-DD)", reason="invalid_record")
    if not math.isfinite(value):
        raise InputError(f"value {value} is not finite", reason="out_of_range")
    data["value"] = to_canonical(b.name, value, str(data["unit"]).strip())
    data["unit"] = b.unit
    try:
        rec = BiomarkerRecord.model_validate(data)
    except ValidationError as exc:
        msgs = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}" for e in exc.errors())
        raise InputError(msgs, reason="invalid_record") from None
    if rec.acquired_on > dt.date.today():  # a typo (2062 for 2026) would shadow every real value as the newest
        raise InputError(f"acquired_on {rec.acquired_on} is in the future", reason="future_date")
    return rec
