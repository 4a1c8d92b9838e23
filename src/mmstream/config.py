"""Service configuration: a TOML file, overridable by ``MMSTREAM_*`` environment variables.

Sections are keyed by node (``[ingest]``, ``[analyzer]``), endpoints by role. Nested keys in the
environment use ``__``: ``MMSTREAM_ENDPOINTS__METRICS=tcp://127.0.0.1:6000``. Every key carries its
unit in its name. ``mmstream config validate FILE`` checks a file (:func:`load_config`) and what this
machine must have for it (:func:`preflight`, which ``mmstream serve`` runs before it binds
anything); ``schemas/config.schema.json`` describes it. Paths: ``~`` is the user's home, a relative
path is taken from the working directory.
"""

import ipaddress
import os
import stat
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator, BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator,
)  # fmt: skip
from pydantic_settings import (
    BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource,
)  # fmt: skip

from mmstream.errors import ConfigError, MmstreamError
from mmstream.messages import ClinicalContext, Identifier, Metric, Roi
from mmstream.transport import check_endpoint, is_loopback, read_key_file

_METRICS_ALL: tuple[Metric, ...] = ("echogenicity", "csa", "thickness", "quality")
CONFIG_FILE_MAX_BYTES = 4 * 1024 * 1024  # a service TOML (the reference one is ~6 kB)
TLS_FILE_MAX_BYTES = 1024 * 1024  # a PEM certificate chain or key
MAX_MB = 65536  # upper bound of the *_mb size limits (64 GiB): finite, and far above any object read whole
ENV_NOT_CONFIG = ("MMSTREAM_SHARED_DATA", "MMSTREAM_ARTIFACTS", "MMSTREAM_NOJIT_RUN")  # the project's own (tests, tools)

ConfigPath = Annotated[Path, AfterValidator(Path.expanduser)]
"""A path in the configuration: ``~`` expanded; a relative path is taken from the working directory."""


def file_problem(path: Path, max_bytes: int) -> str | None:
    """Why ``path``, a file the configuration (or a command line) names, cannot be read: missing,
    not a regular file after following links (a device such as ``/dev/zero`` or a FIFO would be
    read for ever or block), unreadable, or over ``max_bytes``; None when it can. Callers say which
    key or option named it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "no such file"
    except OSError as exc:
        return exc.strerror or str(exc)
    if not stat.S_ISREG(st.st_mode):
        kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                 (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"))  # fmt: skip
        return next((name for test, name in kinds if test(st.st_mode)), "not a file") + ", not a regular file"
    if st.st_size > max_bytes:
        return f"{st.st_size:,} bytes, more than the {max_bytes:,} such a file may have"
    if not os.access(path, os.R_OK):
        return "not readable (permission denied)"
    return None


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

    @model_validator(mode="after")
    def _distinct(self):
        """Each endpoint its own address: a second bind of one fails at start ("address in use")."""
        roles = ("ingest", "metrics", "control")
        for i, first in enumerate(roles):
            for role in roles[i + 1 :]:
                if _clash(getattr(self, first), getattr(self, role)):
                    raise ValueError(f"endpoints.{role} {getattr(self, role)} takes the address of endpoints.{first} "
                                     f"{getattr(self, first)}: each endpoint needs its own")  # fmt: skip
        return self


def _clash(a: str, b: str) -> bool:
    """Do endpoints ``a`` and ``b`` bind one address: the same ipc path or inproc name, or one tcp
    port on the same host (``localhost`` is 127.0.0.1) or with a wildcard host (``0.0.0.0``,
    ``[::]``, ``*``: every interface); never for a random port (``:*``)."""
    (sa, _, ra), (sb, _, rb) = a.partition("://"), b.partition("://")
    if sa != "tcp" or sb != "tcp":
        return (sa, ra) == (sb, rb)
    (ha, _, pa), (hb, _, pb) = ra.rpartition(":"), rb.rpartition(":")
    ha, hb = ({"localhost": "127.0.0.1", "0.0.0.0": "*", "[::]": "*"}.get(h, h) for h in (ha, hb))
    return pa == pb != "*" and (ha == hb or "*" in (ha, hb))


class Security(_Section):
    """CURVE keys (``mmstream keys DIR``); required to bind beyond loopback. Set, they apply to
    every external endpoint, loopback and ``ipc://`` included."""

    server_secret_key_file: ConfigPath | None = None
    allowed_clients_dir: ConfigPath | None = None

    @model_validator(mode="after")
    def _both_or_neither(self):
        if self.allowed_clients_dir is not None and self.server_secret_key_file is None:
            raise ValueError("security.allowed_clients_dir is set but security.server_secret_key_file is not: "
                             "without the server key the service would run without CURVE (set both, or neither)")  # fmt: skip
        if self.server_secret_key_file is not None and self.allowed_clients_dir is None:
            raise ValueError("security.server_secret_key_file needs security.allowed_clients_dir (the public keys "
                             "of the clients allowed in; mmstream keys DIR makes both)")  # fmt: skip
        return self


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
    control_client_secret_key_file: ConfigPath | None = None  # CURVE client key for the control endpoint, if secured
    tls_cert_file: ConfigPath | None = None  # PEM certificate chain: serve https/wss (give both or neither)
    tls_key_file: ConfigPath | None = None

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
    store_dir: ConfigPath = Path("dicom-store")
    max_object_mb: Annotated[float, Field(gt=0, le=MAX_MB)] = 512.0
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
    folder: ConfigPath = Path("volumes-in")
    poll_s: Annotated[float, Field(gt=0, le=3600)] = 1.0
    stable_polls: Annotated[int, Field(ge=1, le=100)] = 2
    series_idle_s: Annotated[float, Field(gt=0)] = 5.0
    max_file_mb: Annotated[float, Field(gt=0, le=MAX_MB)] = 2048.0


