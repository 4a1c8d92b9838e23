"""Bedside live view: a page showing the live image, its measurements and the service's status,
steering the measurement with clicks (``docs/webview.md``).

:class:`WebView` attaches a :class:`~mmstream.web.live.LiveView` node to a graph before it starts,
then (:meth:`WebView.start`, after the graph started) serves the page and its websocket from a
:class:`~mmstream.web.server.WebServer`; commands from the page reach the service as Control
requests on its control endpoint, like any other client's.
"""

from mmstream.errors import ConfigError
from mmstream.graph import Graph, SocketSpec
from mmstream.transport import Curve
from mmstream.web.control_client import ControlClient
from mmstream.web.live import LiveView
from mmstream.web.server import WebServer

__all__ = ["WebView", "LiveView", "WebServer", "status_lines"]


class WebView:
    """The live view of ``graph`` (configured by ``graph.config.web``); ``fusion``: a fusion node is
    attached (it then decides which frames the three-image captures are)."""

    def __init__(self, graph: Graph, fusion: bool = False):
        self.graph = graph
        self.cfg = graph.config.web
        self.live = LiveView(graph.settings, self.cfg.jpeg_quality, fusion_attached=fusion,
                             idle_s=graph.config.ingest.stream_idle_s)  # fmt: skip
        self.server: WebServer | None = None
        taps = {"frames": SocketSpec("sub", graph.internal["frames"], bind=False),
                "bus": SocketSpec("sub", graph.internal["bus"], bind=False)}  # fmt: skip
        graph.attach(self.live, taps, {"events": [graph.events_spec()]})
        graph.control.captures = True  # the page's three-image captures
        graph.status_hooks.append(self.status)

    def _control_curve(self) -> Curve | None:
        sec = self.graph.config.security
        if sec.server_secret_key_file is None:
            return None
        if self.cfg.control_client_secret_key_file is None:
            raise ConfigError("the control endpoint uses CURVE: set web.control_client_secret_key_file "
                              "(a client key from `mmstream keys`, listed in allowed_clients_dir)")  # fmt: skip
        return Curve(secret_key_file=self.cfg.control_client_secret_key_file, server_key_file=sec.server_secret_key_file)

    def start(self) -> "WebView":
        """Serve (after ``graph.start()``); ConfigError if the address cannot be bound."""
        control = ControlClient(self.graph.endpoints["control"], self.graph.events_spec().endpoint, self._control_curve())
        server = WebServer(self.cfg, self.live, control, self.graph.settings, self.graph.status)
        self.server = server.start()  # closes ``control`` if it fails
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    @property
    def url(self) -> str | None:
        return None if self.server is None else self.server.url

    def status(self) -> dict:
        return {} if self.server is None else self.server.status()


def status_lines(web: dict) -> list[str]:
    """``mmstream status`` lines of the ``web`` status entry: pages, display latency per stream."""
    lines = [f"live view {web['url']}  pages {web['pages']}  rejects {sum(web['rejected'].values())}"]
    lines.append(f"{'display':<16}{'frames':>8}{'fps':>8}{'p50 ms':>12}{'p99 ms':>12}")
    for sid, d in sorted(web["display"].items()):
        vals = (d["fps"], d["latency_p50_ms"], d["latency_p99_ms"])
        lines.append(f"{sid:<16}{d['frames']:>8}" + "".join(f"{'-' if v is None else f'{v:.2f}':>{w}}" for v, w in zip(vals, (8, 12, 12))))
    return lines
