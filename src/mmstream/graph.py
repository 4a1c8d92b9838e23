"""The service graph: nodes wired to sockets, each node in its own thread.

The whole wiring is in :meth:`Graph._wiring`, one readable table::

    drivers --PUSH--> [ingest] --frames (latest-wins)--> [analyzer-0..N-1] --metrics--> [publisher] --PUB--> clients
                          \\--------------- events (every node) ------------------------^
    clients --REQ--> [control]  (seed, ROI, metrics, context per stream; status)

Nodes added with :meth:`Graph.attach` (fusion, web view) subscribe to two internal PUB
endpoints named in ``Graph.internal``: ``frames`` (every frame ingest accepted) and ``bus`` (every
metrics message and event the publisher sends out). A PUB drops for a subscriber that falls behind
its high-water mark, unseen by either side (a frame subscriber sees the per-stream ``seq`` gap). A
node that must see everything (the recorder) takes copies of a tap instead (:meth:`Graph.tap_copy`):
edges of its own (PUSH -> PULL), each for some topics, on which the sender counts what it cannot
queue; an event flood then fills the events copy only, never the metrics one.

External endpoints come from the config; internal ones are ``inproc://``. The ingest socket also
takes frames on ``Graph.internal["ingest"]``: the service's own sources and volume sources send
there when ``[security]`` puts CURVE on the external endpoints (inproc does not use it). A
frame goes to the analyzer worker chosen by a stable hash of its stream id, so tracking state stays
in one place. The control endpoint takes parts no larger than a header (a request has no buffers).
"""

import threading
import time
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass

from mmstream.calibration import load_echo_references
from mmstream.codec import Decoded, Limits, decode, encode, topic_for
from mmstream.config import ServiceConfig
from mmstream.errors import CodecError, ConfigError
from mmstream.handoff import Handoff
from mmstream.messages import Reply
from mmstream.nodes import Analyzer, ControlNode, Ingest, IngestLimits, Node, Publisher, StreamConfig, StreamSettings
from mmstream.nodes.base import PortQueue
from mmstream.transport import Curve, Poller, Socket, TransportTimeout, make_socket

IDLE_POLL_MS = 50
DRAIN_MAX = 64
LIVE_HWM = 64  # ingest -> analyzer: the analyzer drains it between frames and keeps the newest per stream
WAIT_SLICE_MS = 100  # a sender waiting on a lossless edge checks this often whether the service stops
TAP_HWM = 4096  # internal taps (frames, bus) and their copies: ~1 GB of 512x512 frames before a slow subscriber loses any
CONTROL_PART_HEADROOM = 1024  # control endpoint part limit: the header bound plus this (CURVE adds 33 bytes a part)


@dataclass(frozen=True)
class SocketSpec:
    kind: str
    endpoint: str
    bind: bool
    hwm: int = 1000
    curve: Curve | None = None
    wait: bool = False  # a full peer queue makes the sender wait (lossless edge) instead of dropping
    subscribe: tuple[str, ...] = ("",)  # a "sub" input, or a copy output: the topic prefixes it takes
    copy: str = ""  # an output that gets every message of its port (of its topics) under this name, not a share
    max_part_bytes: int | None = None  # an input's ZMQ_MAXMSGSIZE (default: the codec's, Limits.max_part_bytes)
    also_bind: tuple[str, ...] = ()  # inproc endpoints a bound input also takes messages on (make_socket)


