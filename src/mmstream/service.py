"""A running mmstream service: the node graph plus the sources its configuration names.

Each configured source is a driver (found through the ``mmstream.drivers`` entry points) built as
``Driver(fps=..., **options)`` whose ``source_frames()`` is pumped into the graph's ingest socket
from its own thread. They and the volume sources send to the ingest endpoint, or, when
``[security]`` makes that endpoint require CURVE keys they do not have, in-process
(``Graph.internal["ingest"]``, which CURVE does not apply to).
"""

import threading
import time

import mmstream_drivers
from mmstream.codec import encode
from mmstream.config import ServiceConfig, preflight
from mmstream.fusion import attach_fusion
from mmstream.graph import Graph
from mmstream.messages import Event
from mmstream.nodes.event_log import attach_event_log
from mmstream.privacy import redact_paths, source_paths
from mmstream.recording.recorder import attach_recorder
from mmstream.source import FrameSender, pump
from mmstream.transport import make_socket


class Service:
    """Start with :meth:`start` (or ``with Service(cfg) as svc:``), stop with :meth:`stop`."""

    def __init__(self, config: ServiceConfig):
        """ConfigError when this machine lacks what ``config`` names (:func:`~mmstream.config.preflight`)."""
        preflight(config)
        self.config = config
        self.graph = Graph(config)
        self.event_log = attach_event_log(self.graph)  # events on the console; first, so it hears the others' first
        self.fusion = attach_fusion(self.graph)  # None unless [biomarkers] store is set (docs/biomarkers.md)
        self.recorder = attach_recorder(self.graph)  # HDF5 sessions: [recorder], record_start (docs/recording.md)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.source_errors: dict[str, str] = {}
        self.graph.status_hooks.append(lambda: {"source_errors": dict(self.source_errors)})
        self._drivers: dict[str, object] = {}  # stream_id -> driver; their health shows in status
        self._senders: dict[str, FrameSender] = {}  # stream_id -> its sender (frames it refused, in status)
        self.graph.status_hooks.append(
            lambda: {"source_invalid_frames": {sid: s.invalid_frames for sid, s in list(self._senders.items())},
                     "source_pace_jumps": {sid: s.pace_jumps for sid, s in list(self._senders.items()) if s.pace_jumps}}
        )
        self.graph.status_hooks.append(
            lambda: {"sources": {sid: d.health.status() for sid, d in list(self._drivers.items()) if hasattr(d, "health")}}
        )
        self.igtl_output = None
        if config.igtl_output.enabled:  # metrics to 3D Slicer over OpenIGTLink (docs/sources.md)
            self.igtl_output = _attach_igtl_output(self.graph, config.igtl_output)
        self.volumes = None  # DICOM SCP / watch folder (docs/volumes.md), started after the graph
        self.graph.status_hooks.append(lambda: {"volumes": self.volumes.status()} if self.volumes is not None else {})
        self.web = None
        if config.web.enabled:  # the bedside live view (docs/webview.md)
            from mmstream.web import WebView

            self.web = WebView(self.graph, fusion=self.fusion is not None)

    def _run_source(self, section, endpoint: str) -> None:
        sid = section.stream_id
        files = source_paths(section.options)  # named in events by a hash only (they may carry a name)
        events = None
        try:
            events = make_socket("push", self.graph.events_spec().endpoint, bind=False, hwm=256)
            driver = mmstream_drivers.load(section.driver)(fps=section.fps, **section.options)
            self._drivers[sid] = driver
            if hasattr(driver, "health"):  # the driver's events join the service's (same thread as pump)
                driver.health.sink = lambda ev: events.try_send(encode(ev.model_copy(
                    update={"stream_id": sid, "message": redact_paths(ev.message, files)[:2000]})))  # fmt: skip
            ing = self.config.ingest  # a frame the service would refuse is counted here, not lost there
            with FrameSender(endpoint, sid, max_frame_shape=(ing.max_frame_rows, ing.max_frame_cols)) as sender:
                self._senders[sid] = sender
                realtime = not getattr(driver, "paces_itself", False)  # e.g. replay: its own timing
                pump(driver.source_frames(), sender, realtime=realtime, stop=self._stop,
                     patient=self.config.analyzer.every_frame, max_fps=ing.max_fps_per_stream)  # fmt: skip
        except Exception as exc:  # a failing source is reported in status and as an event; the service stays up
            self.source_errors[sid] = redact_paths(f"{type(exc).__name__}: {exc}", files)[:1000]
            if events is not None:
                events.try_send(encode(Event(node="sources", level="error", reason="source_failed", stream_id=sid,
                                             message=f"source {sid!r} ({section.driver}) stopped: {self.source_errors[sid]}",
                                             t_host_s=time.monotonic())))  # fmt: skip
        finally:
            if events is not None:
                events.close()

    def start(self) -> "Service":
        self.graph.start()
        if self.igtl_output is not None:
            try:
                self.igtl_output.start()
            except BaseException:
                self.graph.stop()
                raise
        if self.web is not None:
            try:
                self.web.start()
            except BaseException:
                self.stop()
                raise
        # with [security], in-process: the external endpoint would need a CURVE key the sources have not
        endpoint = self.graph.internal["ingest"] if self.config.security.server_secret_key_file else self.graph.endpoints["ingest"]
        if self.config.volumes.scp.enabled or self.config.volumes.watch.enabled:
            from mmstream.volumes.sources import VolumeSources

            try:
                self.volumes = VolumeSources(self.config.volumes, endpoint, self.graph.events_spec().endpoint).start()
            except BaseException:
                self.stop()
                raise
        for section in self.config.sources:
            t = threading.Thread(target=self._run_source, args=(section, endpoint), name=f"source-{section.stream_id}",
                                 daemon=True)  # fmt: skip
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for driver in self._drivers.values():
            if hasattr(driver, "close"):
                driver.close()  # interrupts a driver waiting for its device
        for t in self._threads:
            t.join(5.0)
        if self.volumes is not None:
            self.volumes.stop()  # pending series are sent before the graph stops
        if self.web is not None:
            self.web.stop()
        self.graph.stop()  # also closes the attached nodes (igtl_output)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _attach_igtl_output(graph: Graph, section):
    """The OpenIGTLink metrics output, subscribed to the graph's bus."""
    from mmstream.graph import SocketSpec
    from mmstream_drivers.igtl.output import IgtlMetricsOutput

    node = IgtlMetricsOutput(
        section.host, section.port, string_device=section.string_device, point_device=section.point_device,
        event_device=section.event_device, max_clients=section.max_clients,
        client_queue_messages=section.client_queue_messages,
    )  # fmt: skip
    graph.attach(node, {"bus": SocketSpec("sub", graph.internal["bus"], bind=False)}, {"events": [graph.events_spec()]})
    return node
