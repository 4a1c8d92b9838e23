"""The floor and the peer of ``tools/bench_stream.py``: the same frames between two processes over
raw pyzmq (PAIR ping-pong, ``copy=False``; also with ``analyze_frame`` at the echo side) and over
OpenIGTLink with pyigtl (server -> client).

Each function starts its other side as a spawned process and returns latency percentiles in ms.
"""

import json
import socket
import struct
import time

import numpy as np


def percentiles_ms(samples_s) -> dict:
    """p50/p99/max (ms) and count of latency samples given in seconds."""
    a = np.asarray(samples_s, np.float64) * 1e3
    if a.size == 0:
        return {"n": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    return {"n": int(a.size), "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "max_ms": float(a.max())}  # fmt: skip


def wait_until(t_due: float) -> None:
    """Sleep until monotonic time ``t_due`` (at once if it has passed: a late frame goes out now)."""
    delay = t_due - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def _zmq_pong(results, analyse=None) -> None:
    """Floor, echo side: returns every multipart message as it came (zero-copy) until b"stop";
    then reports the one-way times it measured (arrival minus the send time in the first part).

    With ``analyse`` (dict: ``shape``, ``spacing_mm``, ``seed_rc``, ``metrics``) it runs
    ``analyze_frame`` on each frame first (seeded on the first, tracking after) and returns the
    header with the result's JSON instead of the frame: analysis with no service around it."""
    import zmq

    if analyse is not None:
        from mmstream.analysis import analyze_frame
        from mmstream.kernels import warmup

        warmup()
    ctx = zmq.Context()
    s = ctx.socket(zmq.PAIR)
    s.linger = 0
    s.bind("tcp://127.0.0.1:*")
    results.put(s.getsockopt_string(zmq.LAST_ENDPOINT))
    one_way, prev = [], None
    while True:
        parts = s.recv_multipart(copy=False)
        t = time.monotonic()
        if parts[0].bytes == b"stop":
            break
        one_way.append(t - struct.unpack("d", parts[0].bytes[:8])[0])
        if analyse is not None:
            image = np.frombuffer(parts[1].buffer, np.uint8).reshape(analyse["shape"])
            prev = analyze_frame(image, spacing_mm=analyse["spacing_mm"], seed=analyse["seed_rc"] if prev is None else None,
                                 previous=prev, metrics=analyse["metrics"])  # fmt: skip
            parts = [parts[0], prev.model_dump_json().encode()]
        s.send_multipart(parts, copy=False)
    s.close()
    ctx.term()
    results.put(one_way)


def _igtl_server(port: int, image: np.ndarray, fps: float, n: int, done, results) -> None:
    """Peer, device side: an OpenIGTLink server sending ``n`` IMAGE messages paced at ``fps``; the
    send time (monotonic) travels in the message timestamp."""
    import pyigtl

    server = pyigtl.OpenIGTLinkServer(port=port, local_server=True)
    deadline = time.monotonic() + 20
    while not server.is_connected() and time.monotonic() < deadline:
        time.sleep(0.01)
    t0 = time.monotonic()
    for k in range(n):
        wait_until(t0 + k / fps)
        server.send_message(pyigtl.ImageMessage(image, timestamp=time.monotonic(), device_name="bench"), wait=False)
    results.put(n)
    done.wait(30)
    server.stop()


def bench_floor(ctx, image: np.ndarray, fps: float, n: int, warmup: int) -> dict:
    """Raw pyzmq ping-pong of ``image`` (+ a 64-byte header) between two processes, paced at ``fps``."""
    rtt, one_way, _ = _ping_pong(ctx, [image], fps, n, warmup, None)
    return {"fps": fps, "round_trip": percentiles_ms(rtt), "one_way": percentiles_ms(np.asarray(rtt) / 2),
            "one_way_measured": percentiles_ms(one_way)}  # fmt: skip


def bench_floor_analysis(ctx, images: list, spacing_mm, seed_rc, metrics, fps: float, n: int, warmup: int) -> dict:
    """The floor of any design that analyses in another process: the same ping-pong, the echo side
    running ``analyze_frame`` (seeded on the first frame, tracking after) on ``images`` in turn and
    answering with the result's JSON. No service, no validation, no header model, one thread."""
    analyse = {"shape": images[0].shape, "spacing_mm": spacing_mm, "seed_rc": seed_rc, "metrics": metrics}
    rtt, _, replies = _ping_pong(ctx, images, fps, n, warmup, analyse)
    complete = sum(all(json.loads(r)[m] is not None for m in metrics) for r in replies)
    return {"fps": fps, "metrics": list(metrics), "round_trip": percentiles_ms(rtt), "replies": len(replies),
            "replies_with_every_metric": complete}  # fmt: skip


def _ping_pong(ctx, images: list, fps: float, n: int, warmup: int, analyse) -> tuple[list, list, list]:
    """Round trips (s) of ``images`` in turn to a spawned ``_zmq_pong``, its one-way times (s), and
    with ``analyse`` the result's JSON of every reply (bytes)."""
    import zmq

    results = ctx.Queue()
    proc = ctx.Process(target=_zmq_pong, args=(results, analyse), daemon=True)
    proc.start()
    zctx = zmq.Context()
    s = zctx.socket(zmq.PAIR)
    s.linger = 0
    s.rcvtimeo = 60_000  # an echo process that died (e.g. analysis raised) fails the run, not hangs it
    s.connect(results.get(timeout=120))
    rtt, replies = [], []
    t0 = time.monotonic()
    for k in range(n + warmup):
        wait_until(t0 + k / fps)
        t = time.monotonic()
        s.send_multipart([struct.pack("d", t) + b"x" * 56, images[k % len(images)]], copy=False)  # 64-byte header
        reply = s.recv_multipart(copy=False)
        if k >= warmup:
            rtt.append(time.monotonic() - t)
        if analyse is not None:  # the result's JSON (the plain floor's echoed frame is not kept)
            replies.append(reply[1].bytes)
    s.send(b"stop")
    one_way = results.get(timeout=60)[warmup:]
    proc.join(10)
    s.close()
    zctx.term()
    return rtt, one_way, replies


def bench_pyigtl(ctx, image: np.ndarray, fps: float, n: int, warmup: int) -> dict:
    """OpenIGTLink (pyigtl) server process -> client here: latency from send to availability."""
    import pyigtl

    with socket.socket() as probe:  # a free port for the server (pyigtl takes a number)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    results, done = ctx.Queue(), ctx.Event()
    total = n + warmup
    proc = ctx.Process(target=_igtl_server, args=(port, image, fps, total, done, results), daemon=True)
    proc.start()
    client = pyigtl.OpenIGTLinkClient(host="127.0.0.1", port=port)
    lat, received, t_all_sent = [], 0, None
    deadline = time.monotonic() + 30 + total / fps
    while received < total and time.monotonic() < deadline:
        msgs = client.get_latest_messages()
        t = time.monotonic()
        for m in msgs:
            if received >= warmup:
                lat.append(t - m.timestamp)
            received += 1
            if m.image.size != image.size:
                raise RuntimeError(f"pyigtl delivered a {m.image.shape} image for {image.shape}")
        if not msgs:
            time.sleep(0.0002)
        if t_all_sent is None and not results.empty():  # the server has sent everything
            t_all_sent = time.monotonic()
        if (t_all_sent is not None and time.monotonic() - t_all_sent > 1.0) or not proc.is_alive():
            break  # pyigtl keeps only the newest message per device: coalesced ones never arrive
    done.set()
    proc.join(30)
    client.stop()
    return {"fps": fps, "sent": total, "received": received, "latency": percentiles_ms(lat)}
