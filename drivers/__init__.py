"""mmstream frame and volume sources ("drivers"), one package per source.

Sources register under the ``mmstream.drivers`` entry-point group (see ``pyproject.toml``) so that
third-party packages can add their own; :func:`available` lists them and :func:`load` imports one.
"""

import inspect
from importlib.metadata import entry_points

ENTRY_POINT_GROUP = "mmstream.drivers"


def available() -> list[str]:
    """Names of the installed sources, sorted."""
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def load(name: str):
    """The source class registered as ``name``; KeyError naming the known sources otherwise."""
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return ep.load()
    raise KeyError(f"no mmstream source named {name!r}; installed: {', '.join(available())}")


def check_source(name: str, stream_id: str, options: dict) -> None:
    """ConfigError unless the source ``name`` is installed and takes ``fps`` and these options: their
    names, the required ones, and the type of plain bool/int/float/str ones (other values are
    checked when the source starts)."""
    from mmstream.errors import ConfigError

    try:
        cls = load(name)
    except KeyError as exc:
        raise ConfigError(f"source {stream_id!r}: {exc.args[0]}") from None
    except Exception as exc:  # installed but broken, e.g. a dependency missing
        raise ConfigError(f"source {stream_id!r}: driver {name!r} cannot be loaded: {type(exc).__name__}: {exc}") from None
    signature = inspect.signature(cls)
    params = signature.parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(options) - set(params))
        if unknown:
            known = ", ".join(k for k in params if k != "fps")
            raise ConfigError(f"source {stream_id!r} ({name}): unknown option(s) {', '.join(unknown)}; known: {known}")
    try:
        signature.bind(fps=30.0, **options)
    except TypeError as exc:
        raise ConfigError(f"source {stream_id!r} ({name}): {exc}") from None
    for key, value in options.items():  # plain bool/int/float/str options (or None where allowed): the type too
        want = _plain_type(params[key].annotation) if key in params else None
        ok = want is None or type(value) is want or (want is float and type(value) is int)
        if not ok:
            raise ConfigError(f"source {stream_id!r} ({name}): option {key} = {value!r} must be {want.__name__}")


_PLAIN_TYPES = {"bool": bool, "int": int, "float": float, "str": str}


def _plain_type(annotation):
    """bool, int, float or str when the annotation is one of them (``X | None`` too), else None."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", None) or str(annotation)
    parts = [t.strip() for t in text.split("|") if t.strip() not in ("None", "NoneType")]
    return _PLAIN_TYPES.get(parts[0]) if len(parts) == 1 else None
