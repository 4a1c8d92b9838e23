"""Publisher: stamps metrics and events and sends them out on the service's PUB endpoint.

It also keeps the service's telemetry: per stream, frames published, frame rate and the end-to-end
latency from the driver's send stamp (or, without one, from ingest) to publication.
"""

import time

from mmstream.codec import Decoded
from mmstream.nodes.base import Node, Out, Port, Telemetry


class Publisher(Node):
    name = "publisher"
    inputs = (
        # block: a full queue pushes back on the analyzers, whose live path drops (counted) and whose
        # every_frame mode waits; metrics are never dropped here
        Port("metrics", capacity=256, policy="block"),
        Port("events", capacity=256, policy="fifo"),
        Port("fused", capacity=256, policy="fifo"),  # from the fusion node (mmstream.fusion)
    )
    outputs = (Port("out"), Port("bus"))  # bus: the same messages, for in-process subscribers

    def __init__(self, name: str | None = None):
        super().__init__(name)
        self.telemetry = Telemetry()
        self.stage_latency = Telemetry()

    def process(self, port: str, msg: Decoded) -> list[Out]:
        h = msg.header
        arrays = tuple(msg.arrays.values())
        if port in ("events", "fused"):
            self.count(port)
            return [Out("out", h, arrays), Out("bus", h, arrays)]
        now = time.monotonic()
        stamps = {**h.stamps, "published": now}
        start = stamps.get("sent", stamps.get("ingest"))
        with self._lock:
            self.telemetry.add(h.stream_id, now, None if start is None else now - start)
            if "ingest" in stamps:
                self.stage_latency.add(h.stream_id, now, now - stamps["ingest"])
        self.count("metrics")
        stamped = h.model_copy(update={"stamps": stamps})
        return [Out("out", stamped, arrays), Out("bus", stamped, arrays)]

    def status(self) -> dict:
        out = super().status()
        with self._lock:
            out["streams"] = self.telemetry.summary()
            out["service_latency"] = self.stage_latency.summary()
        return out