class _Deid(_Section):
    """De-identification on ingest: patient name/ID -> study pseudonym (SQLite mapping table)."""

    enabled: bool = False
    mapping_db: ConfigPath = Path("pseudonyms.sqlite")
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

    store: ConfigPath | None = None  # SQLite biomarker store (mmstream biomarkers import)
    echo_reference: ConfigPath | None = None  # reference table (TOML/JSON, mmstream.calibration.ReferenceTable)
    device_calibration: ConfigPath | None = None  # grey-level calibration (mmstream.calibration.DeviceCalibration)
    end_stage_fat_fraction: Annotated[float, Field(gt=0, le=1)] | None = None
    stale_after_days: Annotated[float, Field(gt=0)] | None = None
    check_interval_s: Annotated[float, Field(gt=0, le=60)] = 0.5  # how often the store is checked for changes
    store_timeout_s: Annotated[float, Field(ge=0, le=10)] = 0.05  # longest wait on a locked store per check

    @model_validator(mode="after")
    def _calibration_needs_a_reference(self):
        if self.device_calibration is not None and self.echo_reference is None:
            raise ValueError("biomarkers.device_calibration is set but biomarkers.echo_reference is not (the "
                             "calibration converts grey levels for the reference table's z-scores)")  # fmt: skip
        return self


