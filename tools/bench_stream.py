"""Streaming benchmark: driver process -> service (ingest + analysis) -> subscriber process.

In one run, with simulated 512x512 uint8 B-mode frames, on one host (``tcp://127.0.0.1``):

* **floor** — raw pyzmq ping-pong of the same frames between two processes (PAIR, ``copy=False``):
  round trip and round trip / 2 (one way), paced at 30 and 60 fps; also the one-way time measured
  on arrival at the idle echo process (the return leg finds the sender awake, so round trip / 2 is
  lower than a hop into a process that slept since the last frame, which is what every hop of a
  paced stream is).
* **peer** — the same frames over OpenIGTLink with pyigtl, server (device) process -> client
  process, paced at 30 and 60 fps; the client polls ``get_latest_messages()`` every 0.2 ms (pyigtl's
  best case; ``wait_for_message`` would add its own 10 ms polling).
* **mmstream** — a driver process sends with :class:`mmstream.source.FrameSender` (``pump``, paced
  by device time) to a real :class:`mmstream.graph.Graph` (ingest + analyzer with echogenicity,
  quality, thickness and CSA seeded on the simulated nerve + publisher) in this process; a subscriber
  process (SUB on the metrics endpoint) stamps each metrics message on arrival. Latency = arrival
  minus the driver's ``sent`` stamp (CLOCK_MONOTONIC is system-wide on Linux), with the per-stage
  split from the message's ``stamps`` (sent, ingest, analysis_start, analyzed, published).
* **floor with analysis** — the raw pyzmq ping-pong at 60 fps with ``analyze_frame`` (same metrics,
  seeded on the first frame, then tracking) run by the echo process on each frame before it answers
  with the result's JSON: two hops and the analysis, with no service around them — the lowest p50
  any design that analyses outside the driver's process can reach on this machine.
* **JSON between nodes** — the same service at 60 fps built with ``Graph(handoff=False)``: every
  internal edge encodes and decodes the header, as before the in-process hand-over of
  :mod:`mmstream.handoff`; the ratio shows what the hand-over saves.
* **sustained rate** — the driver sends as fast as the target rate allows at 250, 500, 1000, 2000
  frames/s. The lossless path is ingest (back-pressured: a full queue blocks the driver, nothing is
  dropped); the analyzer is the live path (latest-wins: it analyses each stream's newest frame and
  counts the ones it skipped). A rate is *sustained* when every frame sent was accepted
  (accepted == sent, nothing rejected) and the service absorbed them at >= 97% of the target rate
  (sent / time from the first send to the last acceptance); the analysed share is reported beside.
  The highest sustained rate is the highest one sustained together with every lower rate.
  Ingest's per-stream rate limit is raised to 100k frames/s for the run (default 1000).

Prints a table and writes JSON (``--json PATH``). ``--seconds`` is the length of each measurement,
``--quick`` a short smoke run (fewer rates and frames), ``--metrics`` the analyses run (default all).

    python tools/bench_stream.py [--seconds 5] [--quick] [--metrics echogenicity,quality] [--json out.json]
"""

import argparse
import json
import multiprocessing as mp
import os
import platform
import queue
import time
from dataclasses import replace

import numpy as np
from bench_stream_peers import bench_floor, bench_floor_analysis, bench_pyigtl, percentiles_ms, wait_until  # tools/ is on sys.path

STAGES = (("sent", "ingest"), ("ingest", "analysis_start"), ("analysis_start", "analyzed"),
          ("analyzed", "published"), ("published", "received"))  # fmt: skip
METRICS = ("echogenicity", "quality", "thickness", "csa")  # default: all four, CSA seeded on the nerve
MIN_SUSTAINED = 0.97  # share of the target rate the service must absorb for the rate to count as sustained


