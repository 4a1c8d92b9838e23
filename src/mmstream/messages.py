"""Wire message models (contract; see ``docs/protocol.md``).

A message travels as ZeroMQ multipart ``[topic, header, *buffers]``: ``header`` is the UTF-8 JSON of
one of the models below (tagged by ``msg_type``, versioned by ``schema_version``), and each trailing
buffer is a raw C-order array described, in order, by ``header.buffers``. Models are frozen and
reject unknown fields. JSON Schemas of every model are generated into ``schemas/``.

All times: ``t_device_s`` is the source's own clock (seconds, arbitrary origin); ``t_host_s`` and the
``stamps`` values are the host's monotonic clock (``time.monotonic()``, seconds; comparable between
processes of one host only); ``t_wall`` is ISO 8601 UTC.
"""

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

SCHEMA_VERSION = 1

Dtype = Literal["uint8", "uint16", "int16", "int32", "int64", "float32", "float64"]
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]
SpacingSource = Literal[
    "dicom_us_regions", "dicom_pixel_spacing", "igtl_matrix", "metaimage", "plus_config", "config", "simulated",
    "unknown",
]  # fmt: skip
Metric = Literal["echogenicity", "csa", "thickness", "quality"]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
PositiveMm = Annotated[float, Field(gt=0, allow_inf_nan=False)]
SiteName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_]{0,63}$")]  # muscle or nerve, e.g. tibialis_anterior
Seq = Annotated[int, Field(ge=0, le=2**63 - 1)]  # sequence numbers: int64 in session files
Dim = Annotated[int, Field(ge=0, le=2**31 - 1)]  # array dimensions


def _ordered_roi(roi: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    if not (roi[0] < roi[2] and roi[1] < roi[3]):
        raise ValueError("roi must satisfy 0 <= r0 < r1 and 0 <= c0 < c1")
    return roi


Roi = Annotated[tuple[Dim, Dim, Dim, Dim], AfterValidator(_ordered_roi)]  # (r0, c0, r1, c1), half-open, not empty


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)  # NaN fails at the sender


class BufferSpec(_Model):
    """One trailing buffer: a C-order array of ``dtype`` and ``shape``."""

    name: Identifier
    dtype: Dtype
    shape: tuple[Dim, ...] = Field(max_length=4)


class ImagingSettings(_Model):
    """Scanner settings of a frame (each optional: not every source knows them)."""

    depth_mm: PositiveMm | None = None
    gain_db: FiniteFloat | None = None
    frequency_mhz: PositiveMm | None = None
    preset: Annotated[str, Field(max_length=64)] | None = None
    probe: Annotated[str, Field(max_length=64)] | None = None
    scanner: Annotated[str, Field(max_length=64)] | None = None  # device model, keys the grey-level calibration


class ClinicalContext(_Model):
    """What is being imaged. ``patient_id`` is a study pseudonym; it never appears in logs."""

    patient_id: Annotated[str, Field(max_length=64)] | None = None
    site: SiteName | None = None  # as the biomarker store names it
    side: Literal["left", "right", "midline"] | None = None
    plane: Literal["transverse", "longitudinal", "oblique"] | None = None
    age_years: Annotated[float, Field(ge=0, le=150, allow_inf_nan=False)] | None = None  # for reference lookups
    sex: Literal["female", "male"] | None = None  # for reference lookups

    @field_validator("site", mode="before")
    @classmethod
    def _site_name(cls, v):
        """Free text as the store's site name: "M. Tibialis (ant.)" -> "m_tibialis_ant"."""
        return re.sub(r"[^a-z0-9]+", "_", v.lower()).strip("_")[:64] or None if isinstance(v, str) else v


class _Header(_Model):
    schema_version: Literal[1] = SCHEMA_VERSION
    buffers: tuple[BufferSpec, ...] = Field(default=(), max_length=8)


