"""One typed error hierarchy for mmstream.

Every error raised on purpose by mmstream derives from :class:`MmstreamError` and carries a short
machine-readable ``reason`` (used as a counter key and in events) besides its human message.
"""


class MmstreamError(Exception):
    """Base class of every error mmstream raises on purpose."""

    reason = "error"

    def __init__(self, message: str, *, reason: str | None = None):
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class InputError(MmstreamError, ValueError):
    """Invalid argument or data given to a public function (shape, dtype, range)."""

    reason = "invalid_input"


class ReadError(MmstreamError):
    """A file could not be read or decoded (unreadable, truncated, unsupported format)."""

    reason = "unreadable"


class SpacingError(MmstreamError):
    """Pixel spacing is unknown, ambiguous or invalid where a physical unit was asked for."""

    reason = "spacing"


class ConfigError(MmstreamError):
    """A configuration file or value is invalid."""

    reason = "config"


class CodecError(MmstreamError):
    """A wire message that cannot be decoded: malformed header, unknown type or version, buffers
    that do not match their description, limits exceeded."""

    reason = "malformed"


class StoreError(MmstreamError):
    """The biomarker store cannot be used: ``locked`` (another connection holds a lock), ``corrupt``
    (not an SQLite database or damaged), ``newer_schema`` (written by a newer mmstream),
    ``unavailable`` (cannot be opened)."""

    reason = "store"


class ProtocolError(MmstreamError):
    """A network peer sent bytes that are not a valid message of its protocol (e.g. OpenIGTLink):
    bad header, failed checksum, oversized body, a stalled or closed stream."""

    reason = "protocol"


class RecordingError(MmstreamError):
    """The session recorder cannot record: directory missing or not writable, disk full, write
    failure. ``reason``: ``no_directory``, ``permission_denied``, ``disk_full``, ``write_failed``."""

    reason = "recording"