def sim_frames(n_distinct: int):
    """``n_distinct`` simulated probe frames (SourceFrame) and the nerve centre (row, col) of the first."""
    from mmstream_drivers.sim import SimProbe

    probe = SimProbe(fps=30.0)
    frames = [probe.frame(i) for i in range(n_distinct)]
    return [f.to_source() for f in frames], frames[0].truth.nerve_center_rc


# ---- child processes (spawned; each imports only what it needs) ----------------------------------


INGEST_MAX_FPS = 100000.0  # the bench service's per-stream ingest limit; the driver paces to it, not to the default


def _driver(endpoint: str, n_distinct: int, commands, results) -> None:
    """Driver process: per command (stream_id, fps, n) send ``n`` frames paced at ``fps`` (bounded by
    :data:`INGEST_MAX_FPS`, the limit the bench's service is configured with)."""
    from mmstream.source import FrameSender, pump

    base, _ = sim_frames(n_distinct)
    for stream_id, fps, n in iter(commands.get, None):
        frames = (replace(base[k % n_distinct], t_device_s=k / fps) for k in range(n))
        sender = FrameSender(endpoint, stream_id)
        t0 = time.monotonic()
        error = None
        try:
            sent = pump(frames, sender, realtime=True, max_fps=INGEST_MAX_FPS)
        except Exception as exc:  # e.g. TransportTimeout: the service stopped taking frames
            sent, error = sender.seq, f"{type(exc).__name__}: {exc}"
        sender.close()
        results.put({"stream_id": stream_id, "sent": sent, "t_first_s": t0, "error": error})


def _subscriber(endpoint: str, ready, seen, stop, results) -> None:
    """Subscriber process: records (stream_id, seq, stamps + received) of every metrics message;
    sets ``seen`` at the first one (the subscription is live)."""
    from mmstream.codec import decode
    from mmstream.transport import make_socket

    sock = make_socket("sub", endpoint, bind=False, hwm=100000, subscribe=("metrics.",))
    ready.set()
    records = []
    while not stop.is_set():
        try:
            parts = sock.recv(timeout_ms=50)
        except TimeoutError:
            continue
        t = time.monotonic()
        h = decode(parts).header
        seen.set()
        records.append((h.stream_id, h.parent[1], {**h.stamps, "received": t}))
    sock.close()
    results.put(records)


# ---- analysis alone, and the service (floor and peer: bench_stream_peers.py) ---------------------


def bench_analysis(fps: float, n: int, warmup: int, metrics: tuple[str, ...]) -> dict:
    """``analyze_frame`` alone on the same frames (read-only, as received), in this process, paced at
    ``fps`` (caches go cold between frames, as in the service) and back to back."""
    from mmstream.analysis import analyze_frame
    from mmstream.kernels import warmup as jit_warmup

    jit_warmup()
    base, seed_rc = sim_frames(8)
    images = [f.image.copy() for f in base]
    for im in images:
        im.flags.writeable = False
    out = {}
    for name, pace in (("paced", fps), ("back_to_back", None)):
        prev, times = None, []
        t0 = time.monotonic()
        for k in range(n + warmup):
            if pace:
                wait_until(t0 + k / pace)
            t = time.monotonic()
            prev = analyze_frame(images[k % len(images)], spacing_mm=base[0].spacing_mm, seed=seed_rc if k == 0 else None,
                                 previous=prev, metrics=metrics)  # fmt: skip
            if k >= warmup:
                times.append(time.monotonic() - t)
        out[name] = percentiles_ms(times)
    return {"fps": fps, **out}