class RecorderSection(_Section):
    """Session recording to HDF5 (``docs/recording.md``). ``enabled``: record from service start;
    otherwise the ``record_start`` / ``record_stop`` control commands start and stop recordings.
    ``directory`` must exist. ``discover_s``: how long a new recording waits for every configured
    stream's first frame before creating the file, and how long a frame of a new stream or shape
    waits for others (at most ``flush_interval_s``) before the next file part opens.
    ``max_stream_parts_per_minute``: new file parts a stream may need in any 60 s; one more (its
    frame shape keeps changing: two sources on one stream id) and it is not recorded until it needed
    fewer in the last 60 s, the others are (60: one depth or zoom step a second for a whole minute,
    more than a person turning a knob; two sources alternating on one id reach it in seconds).
    ``max_parts``: file parts per recording; beyond it
    the recording stops (``too_many_parts``: many streams changing would otherwise fill the disk
    with files)."""

    enabled: bool = False
    directory: ConfigPath = Path("recordings")
    flush_interval_s: Annotated[float, Field(gt=0, le=10)] = 0.25
    compression: Literal["none", "gzip", "lzf", "blosc-lz4"] = "none"
    fsync: bool = True
    discover_s: Annotated[float, Field(ge=0, le=10)] = 0.5
    max_stream_parts_per_minute: Annotated[int, Field(ge=1, le=10_000)] = 60
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
        return init_settings, _Environment(settings_cls), TomlConfigSettingsSource(settings_cls)

    @field_validator("sources")
    @classmethod
    def _one_source_per_stream(cls, v: list[SourceSection]) -> list[SourceSection]:
        first: dict[str, int] = {}
        for i, source in enumerate(v):
            if source.stream_id in first:
                raise ValueError(f"sources {first[source.stream_id]} and {i} both send stream_id {source.stream_id!r}: "
                                 "each source needs a stream of its own (their frames would interleave in one)")  # fmt: skip
            first[source.stream_id] = i
        return v

    @model_validator(mode="after")
    def _secured_where_needed(self):
        curve = self.security.server_secret_key_file is not None
        for role in ("ingest", "metrics", "control"):
            endpoint = getattr(self.endpoints, role)
            if not curve and not is_loopback(endpoint):
                raise ValueError(f"endpoints.{role} {endpoint} is beyond loopback: set [security] server_secret_key_file "
                                 "and allowed_clients_dir (mmstream keys DIR) to bind it")  # fmt: skip
        if curve and self.web.enabled and self.web.control_client_secret_key_file is None:
            raise ValueError("web.control_client_secret_key_file is needed: [security] secures the control endpoint "
                             "the live view sends its commands to (a client key from `mmstream keys`, listed in "
                             "allowed_clients_dir; or web.enabled = false)")  # fmt: skip
        return self


class _Environment(EnvSettingsSource):
    """pydantic-settings' reader of ``MMSTREAM_*`` variables, refusing what it would otherwise
    ignore or alter silently (:func:`_environment_problems`) and naming the variable whose value it
    cannot parse (a RecursionError of a deeply nested value included)."""

    def __call__(self) -> dict:
        if problems := _environment_problems(os.environ):
            raise _problems(problems)
        return super().__call__()

    def prepare_field_value(self, field_name, field, value, value_is_complex):
        try:
            return super().prepare_field_value(field_name, field, value, value_is_complex)
        except (ValueError, RecursionError) as exc:
            own = f"MMSTREAM_{field_name.upper()}"
            names = sorted(n for n in os.environ if n.upper() == own or n.upper().startswith(own + "__")) or [own]
            raise ConfigError(f"{', '.join(names)} (environment): cannot parse the value: "
                              f"{type(exc).__name__}: {str(exc)[:300]}") from None  # fmt: skip


def _environment_problems(environ) -> list[str]:
    """``MMSTREAM_*`` variables pydantic-settings would pass over or misread: a name that is no key of
    the configuration (``MMSTREAM_WEBB__TOKEN``: it would be ignored) unless it is one of the
    project's own variables (ENV_NOT_CONFIG), and a stream id with capitals
    (``MMSTREAM_STREAMS__Probe1__SEED_RC``: names are read lower-case, so it would configure another
    stream, ``probe1``)."""
    out = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith("MMSTREAM_") or upper in ENV_NOT_CONFIG:
            continue
        key, _, rest = name[len("MMSTREAM_") :].partition("__")
        if key.lower() not in ServiceConfig.model_fields:
            out.append(f"{name} (environment): the configuration has no key {key.lower()!r} (MMSTREAM_<SECTION>__<KEY>: "
                       f"{', '.join(ServiceConfig.model_fields)}; other MMSTREAM_ variables: {', '.join(ENV_NOT_CONFIG)})")  # fmt: skip
        elif key.lower() == "streams" and (sid := rest.partition("__")[0]) != sid.lower():
            out.append(f"{name} (environment): variable names are read lower-case, so this would configure stream "
                       f"{sid.lower()!r}, not {sid!r} (stream ids are case-sensitive): set [streams.{sid}] in the file, "
                       "or MMSTREAM_STREAMS as JSON")  # fmt: skip
    return out