class NodeRunner(threading.Thread):
    """Runs one node: receives on its input sockets, queues per port policy, processes, sends.

    Sockets are created, used and closed in this thread (ZeroMQ sockets are not thread-safe).
    A message that fails to decode, or a node that raises, is counted and announced as an event;
    the loop never dies of it.
    """

    def __init__(self, node: Node, inputs: dict[str, SocketSpec], outputs: dict[str, list[SocketSpec]], limits: Limits,
                 handoff: tuple[Handoff, str] | None = None):  # fmt: skip
        super().__init__(name=f"mmstream-{node.name}", daemon=True)
        self.node = node
        self._in_specs = inputs
        self._out_specs = outputs
        self._limits = limits
        self._stop_evt = threading.Event()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.bound: dict[str, str] = {}
        self.send_drops: Counter = Counter()
        self.queues = {p.name: PortQueue(p) for p in node.inputs}
        self._reply_socks: set[int] = set()
        self._waiting_socks: set[int] = set()
        # (parking place, the graph's inproc prefix): PUSH -> PULL edges under that prefix pass objects
        self._handoff, self._handoff_prefix = handoff if handoff is not None else (None, None)
        self._handoff_socks: set[int] = set()  # outputs that send tokens
        self._handoff_inputs: set[int] = set()  # inputs that take tokens (the graph's own endpoints only)
        self._copies: dict[int, SocketSpec] = {}  # outputs that get every message of their port (Graph.tap_copy)

    def stop(self) -> None:
        self._stop_evt.set()

    def _open(self):
        ins, outs = {}, {}
        try:
            for port, spec in self._in_specs.items():
                ins[port] = make_socket(spec.kind, spec.endpoint, bind=spec.bind, hwm=spec.hwm, curve=spec.curve,
                                        subscribe=spec.subscribe, also_bind=spec.also_bind,
                                        max_msg_bytes=spec.max_part_bytes or self._limits.max_part_bytes)  # fmt: skip
                self.bound[port] = ins[port].last_endpoint
                if self._internal_pair(spec, "pull"):
                    self._handoff_inputs.add(id(ins[port]))
            for port, specs in self._out_specs.items():
                socks = []
                for spec in specs:
                    if spec.kind == "rep-reply":  # replies go back on the REP input socket
                        socks.append(ins["requests"])
                        self._reply_socks.add(id(ins["requests"]))
                        continue
                    s = make_socket(spec.kind, spec.endpoint, bind=spec.bind, hwm=spec.hwm, curve=spec.curve)
                    socks.append(s)
                    if spec.wait:
                        self._waiting_socks.add(id(s))
                    if self._internal_pair(spec, "push"):
                        self._handoff_socks.add(id(s))
                    if spec.copy:
                        self._copies[id(s)] = spec
                        continue  # not the port's endpoint: ``bound`` names that one
                    self.bound[port] = s.last_endpoint
                outs[port] = socks
        except BaseException:
            for s in {id(x): x for x in [*ins.values(), *(y for v in outs.values() for y in v)]}.values():
                s.close()
            raise
        return ins, outs

    def _internal_pair(self, spec: SocketSpec, kind: str) -> bool:
        """Is ``spec`` a ``kind`` end of a PUSH -> PULL edge between this graph's own nodes?"""
        return self._handoff is not None and spec.kind == kind and spec.endpoint.startswith(self._handoff_prefix)

    def _emit(self, outs: dict[str, list[Socket]], results) -> None:
        """Send each output; one that cannot be encoded or sent (a bug) is dropped and counted as
        ``internal_error``, never ending the node's thread; a reply that cannot be encoded is
        replaced by an ``internal_error`` reply (a REP socket takes no request before it answers)."""
        encoded = {}  # one message sent on several ports (ingest: frames + accepted) is encoded once
        for out in results:
            socks = outs.get(out.port)
            if not socks:
                continue  # a port nobody listens to (e.g. events of a node without a publisher)
            try:
                self._emit_one(out, socks, encoded)
            except Exception as exc:
                self.node.count("internal_error")
                self.send_drops[out.port] += 1
                if id(socks[0]) in self._reply_socks:
                    msg = f"the reply could not be sent: {type(exc).__name__}: {exc}"[:2000]
                    socks[0].send(encode(Reply(ok=False, reason="internal_error", message=msg)), timeout_ms=1000)

    def _emit_one(self, out, socks: list[Socket], encoded: dict) -> None:
        """Send ``out`` on its port's socket and on every copy of the port that takes its topic
        (:meth:`Graph.tap_copy`)."""
        shared = [s for s in socks if id(s) not in self._copies]
        copies = [s for s in socks if id(s) in self._copies]
        topic = topic_for(out.header) if copies else ""
        targets = [s for s in copies if topic.startswith(self._copies[id(s)].subscribe)]
        if shared:  # several: analyzer workers, one per stream
            k = 0 if len(shared) == 1 else zlib.crc32(out.header.stream_id.encode()) % len(shared)
            targets.insert(0, shared[k])
        for sock in targets:
            self._send_one(out, sock, encoded)

    def _send_one(self, out, sock: Socket, encoded: dict) -> None:
        """Encode (once per message, unless handed off) and send ``out`` on ``sock``; what cannot be
        queued is counted ``dropped_<port>`` (``dropped_<port>_<name>`` on tap copy ``name``)."""
        handoff = id(sock) in self._handoff_socks
        if handoff:
            parts = self._handoff.park(out.header, out.arrays)
        else:
            key = (id(out.header), *map(id, out.arrays))  # ids are stable: ``results`` holds every object
            parts = encoded.get(key)
            if parts is None:
                parts = encoded[key] = encode(out.header, out.arrays)
        if id(sock) in self._reply_socks:
            sock.send(parts, timeout_ms=1000)
            return
        sent = self._send_waiting(sock, parts) if id(sock) in self._waiting_socks else sock.try_send(parts)
        if not sent:
            if handoff:
                self._handoff.cancel(parts)
            key = out.port if id(sock) not in self._copies else f"{out.port}_{self._copies[id(sock)].copy}"
            self.send_drops[key] += 1
            self.node.count(f"dropped_{key}")

    def _send_waiting(self, sock: Socket, parts: list) -> bool:
        """Send on a lossless edge: wait while the peer's queue is full; False only if the runner stops."""
        while not self._stop_evt.is_set():
            try:
                sock.send(parts, timeout_ms=WAIT_SLICE_MS)
                return True
            except TransportTimeout:
                continue
        return False

    def _decode(self, parts) -> Decoded:
        """:func:`decode`; any other failure of a hostile message is a CodecError too (counted as
        ``internal_error``): one message must never end the node's thread."""
        try:
            return decode(parts, self._limits)
        except CodecError:
            raise
        except Exception as exc:
            self.node.count("internal_error")
            raise CodecError(f"undecodable message: {type(exc).__name__}: {exc}", reason="invalid_message") from None

    def _guarded(self, fn, *args) -> list:
        try:
            return fn(*args)
        except Exception as exc:  # a bug in a node must not stop the service
            self.node.count("internal_error")
            return [self.node.event("error", "internal_error", f"{type(exc).__name__}: {exc}")]

    def _emit_closing(self, outs) -> None:
        self._guarded(self.node.close)
        try:
            self._emit(outs, self._guarded(self.node.tick, time.monotonic()))  # events of the close
        except Exception:  # sockets may already be unusable at shutdown
            pass

    def run(self) -> None:
        try:
            ins, outs = self._open()
        except BaseException as exc:  # reported to Graph.start, which raises it
            self.error = exc
            self.ready.set()
            return
        self.ready.set()
        node = self.node
        port_of = {id(s): p for p, s in ins.items()}
        queues = self.queues
        poller = Poller(list(ins.values()))
        try:
            while not self._stop_evt.is_set():
                pending = any(len(q) for q in queues.values())
                for sock in poller.poll(0 if pending else IDLE_POLL_MS):
                    port = port_of[id(sock)]
                    q = queues[port]
                    # REP must reply before receiving again: one request at a time
                    for _ in range(1 if id(sock) in self._reply_socks else DRAIN_MAX):
                        if q.full():
                            break  # back-pressure: leave the rest in ZeroMQ's bounded queue
                        parts = sock.try_recv()
                        if parts is None:
                            break
                        parked = self._handoff.take(parts) if id(sock) in self._handoff_inputs else None
                        try:
                            q.put(parked if parked is not None else self._decode(parts))
                        except CodecError as exc:
                            handler = getattr(node, "on_decode_error", None)
                            self._emit(outs, handler(exc) if handler else [node.reject(exc.reason, str(exc))])
                for port, q in queues.items():
                    msg = q.get()
                    if msg is None:
                        continue
                    self._emit(outs, self._guarded(node.process, port, msg))
                self._emit(outs, self._guarded(node.tick, time.monotonic()))
        finally:
            self._emit_closing(outs)
            for s in {id(x): x for x in [*ins.values(), *(y for v in outs.values() for y in v)]}.values():
                s.close()