class ServiceBench:
    """The real graph in this process, a driver process and a subscriber process."""

    def __init__(self, ctx, stream_ids: list[str], n_distinct: int, metrics: tuple[str, ...] = METRICS,
                 handoff: bool = True):  # fmt: skip
        from mmstream.config import load_config
        from mmstream.graph import Graph

        _, seed_rc = sim_frames(1)
        tcp = "tcp://127.0.0.1:*"
        cfg = load_config(
            None, endpoints={"ingest": tcp, "metrics": tcp, "control": tcp},
            ingest={"max_fps_per_stream": INGEST_MAX_FPS}, analyzer={"metrics": metrics},
            streams={sid: {"seed_rc": seed_rc} for sid in stream_ids},
        )  # fmt: skip
        self.graph = Graph(cfg, handoff=handoff).start()
        ep = self.graph.endpoints
        self._sub_ready, self._sub_seen, self._sub_stop, self._sub_out = ctx.Event(), ctx.Event(), ctx.Event(), ctx.Queue()
        sub_args = (ep["metrics"], self._sub_ready, self._sub_seen, self._sub_stop, self._sub_out)
        self._sub = ctx.Process(target=_subscriber, args=sub_args, daemon=True)
        self._cmd, self._res = ctx.Queue(), ctx.Queue()
        self._drv = ctx.Process(target=_driver, args=(ep["ingest"], n_distinct, self._cmd, self._res), daemon=True)
        self._sub.start()
        self._drv.start()
        if not self._sub_ready.wait(60):
            self.graph.stop()
            raise RuntimeError("subscriber process did not start")

    def warm_up(self) -> None:
        """Connect the driver and check the subscriber receives (ZeroMQ subscriptions are asynchronous)."""
        self.run("warmup", 30.0, 30, poll_s=0.5)
        if not self._sub_seen.wait(30):
            raise RuntimeError("the subscriber received no metrics message")

    def _counts(self, stream_id: str) -> dict:
        """Service counters: frames accepted (lossless path), rejected at ingest, analysed and published,
        dropped on the live path (ingest -> analyzer, analyzer queue, analyzer -> publisher), failed analyses."""
        st = self.graph.status()
        n = st["nodes"]
        analyzers = [v for k, v in n.items() if k.startswith("analyzer")]
        return {
            "accepted": n["ingest"]["streams"].get(stream_id, {}).get("accepted", 0),
            "rejected": sum(n["ingest"]["rejected"].values()),
            "analyzed": st["streams"].get(stream_id, {}).get("frames", 0),
            "live_drops": n["ingest"]["send_drops"].get("frames", 0)
            + sum(a["queue_drops"].get("frames", 0) + a["send_drops"].get("metrics", 0) for a in analyzers),
            "analysis_errors": sum(sum(a["rejected"].values()) for a in analyzers),
        }

    def run(self, stream_id: str, fps: float, n: int, poll_s: float = 0.002) -> dict:
        """Send ``n`` frames at ``fps``; wait until ingest accepted them all and analysis drained.

        ``poll_s``: how often to look at ingest's counter (the time of the last acceptance, hence
        the absorbed rate, is known to that precision; polling costs the service process some CPU).
        """
        before = self._counts(stream_id)
        self._cmd.put((stream_id, fps, n))
        t_all_accepted, d = None, {}
        deadline = time.monotonic() + 60 + 2 * n / fps
        while time.monotonic() < deadline:
            if t_all_accepted is None and self.graph.ingest.status()["streams"].get(stream_id, {}).get("accepted", 0) >= n:
                t_all_accepted = time.monotonic()
            try:
                drv = self._res.get(timeout=poll_s)
                break
            except queue.Empty:
                continue
        else:
            raise RuntimeError(f"driver did not finish {stream_id} in time")
        while time.monotonic() < deadline:  # drain: every accepted frame analysed or counted as dropped
            now = self._counts(stream_id)
            if t_all_accepted is None and now["accepted"] >= drv["sent"]:
                t_all_accepted = time.monotonic()
            d = {k: now[k] - before[k] for k in now}
            if d["accepted"] >= drv["sent"] and d["analyzed"] + d["live_drops"] + d["analysis_errors"] >= d["accepted"]:
                break
            time.sleep(0.002)
        span = (t_all_accepted or time.monotonic()) - drv["t_first_s"]
        absorbed = drv["sent"] / span if span > 0 else None
        lossless = d["accepted"] == drv["sent"] == n and d["rejected"] == 0 and drv["error"] is None
        return {
            "target_fps": fps, "sent": drv["sent"], "accepted": d["accepted"], "rejected": d["rejected"],
            "analyzed": d["analyzed"], "live_drops": d["live_drops"], "analysis_errors": d["analysis_errors"],
            "absorbed_fps": absorbed,
            "analyzed_fps": d["analyzed"] / span if span > 0 else None, "driver_error": drv["error"],
            "lossless": lossless, "sustained": bool(lossless and absorbed and absorbed >= MIN_SUSTAINED * fps),
        }  # fmt: skip

    def close(self) -> list:
        """Stop everything; returns the subscriber's records (stream_id, seq, stamps)."""
        self._cmd.put(None)
        self._sub_stop.set()
        records = self._sub_out.get(timeout=60)
        self._drv.join(10)
        self._sub.join(10)
        self.graph.stop()
        return records