def load_config(path: Path | None = None, **overrides) -> ServiceConfig:
    """Read ``path`` (TOML; None = defaults only), apply ``MMSTREAM_*`` environment overrides, then
    ``overrides``. Raises ConfigError naming the file and every invalid key. What this machine must
    have for the configuration (its files and folders) is :func:`preflight`'s."""
    if path is not None:
        path = Path(path).expanduser()
        if why := file_problem(path, CONFIG_FILE_MAX_BYTES):
            raise ConfigError(f"{path}: {why}")
    cls = type("_FileServiceConfig", (ServiceConfig,), {"model_config": {**ServiceConfig.model_config, "toml_file": path}})
    try:
        cfg = cls(**overrides)
    except ValidationError as exc:
        where = path or "configuration"
        lines = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" if e["loc"] else e["msg"].removeprefix("Value error, ")
                 for e in exc.errors()]  # fmt: skip
        raise ConfigError(f"{where}: invalid configuration:\n  " + "\n  ".join(lines)) from None
    except (ValueError, RecursionError) as exc:  # TOML syntax, or nesting beyond the parser
        raise ConfigError(f"{path}: cannot parse TOML: {type(exc).__name__}: {str(exc)[:300]}") from None
    return ServiceConfig.model_validate(cfg.model_dump())


def preflight(cfg: ServiceConfig) -> None:
    """The checks ``mmstream serve`` makes before it binds anything, and ``mmstream config validate``
    with it: what this machine must have for ``cfg``. The CURVE keys load and are private, the
    allowed-clients folder exists, the live view's TLS files load, the echo reference and device
    calibration are valid, the watch folder exists, and every configured source's driver takes its
    options. ConfigError with one line per problem, each naming its key."""
    import mmstream_drivers
    from mmstream.calibration import load_echo_references
    from mmstream.web.http import tls_context

    problems: list[str] = []

    def check(key: str | None, fn, *args) -> None:  # key None: fn's errors name their keys
        try:
            fn(*args)
        except MmstreamError as exc:
            problems.append(str(exc) if key is None or str(exc).startswith(key) else f"{key}: {exc}")

    sec, web = cfg.security, cfg.web
    if sec.server_secret_key_file is not None:
        check(None, read_key_file, sec.server_secret_key_file, "security.server_secret_key_file")
        if not sec.allowed_clients_dir.is_dir():
            problems.append(f"security.allowed_clients_dir: {sec.allowed_clients_dir} is not an existing directory")
        if web.enabled:
            check(None, read_key_file, web.control_client_secret_key_file, "web.control_client_secret_key_file")
    if web.enabled and web.tls_cert_file is not None:
        files = {"web.tls_cert_file": web.tls_cert_file, "web.tls_key_file": web.tls_key_file}
        unusable = [f"{key}: {path}: {why}" for key, path in files.items() if (why := file_problem(path, TLS_FILE_MAX_BYTES))]
        problems += unusable
        if not unusable:
            check("web.tls_cert_file", tls_context, web.tls_cert_file, web.tls_key_file)
    check(None, load_echo_references, cfg.biomarkers)
    watch = cfg.volumes.watch
    if watch.enabled and not watch.folder.is_dir():
        problems.append(f"volumes.watch.folder: {watch.folder} is not an existing directory (create it, or mount the "
                        "share, first)")  # fmt: skip
    for i, source in enumerate(cfg.sources):
        check(f"sources.{i}", mmstream_drivers.check_source, source.driver, source.stream_id, source.options)
    if problems:
        raise _problems(problems)


def _problems(lines: list[str]) -> ConfigError:
    """One error of one line per problem."""
    return ConfigError(lines[0] if len(lines) == 1 else f"{len(lines)} problems:\n  " + "\n  ".join(lines))
