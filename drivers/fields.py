"""Per-frame fields a source sends beside the pixels (PLUS frame fields, OpenIGTLink metadata),
sorted into what a :class:`~mmstream.messages.Frame` carries.

* ``<From>To<To>Transform`` with 16 finite numbers -> ``transforms["<from>_to_<to>"]`` (4x4 row-major),
  unless ``<From>To<To>TransformStatus`` says ``INVALID`` (then left out: a stale matrix is unknown,
  not a position; counted by the caller under ``invalid_transforms``);
* a single finite number -> ``annotations``;
* any other text -> ``metadata`` (verbatim, at most 256 characters).

Keys are made identifiers (``[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}``); fields beyond the frame's limits
(16 transforms, 32 annotations, 32 metadata) are dropped and counted as ``fields_dropped``.
"""

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

MAX_TRANSFORMS = 16
MAX_ANNOTATIONS = 32
MAX_METADATA = 32
MAX_TEXT = 256

_BAD = re.compile(r"[^A-Za-z0-9_.:-]+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def identifier(name: str) -> str | None:
    """``name`` as a message identifier (bad characters -> ``_``, at most 64), None when nothing is left."""
    key = _BAD.sub("_", name).strip("_.:-")[:64]
    return key or None


def snake(name: str) -> str:
    """``ProbeToTracker`` -> ``probe_to_tracker``."""
    return _CAMEL.sub("_", name).lower()


def matrix16(value) -> tuple[float, ...] | None:
    """16 finite floats from text ``"a b c ..."`` or a (nested) sequence; None otherwise."""
    try:
        vals = [float(v) for v in value.split()] if isinstance(value, str) else [float(v) for row in value for v in row]
    except (TypeError, ValueError):
        return None
    if len(vals) != 16 or not all(math.isfinite(v) for v in vals):
        return None
    return tuple(vals)


@dataclass
class FrameFields:
    transforms: dict[str, tuple[float, ...]] = field(default_factory=dict)
    annotations: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    invalid_transforms: int = 0
    dropped: int = 0

    def _add(self, store: dict, limit: int, name: str, value) -> None:
        key = identifier(name)
        if key is None or len(store) >= limit:
            self.dropped += 1
        else:
            store[key] = value

    def add_transform(self, name: str, matrix: tuple[float, ...]) -> None:
        self._add(self.transforms, MAX_TRANSFORMS, snake(name), matrix)

    def add_number(self, name: str, value: float) -> None:
        self._add(self.annotations, MAX_ANNOTATIONS, name, value)

    def add_text(self, name: str, value: str) -> None:
        self._add(self.metadata, MAX_METADATA, name, value[:MAX_TEXT])


def sort_fields(raw: Mapping[str, object], *, prefix: str = "", into: FrameFields | None = None) -> FrameFields:
    """Sort name -> value fields (text or numbers) as the module docstring says; ``prefix`` is put
    before annotation and metadata keys (e.g. ``"igtl."``). ``into``: fields the driver set itself,
    which count against the limits first."""
    out = FrameFields() if into is None else into
    suffix = "TransformStatus"
    status = {k[: -len(suffix)]: str(v).strip().upper() for k, v in raw.items() if k.endswith(suffix)}
    for name, value in sorted(raw.items()):
        if name.endswith("TransformStatus"):
            continue
        if identifier(name) is None:  # nothing usable in the name itself
            out.dropped += 1
            continue
        if name.endswith("Transform"):
            base = name[: -len("Transform")]
            mat = matrix16(value)
            if status.get(base) == "INVALID":
                out.invalid_transforms += 1
            elif mat is not None:
                out.add_transform(base, mat)
            else:
                out.add_text(prefix + name, str(value))
            continue
        number = _number(value)
        if number is not None:
            out.add_number(prefix + name, number)
        else:
            out.add_text(prefix + name, str(value))
    return out


def _number(value) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None
