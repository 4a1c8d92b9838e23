"""Service nodes: plain classes with declared ports and a ``process(port, msg)`` method.

Names are imported on first use, so that a process needing only :mod:`mmstream.nodes.base` (the
recorder, tools) does not load the analysis kernels.
"""

import importlib

_MODULE_OF = {
    "Analyzer": "analyzer", "StreamConfig": "analyzer", "StreamSettings": "analyzer", "ControlNode": "control",
    "Ingest": "ingest", "IngestLimits": "ingest", "Node": "base", "Out": "base", "Port": "base", "Publisher": "publisher",
}  # fmt: skip
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f"mmstream.nodes.{_MODULE_OF[name]}"), name)
    raise AttributeError(f"module 'mmstream.nodes' has no attribute {name!r}")
