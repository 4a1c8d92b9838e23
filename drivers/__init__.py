"""mmstream frame and volume sources ("drivers"), one package per source.

Sources register under the ``mmstream.drivers`` entry-point group (see ``pyproject.toml``) so that
third-party packages can add their own; :func:`available` lists them and :func:`load` imports one.
"""

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
