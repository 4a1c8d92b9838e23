"""Service configuration: a TOML file, overridable by ``MMSTREAM_*`` environment variables.

Sections are keyed by node (``[ingest]``, ``[analyzer]``), endpoints by role. Nested keys in the
environment use ``__``: ``MMSTREAM_ENDPOINTS__METRICS=tcp://127.0.0.1:6000``. Every key carries its
unit in its name. ``mmstream config validate FILE`` checks a file; ``schemas/config.schema.json``
describes it.
"""

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from mmstream.errors import ConfigError
from mmstream.messages import ClinicalContext, Identifier, Metric, Roi
from mmstream.transport import check_endpoint

_METRICS_ALL: tuple[Metric, ...] = ("echogenicity", "csa", "thickness", "quality")


def _loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (servers bound there need no access control)."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Endpoints(_Section):
    """Where the service listens. ``tcp://127.0.0.1:0`` style ports: use ``:*`` for a random port."""

    ingest: str = "tcp://127.0.0.1:5555"
    metrics: str = "tcp://127.0.0.1:5556"
    control: str = "tcp://127.0.0.1:5557"

    @field_validator("ingest", "metrics", "control")
    @classmethod
    def _valid(cls, v: str) -> str:
        try:
            return check_endpoint(v)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None


class Security(_Section):
    """CURVE keys (``mmstream keys DIR``); required to bind beyond loopback."""

    server_secret_key_file: Path | None = None
    allowed_clients_dir: Path | None = None


class IngestSection(_Section):
    max_fps_per_stream: Annotated[float, Field(gt=0)] = 1000.0
    burst_frames: Annotated[int, Field(ge=1)] = 60
    max_frame_rows: Annotated[int, Field(ge=16, le=16384)] = 4096
    max_frame_cols: Annotated[int, Field(ge=16, le=16384)] = 4096
    queue_messages: Annotated[int, Field(ge=1, le=100000)] = 256
    max_streams: Annotated[int, Field(ge=1, le=4096)] = 64
    stream_idle_s: Annotated[float, Field(gt=0)] = 60.0


class AnalyzerSection(_Section):
    """``every_frame``: analyse every accepted frame, the analyzer pushing back on ingest and ingest
    on the sources when it falls behind (offline re-analysis of recordings, where every frame's
    metrics are wanted). Off (the default, the live path): each stream's newest frame is analysed
    and the skipped ones are counted, so latency stays bounded when analysis is slower than the
    frame rate."""

    workers: Annotated[int, Field(ge=1, le=16)] = 1
    metrics: tuple[Metric, ...] = _METRICS_ALL
    every_frame: bool = False


class StreamSection(_Section):
    """Initial settings of one stream (the control endpoint changes them live)."""

    seed_rc: tuple[float, float] | None = None
    roi: Roi | None = None  # checked as set_roi checks it (an inverted or empty ROI would refuse every frame)
    metrics: tuple[Metric, ...] | None = None
    clinical: ClinicalContext = ClinicalContext()


class SourceSection(_Section):
    """A source the service starts itself (``mmstream serve``): driver name and its options."""

    driver: Identifier
    stream_id: Identifier
    fps: Annotated[float, Field(gt=0, le=2000)] = 30.0
    options: dict[str, float | int | str | bool] = Field(default_factory=dict)


