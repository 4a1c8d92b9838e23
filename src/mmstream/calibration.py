"""Echogenicity reference values, device calibration, z-scores and the three-image protocol.

Two user-supplied files (TOML or JSON, by suffix; format in ``docs/biomarkers.md``, examples in
``examples/``): a :class:`ReferenceTable` (expected value and SD of a biomarker per site, age and
sex, as a mean and SD or as a linear regression) and a :class:`DeviceCalibration` (a linear
grey-level conversion per scanner, probe and preset to the device the reference grey levels were
measured on). mmstream ships no clinical values: a file marked ``example = true`` is refused unless
``allow_example=True`` (tests, demonstrations).

A value is abnormal when its z-score, oriented by the table's ``abnormal`` direction, is at least
the entry's ``abnormal_z`` or, by default, :data:`ABNORMAL_Z` (2 SD), the convention of quantitative
muscle ultrasound (Pillen et al., Muscle Nerve 2008;37:679-693; Arts et al., Muscle Nerve
2010;41:32-41), which is not cited for the other modalities.
"""

import json
import math
import tomllib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mmstream.config import file_problem
from mmstream.errors import ConfigError

ABNORMAL_Z = 2.0
CAPTURE_FRAMES = 3  # three-image protocol: the site's value is the mean of three captured frames
MODEL_FILE_MAX_BYTES = 16 * 1024 * 1024  # a reference table or device calibration (TOML/JSON) at most
Sex = Literal["female", "male"]
Finite = Annotated[float, Field(allow_inf_nan=False)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Device(_Model):
    """An acquisition device as frames name it (``ImagingSettings.scanner/probe/preset``)."""

    scanner: Annotated[str, Field(min_length=1, max_length=64)]
    probe: Annotated[str, Field(min_length=1, max_length=64)]
    preset: Annotated[str, Field(min_length=1, max_length=64)]


class Regression(_Model):
    """``expected = intercept + age_years * age + male * (sex == male)``; spread ``residual_sd``."""

    intercept: Finite
    age_years: Finite = 0.0
    male: Finite = 0.0
    residual_sd: Annotated[float, Field(gt=0, allow_inf_nan=False)]


class ReferenceEntry(_Model):
    """Reference of one biomarker at one site for an age range ``[age_min_years, age_max_years)``
    and sex (``any`` for both): ``mean`` and ``sd``, or ``regression``. ``abnormal`` says which
    direction of deviation indicates disease (``high`` for echo intensity or fat fraction, ``low``
    for a muscle thickness, ``both``): the z-score is oriented so that positive means abnormal.
    ``abnormal_z``: the cut-off of the entry's own source; without one, :data:`ABNORMAL_Z`, the
    muscle-ultrasound convention (cited for echo intensity, not for the other modalities)."""

    biomarker: Annotated[str, Field(min_length=1, max_length=64)]
    site: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_]{0,63}$")]
    sex: Sex | Literal["any"] = "any"
    age_min_years: Annotated[float, Field(ge=0, le=150)] = 0.0
    age_max_years: Annotated[float, Field(gt=0, le=150)] = 150.0
    abnormal: Literal["high", "low", "both"]
    mean: Finite | None = None
    sd: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    regression: Regression | None = None
    abnormal_z: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None

    @model_validator(mode="after")
    def _one_form(self):
        if (self.mean is None) != (self.sd is None):
            raise ValueError("give both mean and sd, or a regression")
        if (self.mean is None) == (self.regression is None):
            raise ValueError("give either mean and sd or a regression, not both or neither")
        if self.age_min_years >= self.age_max_years:
            raise ValueError("age_min_years must be below age_max_years")
        return self

    def expected(self, age_years: float | None, sex: Sex | None) -> tuple[float, float]:
        """(expected value, SD) for this patient."""
        if self.regression is None:
            return self.mean, self.sd
        r = self.regression
        return r.intercept + r.age_years * age_years + r.male * (sex == "male"), r.residual_sd