class Graph:
    """The running service: build from a :class:`~mmstream.config.ServiceConfig`, then start/stop.

    ``endpoints`` gives the external endpoints actually bound (random tcp ports resolved).
    """

    def __init__(self, config: ServiceConfig, handoff: bool = True):
        """``handoff=False`` sends JSON on internal edges too (benchmarks compare the two)."""
        self.config = config
        self.session_id = f"{config.session_label}-{uuid.uuid4().hex[:12]}"
        defaults = StreamConfig(metrics=tuple(config.analyzer.metrics))
        initial = {
            sid: StreamConfig(
                seed_rc=s.seed_rc, seed_version=int(s.seed_rc is not None), roi=s.roi,
                metrics=tuple(s.metrics or config.analyzer.metrics), clinical=s.clinical,
            )
            for sid, s in config.streams.items()
        }  # fmt: skip
        self.settings = StreamSettings(defaults, initial)
        ing = config.ingest
        self.ingest = Ingest(IngestLimits(max_fps=ing.max_fps_per_stream, burst=ing.burst_frames,
                                          max_streams=ing.max_streams, idle_s=ing.stream_idle_s))  # fmt: skip
        echo = load_echo_references(config.biomarkers)  # live echogenicity z-scores, when configured
        self.analyzers = [Analyzer(self.settings, name=f"analyzer-{i}", echo=echo, every_frame=config.analyzer.every_frame,
                                   max_streams=ing.max_streams)
                          for i in range(config.analyzer.workers)]  # fmt: skip
        self.publisher = Publisher()
        self.control = ControlNode(self.settings, self.status)
        self._limits = Limits(max_frame_shape=(ing.max_frame_rows, ing.max_frame_cols))
        self._prefix = f"inproc://mmstream-{uuid.uuid4().hex[:8]}"
        # frames: every frame ingest accepted; bus: what the publisher sends out; ingest: the ingest
        # socket's in-process door (the service's own sources under [security]: inproc takes no CURVE)
        self.internal = {"frames": f"{self._prefix}/frames", "bus": f"{self._prefix}/bus", "ingest": f"{self._prefix}/ingest"}
        self._attached: dict[Node, tuple[dict, dict]] = {}
        self._copies: dict[str, list[SocketSpec]] = {"frames": [], "bus": []}  # Graph.tap_copy outputs per tap
        self._runners: list[NodeRunner] = []
        self._handoff = Handoff() if handoff else None  # internal PUSH -> PULL edges pass objects (mmstream.handoff)
        self._t_start: float | None = None
        self.status_hooks: list = []  # callables returning dicts merged into status()

    def _curve(self) -> Curve | None:
        sec = self.config.security
        if sec.server_secret_key_file is None:
            return None
        return Curve(secret_key_file=sec.server_secret_key_file, allowed_clients_dir=sec.allowed_clients_dir)

    def _wiring(self) -> dict[Node, tuple[dict, dict]]:
        """node -> (input port -> socket spec, output port -> [socket specs])."""
        ep, curve, p = self.config.endpoints, self._curve(), self._prefix
        events = [self.events_spec()]
        workers = [f"{p}/analyzer-{i}" for i in range(len(self.analyzers))]
        wiring = {
            self.ingest: (
                {"in": SocketSpec("pull", ep.ingest, bind=True, hwm=self.config.ingest.queue_messages, curve=curve,
                                  also_bind=(self.internal["ingest"],))},
                {
                    "frames": [SocketSpec("push", w, bind=False, hwm=LIVE_HWM, wait=self.config.analyzer.every_frame)
                               for w in workers],  # fmt: skip
                    "accepted": [SocketSpec("pub", self.internal["frames"], bind=True, hwm=TAP_HWM),
                                 *self._copies["frames"]],
                    "events": events,
                },
            ),
            self.publisher: (
                {"metrics": SocketSpec("pull", f"{p}/metrics", bind=True), "events": SocketSpec("pull", f"{p}/events", bind=True),
                 "fused": SocketSpec("pull", f"{p}/fused", bind=True)},
                {
                    "out": [SocketSpec("pub", ep.metrics, bind=True, hwm=1000, curve=curve)],
                    "bus": [SocketSpec("pub", self.internal["bus"], bind=True, hwm=TAP_HWM), *self._copies["bus"]],
                },
            ),
            self.control: (
                # a request is a header (no buffers): a part over the header bound drops its peer unread
                {"requests": SocketSpec("rep", ep.control, bind=True, curve=curve,
                                        max_part_bytes=self._limits.max_header_bytes + CONTROL_PART_HEADROOM)},
                {"replies": [SocketSpec("rep-reply", ep.control, bind=True)], "events": events},
            ),
        }  # fmt: skip
        for a, w in zip(self.analyzers, workers):
            wiring[a] = (
                {"frames": SocketSpec("pull", w, bind=True, hwm=LIVE_HWM)},
                {"metrics": [SocketSpec("push", f"{p}/metrics", bind=False, wait=self.config.analyzer.every_frame)],
                 "events": events},  # fmt: skip
            )
        return {**wiring, **self._attached}

    def attach(self, node: Node, inputs: dict[str, SocketSpec], outputs: dict[str, list[SocketSpec]]) -> None:
        """Add a node before :meth:`start`; its sockets usually connect to ``self.internal`` endpoints
        (SUB) and send events to the publisher with ``self.events_spec()``."""
        if self._runners:
            raise RuntimeError("attach nodes before start()")
        self._attached[node] = (inputs, outputs)

    def tap_copy(self, tap: str, name: str, topics: tuple[str, ...] = ("",)) -> SocketSpec:
        """The input spec of a copy of internal tap ``tap`` (``frames`` or ``bus``) for one node: every
        message whose topic starts with one of ``topics``, on an edge of its own (PUSH -> PULL,
        ``TAP_HWM`` deep). When the node falls that far behind, the sender (ingest for ``frames``,
        the publisher for ``bus``) drops for this copy alone and counts it, ``dropped_accepted_<name>``
        or ``dropped_bus_<name>`` (:meth:`copy_drops`). ``name`` is unique; call before :meth:`start`."""
        if self._runners:
            raise RuntimeError("take tap copies before start()")
        endpoint = f"{self.internal[tap]}-{name}"
        self._copies[tap].append(SocketSpec("push", endpoint, bind=True, hwm=TAP_HWM, subscribe=topics, copy=name))
        return SocketSpec("pull", endpoint, bind=False, hwm=TAP_HWM)

    def copy_drops(self, name: str) -> int:
        """Messages not queued for tap copy ``name`` (see :meth:`tap_copy`)."""
        frames = any(c.copy == name for c in self._copies["frames"])
        node, port = (self.ingest, "accepted") if frames else (self.publisher, "bus")
        return node.status()["counters"].get(f"dropped_{port}_{name}", 0)

    def events_spec(self) -> SocketSpec:
        """Where a node pushes its events (published with the service's own)."""
        return SocketSpec("push", f"{self._prefix}/events", bind=False)

    def fused_spec(self) -> SocketSpec:
        """Where the fusion node pushes its ``fused`` messages (published like metrics)."""
        return SocketSpec("push", f"{self._prefix}/fused", bind=False)

    def start(self, timeout_s: float = 10.0) -> "Graph":
        """Open every socket and start every node; ConfigError if any endpoint cannot be bound."""
        if self._runners:
            raise RuntimeError("graph already started")
        from mmstream.kernels import warmup

        warmup()  # keep JIT loading out of the first live frame
        wiring = self._wiring()
        # bind-side nodes first: the publisher binds the inproc endpoints the others connect to
        order = [self.publisher, *self.analyzers, self.control, self.ingest, *self._attached]
        for node in order:
            ins, outs = wiring[node]
            handoff = None if self._handoff is None else (self._handoff, self._prefix + "/")
            r = NodeRunner(node, ins, outs, self._limits, handoff)
            r.start()
            if not r.ready.wait(timeout_s) or r.error is not None:
                self.stop()
                err = r.error or TimeoutError(f"{node.name} did not start within {timeout_s} s")
                raise ConfigError(f"cannot start {node.name}: {err}") from err
            self._runners.append(r)
        self._t_start = time.monotonic()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        for r in self._runners:
            r.stop()
        for r in self._runners:
            r.join(timeout_s)
        self._runners.clear()
        if self._handoff is not None:
            self._handoff.clear()  # messages whose tokens were still queued when the nodes stopped

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def endpoints(self) -> dict[str, str]:
        """External endpoints as bound: ``ingest``, ``metrics``, ``control``."""
        by_node = {r.node: r.bound for r in self._runners}
        return {
            "ingest": by_node[self.ingest]["in"],
            "metrics": by_node[self.publisher]["out"],
            "control": by_node[self.control]["requests"],
        }

    def status(self) -> dict:
        """Counters, drops, rejects, fps and latency per stream and node (JSON-serialisable)."""
        nodes = {}
        for r in list(self._runners):
            st = r.node.status()
            st["running"] = r.is_alive()  # False: the node's thread ended (a bug): its messages are not handled
            st["send_drops"] = dict(r.send_drops)
            st["queue_drops"] = {p: q.dropped for p, q in r.queues.items()}
            nodes[r.node.name] = st
        pub = nodes.get("publisher", {})
        out = {
            "session_id": self.session_id,
            "uptime_s": None if self._t_start is None else time.monotonic() - self._t_start,
            "streams": pub.get("streams", {}),
            "service_latency": pub.get("service_latency", {}),
            "nodes": nodes,
        }
        for hook in self.status_hooks:
            out.update(hook())
        return out


__all__ = ["Graph", "NodeRunner", "SocketSpec", "TransportTimeout"]