class IgtlOutputSection(_Section):
    """OpenIGTLink server sending the live metrics (STRING) and CSA centroids (POINT), e.g. to
    3D Slicer (``docs/sources.md``). OpenIGTLink has no encryption or authentication: a host beyond
    loopback needs ``allow_remote = true``."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 18945  # 0: a random free port
    allow_remote: bool = False
    string_device: Annotated[str, Field(min_length=1, max_length=20, pattern=r"^[ -~]+$")] = "mmstream_metrics"
    point_device: Annotated[str, Field(min_length=1, max_length=20, pattern=r"^[ -~]+$")] = "mmstream_csa"
    event_device: Annotated[str, Field(min_length=1, max_length=20, pattern=r"^[ -~]+$")] = "mmstream_event"
    max_clients: Annotated[int, Field(ge=1, le=64)] = 8
    client_queue_messages: Annotated[int, Field(ge=1, le=10000)] = 64

    @model_validator(mode="after")
    def _loopback_unless_allowed(self):
        loopback = _loopback_host(self.host)
        if self.enabled and not loopback and not self.allow_remote:
            raise ValueError(f"igtl_output.host {self.host!r} is beyond loopback and OpenIGTLink is unencrypted: "
                             "set igtl_output.allow_remote = true to accept that")
        return self


class WebSection(_Section):
    """The bedside live view (``docs/webview.md``): HTTP and websocket server inside the service.

    Bound beyond loopback it requires ``token`` (at least 16 characters; the page asks for it once,
    or takes it from the URL fragment ``#token=...``, which browsers never send to the server);
    with ``tls_cert_file`` and ``tls_key_file`` it serves https and wss.
    """

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8765  # 0: a random free port
    token: SecretStr | None = None
    stream_id: Identifier | None = None  # stream shown first (default: the first one seen)
    jpeg_quality: Annotated[int, Field(ge=30, le=100)] = 80
    max_message_bytes: Annotated[int, Field(ge=256, le=65536)] = 4096  # larger client messages close the socket
    max_clients: Annotated[int, Field(ge=1, le=64)] = 8
    control_client_secret_key_file: Path | None = None  # CURVE client key for the control endpoint, if secured
    tls_cert_file: Path | None = None  # PEM certificate chain: serve https/wss (give both or neither)
    tls_key_file: Path | None = None

    @model_validator(mode="after")
    def _token_beyond_loopback(self):
        if self.token is not None and len(self.token.get_secret_value().strip()) < 16:
            raise ValueError("web.token must be at least 16 characters (not counting surrounding blanks)")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("web.tls_cert_file and web.tls_key_file go together")
        loopback = _loopback_host(self.host)
        if self.enabled and not loopback and self.token is None:
            raise ValueError(f"web.host {self.host!r} is beyond loopback: set web.token (or MMSTREAM_WEB__TOKEN)")
        return self


class _VolumeScp(_Section):
    """DICOM Storage SCP (``docs/volumes.md``). Beyond loopback it requires an AE-title allow-list."""

    enabled: bool = False
    ae_title: Annotated[str, Field(pattern=r"^[A-Za-z0-9_ -]{1,16}$")] = "MMSTREAM"
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 11112  # 0: a random free port
    allowed_calling_aets: tuple[Annotated[str, Field(pattern=r"^[A-Za-z0-9_ -]{1,16}$")], ...] = ()
    store_dir: Path = Path("dicom-store")
    max_object_mb: Annotated[float, Field(gt=0)] = 512.0
    series_idle_s: Annotated[float, Field(gt=0)] = 5.0
    assemble_on_release: bool = True
    max_associations: Annotated[int, Field(ge=1, le=64)] = 10  # open at once; each a thread holding one object

    @model_validator(mode="after")
    def _allow_list_beyond_loopback(self):
        loopback = _loopback_host(self.host)
        if self.enabled and not loopback and not self.allowed_calling_aets:
            raise ValueError(f"volumes.scp.host {self.host!r} is beyond loopback: set allowed_calling_aets")
        return self


class _VolumeWatch(_Section):
    """Watch folder for NIfTI, MetaImage, NRRD and DICOM files."""

    enabled: bool = False
    folder: Path = Path("volumes-in")
    poll_s: Annotated[float, Field(gt=0, le=3600)] = 1.0
    stable_polls: Annotated[int, Field(ge=1, le=100)] = 2
    series_idle_s: Annotated[float, Field(gt=0)] = 5.0
    max_file_mb: Annotated[float, Field(gt=0)] = 2048.0


class _Deid(_Section):
    """De-identification on ingest: patient name/ID -> study pseudonym (SQLite mapping table)."""

    enabled: bool = False
    mapping_db: Path = Path("pseudonyms.sqlite")
    prefix: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,15}$")] = "P"


class VolumesSection(_Section):
    """Volume sources (``mmstream.volumes``): they push ``volume`` messages to the ingest endpoint."""

    scp: _VolumeScp = _VolumeScp()
    watch: _VolumeWatch = _VolumeWatch()
    deid: _Deid = _Deid()
    max_voxels: Annotated[int, Field(ge=1, le=64 * 1024 * 1024)] = 64 * 1024 * 1024


class BiomarkersSection(_Section):
    """Biomarker fusion and echogenicity references (``docs/biomarkers.md``). The fusion node runs
    when ``store`` is set; live echo z-scores are computed when ``echo_reference`` is set. The
    clinical limits have no defaults: rules needing them stay off until the user sets them."""

    store: Path | None = None  # SQLite biomarker store (mmstream biomarkers import)
    echo_reference: Path | None = None  # reference table (TOML/JSON, mmstream.calibration.ReferenceTable)
    device_calibration: Path | None = None  # grey-level calibration (mmstream.calibration.DeviceCalibration)
    end_stage_fat_fraction: Annotated[float, Field(gt=0, le=1)] | None = None
    stale_after_days: Annotated[float, Field(gt=0)] | None = None
    check_interval_s: Annotated[float, Field(gt=0, le=60)] = 0.5  # how often the store is checked for changes
    store_timeout_s: Annotated[float, Field(ge=0, le=10)] = 0.05  # longest wait on a locked store per check


class RecorderSection(_Section):
    """Session recording to HDF5 (``docs/recording.md``). ``enabled``: record from service start;
    otherwise the ``record_start`` / ``record_stop`` control commands start and stop recordings.
    ``directory`` must exist. ``discover_s``: how long a new recording waits for every configured
    stream's first frame before creating the file, and how long a frame of a new stream or shape
    waits for others before the next file part opens. ``max_stream_parts_per_minute``: a stream
    that needs this many new parts within a minute (its frame shape keeps changing) is no longer
    recorded in this recording, the others are. ``max_parts``: file parts per recording; beyond it
    the recording stops (``too_many_parts``: many streams changing would otherwise fill the disk
    with files)."""

    enabled: bool = False
    directory: Path = Path("recordings")
    flush_interval_s: Annotated[float, Field(gt=0, le=10)] = 0.25
    compression: Literal["none", "gzip", "lzf", "blosc-lz4"] = "none"
    fsync: bool = True
    discover_s: Annotated[float, Field(ge=0, le=10)] = 0.5
    max_stream_parts_per_minute: Annotated[int, Field(ge=1, le=10_000)] = 12
    max_parts: Annotated[int, Field(ge=1, le=100_000)] = 1000

    @field_validator("compression")
    @classmethod
    def _compressor_installed(cls, v: str) -> str:
        if v == "blosc-lz4":  # refused here, not by every file part the recorder would open and lose
            try:
                import hdf5plugin  # noqa: F401
            except ImportError:
                raise ValueError("blosc-lz4 needs the hdf5plugin package: pip install 'mmstream[blosc]'") from None
        return v


class ServiceConfig(BaseSettings):
    """The whole service configuration."""

    model_config = SettingsConfigDict(env_prefix="MMSTREAM_", env_nested_delimiter="__", extra="forbid", frozen=True)

    session_label: Identifier = "session"
    endpoints: Endpoints = Endpoints()
    security: Security = Security()
    ingest: IngestSection = IngestSection()
    analyzer: AnalyzerSection = AnalyzerSection()
    streams: dict[Identifier, StreamSection] = Field(default_factory=dict)
    sources: list[SourceSection] = Field(default_factory=list)
    recorder: RecorderSection = RecorderSection()
    biomarkers: BiomarkersSection = BiomarkersSection()
    volumes: VolumesSection = VolumesSection()
    igtl_output: IgtlOutputSection = IgtlOutputSection()
    web: WebSection = WebSection()
    log_level: Literal["debug", "info", "warning", "error"] = "info"  # stderr logging of mmstream serve / demo

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls)


def load_config(path: Path | None = None, **overrides) -> ServiceConfig:
    """Read ``path`` (TOML; None = defaults only), apply ``MMSTREAM_*`` environment overrides, then
    ``overrides``. Raises ConfigError naming the file and every invalid key."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
    cls = type("_FileServiceConfig", (ServiceConfig,), {"model_config": {**ServiceConfig.model_config, "toml_file": path}})
    try:
        cfg = cls(**overrides)
    except ValidationError as exc:
        where = path or "configuration"
        lines = [f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"{where}: invalid configuration:\n  " + "\n  ".join(lines)) from None
    except (ValueError, RecursionError) as exc:  # TOML syntax (or nesting beyond the parser), a bad MMSTREAM_* value
        if "EnvSettingsSource" in str(exc):
            raise ConfigError(f"MMSTREAM_* environment: cannot parse a value: {exc}") from None
        raise ConfigError(f"{path}: cannot parse TOML: {type(exc).__name__}: {str(exc)[:300]}") from None
    return ServiceConfig.model_validate(cfg.model_dump())