def latency_report(records, stream_id: str, warmup: int) -> dict:
    """End-to-end latency and per-stage medians (ms) of one stream's metrics messages."""
    rows = [s for sid, seq, s in records if sid == stream_id and seq >= warmup]
    total = [s["received"] - s["sent"] for s in rows]
    stages = {f"{a}->{b}": float(np.median([s[b] - s[a] for s in rows]) * 1e3) if rows else None for a, b in STAGES}
    return {"latency": percentiles_ms(total), "received": len(rows), "stages_p50_ms": stages}


# ---- orchestration --------------------------------------------------------------------------------


def run(seconds: float, quick: bool, metrics: tuple[str, ...] = METRICS) -> dict:
    ctx = mp.get_context("spawn")
    rates = (250.0, 1000.0) if quick else (250.0, 500.0, 1000.0, 2000.0)
    n_distinct = 8 if quick else 60
    warmup = 5
    base, _ = sim_frames(1)
    image = np.ascontiguousarray(base[0].image)
    load_before = os.getloadavg()
    out = {
        "frame": {"shape": list(image.shape), "dtype": str(image.dtype)},
        "transport": "tcp://127.0.0.1 (loopback), separate processes",
        "metrics": list(metrics), "seconds": seconds, "quick": quick, "warmup_frames": warmup,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "floor_zmq": {}, "peer_pyigtl": {}, "mmstream": {"latency": {}, "rates": []},
    }  # fmt: skip
    lat_fps = (30.0, 60.0)
    for fps in lat_fps:
        n = max(int(fps * seconds), 10)
        out["floor_zmq"][f"{fps:g}"] = bench_floor(ctx, image, fps, n, warmup)
        out["peer_pyigtl"][f"{fps:g}"] = bench_pyigtl(ctx, image, fps, n, warmup)
    out["analysis_alone"] = bench_analysis(60.0, max(int(60 * seconds), 10), warmup, metrics)
    frames, seed_rc = sim_frames(n_distinct)  # the frames the service sees below
    out["floor_zmq_analysis"] = bench_floor_analysis(ctx, [np.ascontiguousarray(f.image) for f in frames],
                                                     frames[0].spacing_mm, seed_rc, metrics, 60.0,
                                                     max(int(60 * seconds), 10), warmup)  # fmt: skip
    streams = [f"lat-{fps:g}" for fps in lat_fps] + [f"rate-{r:g}" for r in rates]
    svc = ServiceBench(ctx, ["warmup", *streams], n_distinct, metrics)
    try:
        svc.warm_up()
        for fps in lat_fps:
            n = max(int(fps * seconds), 10)
            out["mmstream"]["latency"][f"{fps:g}"] = {"fps": fps, **svc.run(f"lat-{fps:g}", fps, n, poll_s=0.5)}
        for r in rates:
            out["mmstream"]["rates"].append(svc.run(f"rate-{r:g}", r, int(r * seconds)))
    finally:
        records = svc.close()
    for fps in lat_fps:
        out["mmstream"]["latency"][f"{fps:g}"].update(latency_report(records, f"lat-{fps:g}", warmup))
    out["mmstream_json_between_nodes"] = bench_without_handoff(ctx, n_distinct, metrics, seconds, warmup)
    best = None  # the highest rate that was sustained together with every lower rate
    for r in sorted(out["mmstream"]["rates"], key=lambda r: r["target_fps"]):
        if not r["sustained"]:
            break
        best = r["target_fps"]
    out["mmstream"]["max_sustained_lossless_fps"] = best
    out["machine"]["loadavg_1m"] = [load_before[0], os.getloadavg()[0]]
    out["ratios"], out["targets"] = summarize(out)
    return out