class ReferenceTable(_Model):
    """A reference-value file. ``source``: the publication or local study the values come from
    (required). ``grey_level_device``: the device echo-intensity references were measured on."""

    example: bool = False
    source: Annotated[str, Field(min_length=3, max_length=1000)]
    grey_level_device: Device | None = None
    entries: tuple[ReferenceEntry, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _no_overlap(self):
        seen: dict[tuple, list[ReferenceEntry]] = {}
        for e in self.entries:
            for other in seen.setdefault((e.biomarker, e.site, e.sex), []):
                if e.age_min_years < other.age_max_years and other.age_min_years < e.age_max_years:
                    raise ValueError(f"overlapping age ranges for {e.biomarker} at {e.site} ({e.sex})")
            seen[(e.biomarker, e.site, e.sex)].append(e)
        return self

    def lookup(self, biomarker: str, site: str, age_years: float | None, sex: Sex | None) -> ReferenceEntry | None:
        """The entry for this patient (a sex-specific entry before an ``any`` one), or None."""
        best = None
        for e in self.entries:
            if e.biomarker != biomarker or e.site != site or e.sex not in ("any", sex):
                continue
            if e.regression is not None and (age_years is None or (e.regression.male and sex is None)):
                continue
            if age_years is None:
                if (e.age_min_years, e.age_max_years) != (0.0, 150.0):
                    continue
            elif not (e.age_min_years <= age_years < e.age_max_years):
                continue
            if best is None or (best.sex == "any" and e.sex != "any"):
                best = e
        return best


class CalibrationEntry(_Model):
    """``calibrated = gain * raw + offset`` for frames of ``device``."""

    device: Device
    gain: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    offset: Finite = 0.0
    measured_on: str | None = None


class DeviceCalibration(_Model):
    """A device-calibration file: conversions of each device's grey levels to ``reference_device``."""

    example: bool = False
    source: Annotated[str, Field(min_length=3, max_length=1000)]
    reference_device: Device
    devices: tuple[CalibrationEntry, ...] = ()

    def convert(self, raw: float, device: Device | None) -> float | None:
        """``raw`` grey level in reference-device grey levels; None for an uncalibrated device."""
        if device == self.reference_device:
            return raw
        for c in self.devices:
            if c.device == device:
                return c.gain * raw + c.offset
        return None


def load_model(path: Path | str, model: type[_Model], allow_example: bool = False, key: str | None = None):
    """Read a :class:`ReferenceTable` or :class:`DeviceCalibration` from TOML or JSON.

    Raises ConfigError naming the file (after ``key``, the configuration key naming it, when given)
    and each invalid key; a file that is not a regular one of at most MODEL_FILE_MAX_BYTES is not
    read (a link to ``/dev/zero`` would be read for ever); an ``example = true`` file is refused
    unless ``allow_example``.
    """
    path = Path(path)
    where = f"{key}: {path}" if key else str(path)
    if why := file_problem(path, MODEL_FILE_MAX_BYTES):
        raise ConfigError(f"{where}: cannot read: {why}")
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read: {exc}") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ConfigError(f"{where}: cannot parse: {type(exc).__name__}: {str(exc)[:300]}") from None
    try:
        obj = model.model_validate(data)
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"{where}: invalid {model.__name__}:\n  " + "\n  ".join(lines)) from None
    if obj.example and not allow_example:
        raise ConfigError(f"{where}: is an example file (example = true), not clinical reference data", reason="example_file")
    return obj


@dataclass(frozen=True)
class ZScore:
    """``z = (value - expected) / sd``; ``oriented`` is positive in the abnormal direction."""

    value: float
    expected: float
    sd: float
    z: float
    oriented: float
    abnormal: bool


def z_score(value: float, entry: ReferenceEntry, age_years: float | None, sex: Sex | None) -> ZScore:
    expected, sd = entry.expected(age_years, sex)
    z = (value - expected) / sd
    oriented = {"high": z, "low": -z, "both": abs(z)}[entry.abnormal]
    return ZScore(value, expected, sd, z, oriented, oriented >= (entry.abnormal_z or ABNORMAL_Z))


@dataclass(frozen=True)
class EchoAssessment:
    """Calibrated echo intensity and its z-score, or why they are unknown (``unavailable``:
    ``no_site``, ``whole_frame``, ``uncalibrated_device``, ``no_reference``)."""

    calibrated_mean: float | None = None
    z: ZScore | None = None
    unavailable: str | None = None


