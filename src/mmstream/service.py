"""A running mmstream service: the node graph plus the sources its configuration names.

Each configured source is a driver (found through the ``mmstream.drivers`` entry points) built as
``Driver(fps=..., **options)`` whose ``source_frames()`` is pumped into the graph's ingest endpoint
from its own thread.
"""

import threading

import mmstream_drivers
from mmstream.config import ServiceConfig
from mmstream.errors import ConfigError
from mmstream.graph import Graph
from mmstream.source import FrameSender, pump


class Service:
    """Start with :meth:`start` (or ``with Service(cfg) as svc:``), stop with :meth:`stop`."""

    def __init__(self, config: ServiceConfig):
        self.config = config
        self.graph = Graph(config)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.source_errors: dict[str, str] = {}
        self.graph.status_hooks.append(lambda: {"source_errors": dict(self.source_errors)})
        self.volumes = None  # DICOM SCP / watch folder (docs/volumes.md), started after the graph
        self.graph.status_hooks.append(lambda: {"volumes": self.volumes.status()} if self.volumes is not None else {})

    def _run_source(self, section, endpoint: str) -> None:
        try:
            driver = mmstream_drivers.load(section.driver)(fps=section.fps, **section.options)
            with FrameSender(endpoint, section.stream_id) as sender:
                realtime = not getattr(driver, "paces_itself", False)  # e.g. replay: its own timing
                pump(driver.source_frames(), sender, realtime=realtime, stop=self._stop)
        except Exception as exc:  # a failing source is reported in status, the service stays up
            self.source_errors[section.stream_id] = f"{type(exc).__name__}: {exc}"

    def start(self) -> "Service":
        for section in self.config.sources:
            if section.driver not in mmstream_drivers.available():
                raise ConfigError(
                    f"source {section.stream_id!r}: no driver {section.driver!r} "
                    f"(installed: {', '.join(mmstream_drivers.available())})"
                )
        self.graph.start()
        endpoint = self.graph.endpoints["ingest"]
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
        for t in self._threads:
            t.join(5.0)
        if self.volumes is not None:
            self.volumes.stop()  # pending series are sent before the graph stops
        self.graph.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