def bench_without_handoff(ctx, n_distinct: int, metrics: tuple[str, ...], seconds: float, warmup: int) -> dict:
    """The same service at 60 fps with JSON on its internal edges too (``Graph(handoff=False)``):
    what the in-process hand-over of messages (mmstream.handoff) saves."""
    svc = ServiceBench(ctx, ["warmup", "json-60"], n_distinct, metrics, handoff=False)
    try:
        svc.warm_up()
        svc.run("json-60", 60.0, max(int(60 * seconds), 10), poll_s=0.5)
    finally:
        records = svc.close()
    return {"fps": 60.0, **latency_report(records, "json-60", warmup)}


def summarize(out: dict) -> tuple[dict, dict]:
    """Ratios to the floor and the peer, and the issue's targets, at 60 fps."""
    ours = out["mmstream"]["latency"]["60"]["latency"]
    floor = out["floor_zmq"]["60"]
    peer = out["peer_pyigtl"]["60"]["latency"]

    def ratio(a, b):
        return a / b if a is not None and b else None

    ratios = {
        "p50_over_zmq_one_way": ratio(ours["p50_ms"], floor["one_way"]["p50_ms"]),
        "p50_over_zmq_round_trip": ratio(ours["p50_ms"], floor["round_trip"]["p50_ms"]),
        "p50_over_pyigtl": ratio(ours["p50_ms"], peer["p50_ms"]),
        "p99_over_pyigtl": ratio(ours["p99_ms"], peer["p99_ms"]),
        "p50_over_json_between_nodes": ratio(ours["p50_ms"], out["mmstream_json_between_nodes"]["latency"]["p50_ms"]),
        "p50_over_floor_with_analysis": ratio(ours["p50_ms"], out["floor_zmq_analysis"]["round_trip"]["p50_ms"]),
    }
    best = out["mmstream"]["max_sustained_lossless_fps"]
    targets = {
        "p50_le_2ms_at_60fps": ours["p50_ms"] is not None and ours["p50_ms"] <= 2.0,
        "p99_le_10ms_at_60fps": ours["p99_ms"] is not None and ours["p99_ms"] <= 10.0,
        "sustained_ge_1000fps": best is not None and best >= 1000,
        "p50_within_3x_zmq_round_trip": ratios["p50_over_zmq_round_trip"] is not None
        and ratios["p50_over_zmq_round_trip"] <= 3.0,
    }
    return ratios, targets