@dataclass(frozen=True)
class EchoReferences:
    """The configured reference table and (optional) device calibration."""

    table: ReferenceTable
    calibration: DeviceCalibration | None = None

    def assess(self, mean: float | None, region: str, site: str | None, age_years, sex, device: Device | None) -> EchoAssessment:
        """Assessment of one echo-intensity mean (grey levels) measured in ``region`` at ``site``."""
        if mean is None or not math.isfinite(mean):
            return EchoAssessment(unavailable="no_value")
        if region == "frame":
            return EchoAssessment(unavailable="whole_frame")  # references describe a muscle region, not a frame
        if site is None:
            return EchoAssessment(unavailable="no_site")
        ref_device = self.table.grey_level_device  # unknown: no frame's grey levels can be matched to the table's
        if ref_device is not None and device == ref_device:
            calibrated = mean
        elif ref_device is not None and self.calibration is not None and self.calibration.reference_device == ref_device:
            calibrated = self.calibration.convert(mean, device)
        else:
            calibrated = None
        if calibrated is None:
            return EchoAssessment(unavailable="uncalibrated_device")
        entry = self.table.lookup("us_echo_intensity", site, age_years, sex)
        if entry is None:
            return EchoAssessment(calibrated_mean=calibrated, unavailable="no_reference")
        return EchoAssessment(calibrated_mean=calibrated, z=z_score(calibrated, entry, age_years, sex))


CAPTURE_WAIT_S = 10.0  # a capture command lapses when its stream analyses no frame within this (s)
CAPTURE_QUEUE = 8  # capture commands waiting per stream, at most


class PendingCaptures:
    """``capture`` commands not yet served, per stream. A capture takes the stream's first frame
    whose analysis started after the command (metrics stamp ``analysis_start`` >= the event's
    ``t_host_s``, one monotonic clock in the service): a metrics message analysed earlier but
    delivered after the command is not the frame the user asked for. A command not served within
    :data:`CAPTURE_WAIT_S` (e.g. on a stream that sends nothing) lapses: it never takes a frame of
    whoever is imaged later. At most :data:`CAPTURE_QUEUE` wait per stream. Not thread-safe (one node)."""

    def __init__(self) -> None:
        self._asked: dict[str, deque] = {}

    def ask(self, stream_id: str, t_host_s: float) -> None:
        self._asked.setdefault(stream_id, deque(maxlen=CAPTURE_QUEUE)).append(t_host_s)

    def waiting(self, stream_id: str) -> int:
        return len(self._asked.get(stream_id, ()))

    def take(self, stream_id: str, stamps: dict) -> bool:
        """True (and one capture served) if the frame of these metrics ``stamps`` is a capture."""
        asked = self._asked.get(stream_id)
        start = stamps.get("analysis_start")  # None: no stamp (e.g. a replayed message): taken
        while asked and start is not None and start - asked[0] > CAPTURE_WAIT_S:  # lapsed
            asked.popleft()
        if not asked:
            self._asked.pop(stream_id, None)
            return False
        if start is not None and start < asked[0]:
            return False
        asked.popleft()
        return True


def capture_mean(values: list[float]) -> float:
    """The site's value under the three-image protocol: the mean of :data:`CAPTURE_FRAMES` captures."""
    if len(values) != CAPTURE_FRAMES:
        raise ValueError(f"the three-image protocol needs {CAPTURE_FRAMES} captures, got {len(values)}")
    return math.fsum(values) / CAPTURE_FRAMES


def load_echo_references(section) -> EchoReferences | None:
    """The references a :class:`~mmstream.config.BiomarkersSection` names (None when it names no
    ``echo_reference``); ConfigError when a file is invalid or an example."""
    if section.echo_reference is None:  # a device_calibration without it is refused by BiomarkersSection
        return None
    table = load_model(section.echo_reference, ReferenceTable, key="biomarkers.echo_reference")
    cal = (None if section.device_calibration is None
           else load_model(section.device_calibration, DeviceCalibration, key="biomarkers.device_calibration"))  # fmt: skip
    return EchoReferences(table, cal)