class Frame(_Header):
    """One 2-D B-mode frame; buffer ``image`` is (H, W) uint8.

    ``transforms``: 4x4 row-major matrices by name (``image_to_probe``, ``probe_to_reference``, ...).
    ``annotations``: numbers the source knows about the frame, e.g. a simulator's ground truth
    (``truth_nerve_area_mm2``); they are carried into the frame's metrics message.
    ``metadata``: text fields the source sent with the frame (OpenIGTLink metadata, PLUS frame
    fields), kept verbatim.
    """

    msg_type: Literal["frame"] = "frame"
    stream_id: Identifier
    session_id: Identifier
    seq: Seq
    t_device_s: FiniteFloat | None = None
    t_host_s: FiniteFloat | None = None
    t_wall: Annotated[str, Field(max_length=40)] | None = None
    spacing_mm: tuple[PositiveMm, PositiveMm] | None = None
    spacing_source: SpacingSource = "unknown"
    imaging: ImagingSettings = ImagingSettings()
    clinical: ClinicalContext = ClinicalContext()
    transforms: dict[Identifier, tuple[FiniteFloat, ...]] = Field(default_factory=dict, max_length=16)
    annotations: dict[Identifier, FiniteFloat] = Field(default_factory=dict, max_length=32)
    metadata: dict[Identifier, Annotated[str, Field(max_length=256)]] = Field(default_factory=dict, max_length=32)
    stamps: dict[Identifier, FiniteFloat] = Field(default_factory=dict, max_length=16)

    @model_validator(mode="after")
    def _one_uint8_image(self):
        if len(self.buffers) != 1 or self.buffers[0].name != "image":
            raise ValueError("a frame carries exactly one buffer named 'image'")
        b = self.buffers[0]
        if b.dtype != "uint8" or len(b.shape) != 2:
            raise ValueError(f"frame image must be 2-D uint8, header says {b.dtype} {b.shape}")
        if (self.spacing_mm is None) != (self.spacing_source == "unknown"):
            raise ValueError("spacing_mm must be given exactly when spacing_source is not 'unknown'")
        return self

    @field_validator("transforms")
    @classmethod
    def _transforms_4x4(cls, v):
        for name, values in v.items():
            if len(values) != 16:
                raise ValueError(f"transform {name!r} must hold 16 values (4x4, row-major)")
        return v


class Volume(_Header):
    """A 3-D volume (MRI, PET, CT, 3-D ultrasound) in LPS millimetres; buffer ``voxels`` (K, J, I)."""

    msg_type: Literal["volume"] = "volume"
    volume_id: Identifier
    modality: Annotated[str, Field(max_length=16)]
    spacing_mm: tuple[PositiveMm, PositiveMm, PositiveMm]  # (k, j, i): slice, row, column
    origin_lps_mm: tuple[FiniteFloat, FiniteFloat, FiniteFloat]
    direction_lps: tuple[FiniteFloat, ...] = Field(min_length=9, max_length=9)  # 3x3 row-major, columns i, j, k
    clinical: ClinicalContext = ClinicalContext()
    series_uid: Annotated[str, Field(max_length=64)] | None = None
    source: Annotated[str, Field(max_length=32)] = "unknown"
    rescaled: bool = False

    @model_validator(mode="after")
    def _one_3d_voxels(self):
        if len(self.buffers) != 1 or self.buffers[0].name != "voxels" or len(self.buffers[0].shape) != 3:
            raise ValueError("a volume carries exactly one 3-D buffer named 'voxels'")
        if 0 in self.buffers[0].shape:
            raise ValueError("a volume needs at least one voxel along each axis")
        return self


class EchoSummary(_Model):
    region: Literal["roi", "csa", "frame"]
    mean: float | None
    std: float | None
    n_px: int
    # with a configured reference (mmstream.calibration): reference-device grey level, oriented z-score
    # (positive = abnormal direction), abnormal at z >= 2 (or the reference entry's abnormal_z), or why they are unknown
    calibrated_mean: float | None = None
    z_score: float | None = None
    abnormal: bool | None = None
    z_unavailable: Identifier | None = None


