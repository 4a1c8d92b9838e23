"""Service nodes: plain classes with declared ports and a ``process(port, msg)`` method."""

from mmstream.nodes.analyzer import Analyzer, StreamConfig, StreamSettings
from mmstream.nodes.base import Node, Out, Port
from mmstream.nodes.control import ControlNode
from mmstream.nodes.ingest import Ingest, IngestLimits
from mmstream.nodes.publisher import Publisher

__all__ = [
    "Analyzer", "ControlNode", "Ingest", "IngestLimits", "Node", "Out", "Port", "Publisher", "StreamConfig",
    "StreamSettings",
]  # fmt: skip
