"""Fusion latency with 1,000 patients x 40 sites in the biomarker store, at 60 fps.

    python tools/bench_fusion.py [--patients 1000] [--sites 40] [--messages 300] [--json out.json]

Three measurements, in one run on one store:

1. ``fusion node``: :meth:`FusionNode.process` plus encoding of the ``fused`` message, called at a
   60 fps pace (the cached path: patient records loaded once, re-checked every 0.5 s).
2. ``naive per-message SQL``: the obvious alternative, the same node with its cache dropped before
   every message, so every message queries SQLite (indexed by patient) and recomputes the view.
3. ``through the graph``: the service with the fusion node attached, simulated probe at 60 fps;
   at an external subscriber, the delay between a frame's ``metrics`` and its ``fused`` message:
   what fusion adds to the end-to-end latency a client sees. Beside it, the floor of that path: a
   pass-through node attached the same way that answers each metrics message with an empty
   ``fused`` message (two in-process hops and the publisher, no fusion work).
"""

import argparse
import datetime as dt
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from mmstream.biomarkers import BiomarkerStore
from mmstream.biomarkers.records import BiomarkerRecord
from mmstream.calibration import ReferenceTable
from mmstream.codec import Decoded, decode, encode
from mmstream.fusion import FusionNode, FusionRules
from mmstream.messages import ClinicalContext, EchoSummary, Fused, Metrics
from mmstream.nodes.base import Node, Out, Port

BIOMARKERS = (("fat_fraction", "1", "MRI", 0.05, 0.4), ("t2_water_ms", "ms", "MRI", 28.0, 45.0),
              ("pet_suv_mean", "g/mL", "PET", 0.5, 2.0))  # fmt: skip
PERIOD_S = 1 / 60


def sites(n: int) -> list[str]:
    return [f"muscle_{i:02d}" for i in range(n)]


def build_store(path: Path, n_patients: int, n_sites: int, seed: int = 1) -> int:
    """A store of synthetic records (random values, benchmark only): 3 biomarkers per site."""
    rng = random.Random(seed)
    recs = [
        BiomarkerRecord(patient_id=f"P{p:04d}", site=s, side="left", modality=mod, biomarker=b, unit=u,
                        value=rng.uniform(lo, hi), acquired_on=dt.date(2026, 1, 1) + dt.timedelta(days=rng.randrange(300)),
                        tracer="FDG" if mod == "PET" else None)
        for p in range(n_patients) for s in sites(n_sites) for b, u, mod, lo, hi in BIOMARKERS
    ]  # fmt: skip
    with BiomarkerStore(path) as st:
        st.add(recs)
    return len(recs)


def reference(n_sites: int) -> ReferenceTable:
    """Synthetic reference entries so that z-scores, scores and rankings are really computed."""
    entries = [{"biomarker": b, "site": s, "abnormal": "high", "mean": lo, "sd": (hi - lo) / 4}
               for s in sites(n_sites) for b, _, _, lo, hi in BIOMARKERS]  # fmt: skip
    return ReferenceTable.model_validate({"source": "benchmark (synthetic)", "entries": entries})