def table(out: dict) -> str:
    f = lambda v, d=2: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    lines = [f"frames {out['frame']['shape'][0]}x{out['frame']['shape'][1]} {out['frame']['dtype']}, "
             f"{out['transport']}; cpus {out['machine']['cpus']}, load(1m) {f(out['machine']['loadavg_1m'][0])}"
             f" -> {f(out['machine']['loadavg_1m'][1])}", "",
             f"{'latency (ms)':44} {'fps':>4} {'p50':>7} {'p99':>7} {'max':>7} {'n':>5}"]  # fmt: skip
    for key in out["mmstream"]["latency"]:
        rows = [
            ("raw pyzmq round trip (floor)", out["floor_zmq"][key]["round_trip"]),
            ("raw pyzmq one way = round trip / 2", out["floor_zmq"][key]["one_way"]),
            ("raw pyzmq one way, measured (idle receiver)", out["floor_zmq"][key]["one_way_measured"]),
            ("pyigtl server -> client (peer)", out["peer_pyigtl"][key]["latency"]),
            ("mmstream driver -> ingest+analysis -> sub", out["mmstream"]["latency"][key]["latency"]),
        ]
        for name, p in rows:
            lines.append(f"{name:44} {key:>4} {f(p['p50_ms']):>7} {f(p['p99_ms']):>7} {f(p['max_ms']):>7} {p['n']:>5}")
        if key == "60":
            p = out["mmstream_json_between_nodes"]["latency"]
            lines.append(f"{'  same, JSON between nodes (no hand-over)':44} {key:>4} {f(p['p50_ms']):>7} "
                         f"{f(p['p99_ms']):>7} {f(p['max_ms']):>7} {p['n']:>5}")  # fmt: skip
            p = out["floor_zmq_analysis"]["round_trip"]
            lines.append(f"{'raw pyzmq round trip + analyze_frame at echo':44} {key:>4} {f(p['p50_ms']):>7} "
                         f"{f(p['p99_ms']):>7} {f(p['max_ms']):>7} {p['n']:>5}")  # fmt: skip
        if key == f"{out['analysis_alone']['fps']:g}":
            for mode in ("paced", "back_to_back"):
                p = out["analysis_alone"][mode]
                lines.append(f"{'analyze_frame alone, ' + mode.replace('_', ' '):44} {key:>4} {f(p['p50_ms']):>7} "
                             f"{f(p['p99_ms']):>7} {f(p['max_ms']):>7} {p['n']:>5}")  # fmt: skip
        st = out["mmstream"]["latency"][key]["stages_p50_ms"]
        lines.append("  stages p50 (ms): " + ", ".join(f"{k} {f(v, 3)}" for k, v in st.items()))
    lines += ["", f"{'sustained rate':14} {'sent':>6} {'accepted':>8} {'rejected':>8} {'absorbed/s':>10} "
              f"{'analysed':>8} {'analysed/s':>10} {'live drops':>10}  lossless sustained"]  # fmt: skip
    for r in out["mmstream"]["rates"]:
        lines.append(f"{r['target_fps']:>10g} /s {r['sent']:>6} {r['accepted']:>8} {r['rejected']:>8} "
                     f"{f(r['absorbed_fps'], 0):>10} {r['analyzed']:>8} {f(r['analyzed_fps'], 0):>10} "
                     f"{r['live_drops']:>10}  {str(r['lossless']):8} {r['sustained']}")  # fmt: skip
    lines += ["", "max sustained lossless rate: " + f(out["mmstream"]["max_sustained_lossless_fps"], 0) + " frames/s",
              "ratios: " + ", ".join(f"{k} {f(v)}" for k, v in out["ratios"].items()),
              "targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in out["targets"].items())]  # fmt: skip
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each measurement (s)")
    ap.add_argument("--quick", action="store_true", help="short smoke run: rates 250 and 1000 frames/s only")
    ap.add_argument("--json", type=str, default=None, help="write the results to this JSON file")
    ap.add_argument("--metrics", default=",".join(METRICS), help="analyses to run, comma-separated (default: all)")
    args = ap.parse_args(argv)
    if not args.seconds > 0:
        ap.error("--seconds must be > 0")
    metrics = tuple(m for m in args.metrics.split(",") if m)
    if not metrics or set(metrics) - set(METRICS):
        ap.error(f"--metrics: choose from {', '.join(METRICS)}")
    out = run(args.seconds, args.quick, metrics)
    print(table(out))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