class CsaSummary(_Model):
    seed_rc: tuple[float, float]
    tracked: bool
    area_px: float
    area_mm2: float | None
    perimeter_px: float
    perimeter_mm: float | None
    centroid_rc: tuple[float, float]
    confidence: float


class ThicknessSummary(_Model):
    region_rc: tuple[int, int, int, int]
    thickness_px: float
    thickness_mm: float | None
    confidence: float
    tracked: bool = False  # the lines were followed from the previous frame
    # where a clicked line is held: its point at the column of the click (null: chosen automatically)
    superficial_at_rc: tuple[float, float] | None = None
    deep_at_rc: tuple[float, float] | None = None


class QualitySummary(_Model):
    saturated_fraction: float
    dark_fraction: float
    active_fraction: float | None = None  # null: recorded before it was computed
    thumb_mean_abs_diff: float | None
    duplicate: bool
    frozen: bool
    saturated: bool
    no_contact: bool
    featureless: bool = False


class Metrics(_Header):
    """Metrics of one frame. Buffers (when present): ``histogram`` (256,) int64, ``contour_rc``
    (K, 2) float32, ``superficial_rc`` and ``deep_rc`` (K, 2) float32."""

    msg_type: Literal["metrics"] = "metrics"
    stream_id: Identifier
    session_id: Identifier
    parent: tuple[Identifier, Seq]  # (stream_id, seq) of the frame
    t_device_s: float | None = None
    spacing_mm: tuple[float, float] | None = None
    clinical: ClinicalContext = ClinicalContext()
    echogenicity: EchoSummary | None = None
    csa: CsaSummary | None = None
    thickness: ThicknessSummary | None = None
    quality: QualitySummary | None = None
    annotations: dict[Identifier, float] = Field(default_factory=dict)  # copied from the frame
    stamps: dict[Identifier, float] = Field(default_factory=dict)


class Event(_Header):
    """Something a node wants known: a rejected message, a fault, a state change."""

    msg_type: Literal["event"] = "event"
    node: Identifier
    level: Literal["info", "warning", "error"]
    reason: Identifier
    message: Annotated[str, Field(max_length=2000)]
    stream_id: Identifier | None = None
    seq: Seq | None = None
    t_host_s: float


class Control(_Header):
    """A request to the control endpoint. ``command`` decides which arguments apply:

    ``set_seed`` (seed_rc; None clears), ``set_line`` (line, at_rc: a click on the superficial or
    deep aponeurosis that the thickness line must pass through and stays held to; None releases
    it, line ``both`` releases both at once, and with both released the lines are found
    automatically again), ``set_roi`` (roi; None clears), ``set_metrics`` (metrics),
    ``set_context`` (clinical), ``capture`` (the stream's next frame is one of the site's three
    protocol images, see ``mmstream.calibration``), ``status``, ``ping``, ``record_start`` /
    ``record_stop`` (a new session file per start; ``docs/recording.md``). It carries no buffers.
    """

    msg_type: Literal["control"] = "control"
    command: Literal[
        "set_seed", "set_line", "set_roi", "set_metrics", "set_context", "capture", "status", "ping", "record_start",
        "record_stop",
    ]  # fmt: skip
    stream_id: Identifier | None = None
    seed_rc: tuple[FiniteFloat, FiniteFloat] | None = None
    line: Literal["superficial", "deep", "both"] | None = None
    at_rc: tuple[FiniteFloat, FiniteFloat] | None = None
    roi: Roi | None = None
    metrics: tuple[Metric, ...] | None = None
    clinical: ClinicalContext | None = None

    @model_validator(mode="after")
    def _arguments_fit_command(self):
        if self.buffers:
            raise ValueError("a control message carries no buffers")
        per_stream = {"set_seed", "set_line", "set_roi", "set_metrics", "set_context", "capture"}
        if self.command in per_stream and self.stream_id is None:
            raise ValueError(f"{self.command} needs a stream_id")
        if self.command == "set_line" and self.line is None:
            raise ValueError("set_line needs line ('superficial', 'deep', or 'both' to release both)")
        if self.line == "both" and self.at_rc is not None:
            raise ValueError("set_line with line 'both' only releases (at_rc null)")
        if self.command == "set_metrics" and not self.metrics:
            raise ValueError("set_metrics needs a non-empty metrics list")
        if self.command == "set_context" and self.clinical is None:
            raise ValueError("set_context needs clinical")
        return self