def messages(n: int, n_patients: int, n_sites: int):
    """30 frames per site, 4 sites per patient, then the next patient."""
    rng = random.Random(2)
    out = []
    for i in range(n):
        patient = f"P{(i // 120) * 7 % n_patients:04d}"  # a new patient every 2 s: its first message loads from SQL
        site = sites(n_sites)[(i // 30) % n_sites]
        ctx = ClinicalContext(patient_id=patient, site=site, side="left", age_years=50, sex="female")
        e = EchoSummary(region="roi", mean=60.0 + rng.random(), std=5.0, n_px=4000)
        h = Metrics(stream_id="probe", session_id="bench", parent=("probe", i), clinical=ctx, echogenicity=e)
        out.append(Decoded("metrics.probe", h))
    return out


def timed_calls(node: FusionNode, msgs, drop_cache: bool) -> np.ndarray:
    """Seconds per message (process + encode), paced at 60 fps."""
    out = np.empty(len(msgs))
    next_t = time.perf_counter()
    for i, m in enumerate(msgs):
        if drop_cache:
            node.cache._drop()  # noqa: SLF001 - the naive alternative: no cache at all
        t0 = time.perf_counter()
        res = node.process("bus", m)
        for o in res:
            encode(o.header, o.arrays)
        out[i] = time.perf_counter() - t0
        next_t += PERIOD_S
        time.sleep(max(0.0, next_t - time.perf_counter()))
    return out


class PassThrough(Node):
    """The floor of an attached node publishing through the publisher: an empty fused message."""

    name = "passthrough"
    inputs = (Port("bus", capacity=256),)

    def process(self, port, msg):
        h = msg.header
        if not isinstance(h, Metrics):
            return []
        return [Out("fused", Fused(stream_id=h.stream_id, session_id=h.session_id, parent=h.parent, stamps=h.stamps))]


def through_graph(store: Path, rules_ref: Path, seconds: float, passthrough: bool) -> np.ndarray:
    """Delay metrics -> fused at an external subscriber (s), service at 60 fps."""
    from mmstream.config import load_config
    from mmstream.fusion import attach_fusion
    from mmstream.graph import Graph, SocketSpec
    from mmstream.source import FrameSender
    from mmstream.transport import TransportTimeout, make_socket
    from mmstream_drivers.sim import SimProbe

    ep = {"ingest": "tcp://127.0.0.1:*", "metrics": "tcp://127.0.0.1:*", "control": "tcp://127.0.0.1:*"}
    if passthrough:
        g = Graph(load_config(None, endpoints=ep))
        g.attach(PassThrough(), {"bus": SocketSpec("sub", g.internal["bus"], bind=False)}, {"fused": [g.fused_spec()]})
    else:
        g = Graph(load_config(None, endpoints=ep, biomarkers={"store": store, "echo_reference": rules_ref}))
        attach_fusion(g)
    probe = SimProbe(fps=60.0, seed=3)
    arrivals: list[tuple[float, object]] = []
    stop = threading.Event()

    def receive(sub):  # its own thread, always waiting: arrival times are not delayed by the sender
        while not stop.is_set():
            try:
                parts = sub.recv(timeout_ms=100)
            except TransportTimeout:
                continue
            arrivals.append((time.perf_counter(), parts))

    with g:
        sub = make_socket("sub", g.endpoints["metrics"], bind=False, subscribe=("metrics.", "fused."))
        ctx = ClinicalContext(patient_id="P0001", site="muscle_03", side="left", age_years=50, sex="female")
        with FrameSender(g.endpoints["ingest"], "probe", clinical=ctx) as sender:
            for i in range(300):  # until the subscription has reached the publisher (slow joiner)
                sender.send(probe.frame(i).to_source())
                try:
                    if decode(sub.recv(timeout_ms=50)).header.msg_type == "fused":
                        break
                except TransportTimeout:
                    pass
            rx = threading.Thread(target=receive, args=(sub,))
            rx.start()
            n = int(seconds * 60)
            next_t = time.perf_counter()
            for i in range(n):
                sender.send(probe.frame(i).to_source())
                next_t += PERIOD_S
                time.sleep(max(0.0, next_t - time.perf_counter()))
            time.sleep(0.2)
            stop.set()
            rx.join()
        sub.close()
    seen_metrics, delays = {}, []
    for t, parts in arrivals:
        h = decode(parts).header
        if h.msg_type == "metrics":
            seen_metrics[h.parent] = t
        elif h.parent in seen_metrics:
            delays.append(t - seen_metrics.pop(h.parent))
    return np.asarray(delays)


def summary(x: np.ndarray) -> dict:
    return {"n": int(x.size), "p50_ms": float(np.percentile(x, 50) * 1e3), "p99_ms": float(np.percentile(x, 99) * 1e3),
            "mean_ms": float(x.mean() * 1e3), "max_ms": float(x.max() * 1e3)}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--sites", type=int, default=40)
    ap.add_argument("--messages", type=int, default=300, help="per direct-call case (60 fps pace)")
    ap.add_argument("--graph-seconds", type=float, default=5.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        t0 = time.perf_counter()
        n_rec = build_store(db, args.patients, args.sites)
        build_s = time.perf_counter() - t0
        ref = reference(args.sites)
        rules = FusionRules(ref, end_stage_fat_fraction=None, stale_after_days=365)
        msgs = messages(args.messages, args.patients, args.sites)
        cached = FusionNode(db, rules)
        timed_calls(cached, msgs[:30], False)  # warm-up (imports, first load)
        fused = timed_calls(cached, msgs, False)
        naive = timed_calls(FusionNode(db, rules), msgs, True)
        ref_path = Path(tmp) / "ref.json"
        ref_path.write_text(ref.model_dump_json())
        graph = through_graph(db, ref_path, args.graph_seconds, passthrough=False)
        floor = through_graph(db, ref_path, args.graph_seconds, passthrough=True)
    rows = {"fusion node (cached)": summary(fused), "naive per-message SQL": summary(naive),
            "graph: metrics -> fused at subscriber": summary(graph),
            "graph floor: pass-through node, same path": summary(floor)}  # fmt: skip
    ratio = float(np.percentile(naive, 50) / np.percentile(fused, 50))
    print(f"store: {args.patients} patients x {args.sites} sites x {len(BIOMARKERS)} biomarkers = {n_rec} records "
          f"(built in {build_s:.1f} s); 60 fps pace")  # fmt: skip
    print(f"{'case':52s} {'n':>5s} {'p50 ms':>8s} {'p99 ms':>8s} {'mean ms':>8s} {'max ms':>8s}")
    for name, r in rows.items():
        print(f"{name:52s} {r['n']:5d} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} {r['mean_ms']:8.3f} {r['max_ms']:8.3f}")
    added = rows["graph: metrics -> fused at subscriber"]["p50_ms"] - rows["graph floor: pass-through node, same path"]["p50_ms"]
    print(f"naive / cached (p50): {ratio:.1f}x; fusion over the pass-through floor (p50): {added:.3f} ms; "
          "target: fusion adds < 0.5 ms")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"records": n_rec, "patients": args.patients, "sites": args.sites, "fps": 60,
                                         "cases": rows, "naive_over_cached_p50": ratio, "fusion_over_floor_p50_ms": added,
                                         "target_ms": 0.5}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