class Reply(_Header):
    """The control endpoint's answer: ``ok``, or ``reason`` and ``message``; ``data`` for status."""

    msg_type: Literal["reply"] = "reply"
    ok: bool
    reason: Identifier | None = None
    message: Annotated[str, Field(max_length=2000)] | None = None
    data: dict = Field(default_factory=dict)


class FusedValue(_Model):
    """One value beside the live image: ``live`` (this frame), ``captured`` (three-image protocol
    mean) or ``stored`` (biomarker store, with its date and age). ``z``: oriented z-score against
    the configured reference (positive = abnormal direction), null without a reference.
    ``confidence``: of a live CSA or thickness, the measurement's own (0..1; null otherwise)."""

    name: Identifier
    source: Literal["live", "captured", "stored"]
    modality: Literal["MRI", "PET", "CT", "US"]
    value: float
    unit: Annotated[str, Field(max_length=16)]
    acquired_on: Annotated[str, Field(max_length=10)] | None = None
    age_days: float | None = None
    stale: bool | None = None  # null: no staleness limit configured
    tracer: Annotated[str, Field(max_length=32)] | None = None
    z: float | None = None
    abnormal: bool | None = None
    confidence: float | None = None


class BiopsyCandidate(_Model):
    """One site of the patient in biopsy order (see ``docs/biomarkers.md`` for the rules)."""

    rank: Annotated[int, Field(ge=1)]
    site: Identifier
    side: Literal["left", "right", "midline"] | None = None
    category: Literal["affected", "unknown", "normal", "end_stage"]
    score: float | None = None
    reason: Annotated[str, Field(max_length=500)]


class Fused(_Header):
    """Live measurements of one (patient, site) beside the stored biomarkers, published by the fusion
    node for each metrics message. ``score`` = ``score_formula`` over the inputs named in
    ``score_inputs`` (null when none has a reference); ``flags``: ``no_context``, ``no_biomarkers``,
    ``store_unavailable``, ``stale_biomarkers``, ``disagreement``, ``side_not_set``,
    ``biopsy_ranking_cut``; ``biopsy``: every site of the
    patient, best biopsy target first, sent when it changes and at least once a second per stream
    (null in the messages between: keep the last one received)."""

    msg_type: Literal["fused"] = "fused"
    stream_id: Identifier
    session_id: Identifier
    parent: tuple[Identifier, Seq]
    patient_id: Annotated[str, Field(max_length=64)] | None = None
    site: Annotated[str, Field(max_length=64)] | None = None
    side: Literal["left", "right", "midline"] | None = None
    values: tuple[FusedValue, ...] = Field(default=(), max_length=256)
    captures: Annotated[int, Field(ge=0)] = 0  # protocol images captured so far for this site
    score: float | None = None
    score_formula: Annotated[str, Field(max_length=200)] = ""
    score_inputs: tuple[Identifier, ...] = ()
    flags: tuple[Identifier, ...] = ()
    disagreements: tuple[Annotated[str, Field(max_length=300)], ...] = Field(default=(), max_length=64)
    biopsy: tuple[BiopsyCandidate, ...] | None = Field(default=None, max_length=256)
    stamps: dict[Identifier, float] = Field(default_factory=dict)


Message = Annotated[Frame | Volume | Metrics | Event | Control | Reply | Fused, Field(discriminator="msg_type")]
MESSAGE_TYPES = (Frame, Volume, Metrics, Event, Control, Reply, Fused)
message_adapter: TypeAdapter = TypeAdapter(Message)

