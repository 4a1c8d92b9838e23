"""The live view's HTTP and websocket server, spoken to by a real websocket client against a running
service (sim probe): page and headers, frames and overlays, latest-wins, commands reaching the
service, hostile clients, token, origin, display latency in ``mmstream status``."""

import contextlib
import json
import struct
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from mmstream.cli import main
from mmstream.config import load_config
from mmstream.errors import ConfigError
from mmstream.service import Service
from mmstream.web import admission
from mmstream.web import server as web_server
from test_graph import RANDOM_TCP, wait_for

SIM = [{"driver": "sim", "stream_id": "sim", "fps": 30}]


def ws_url(svc) -> str:
    return svc.web.url.replace("http://", "ws://") + "ws"


def recv_until(ws, want, timeout_s=10.0):
    """Receive messages until ``want(msg)`` (msg: dict for text, bytes for binary); returns it."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        raw = ws.recv(timeout=max(0.01, deadline - time.monotonic()))
        msg = raw if isinstance(raw, bytes) else json.loads(raw)
        if want(msg):
            return msg
    raise AssertionError("timed out waiting for a message")


def recv_all(ws, *wants, timeout_s=10.0):
    """Receive until every predicate in ``wants`` has matched a message, in any order (a reply and the
    broadcast it causes race); returns the matching messages in the order of ``wants``."""
    import time

    found: dict[int, object] = {}
    deadline = time.monotonic() + timeout_s
    while len(found) < len(wants) and time.monotonic() < deadline:
        raw = ws.recv(timeout=max(0.01, deadline - time.monotonic()))
        msg = raw if isinstance(raw, bytes) else json.loads(raw)
        for k, want in enumerate(wants):
            if k not in found and want(msg):
                found[k] = msg
                break
    if len(found) < len(wants):
        raise AssertionError(f"timed out; matched {sorted(found)} of {len(wants)} predicates")
    return [found[k] for k in range(len(wants))]


def is_type(t):
    return lambda m: isinstance(m, dict) and m.get("type") == t


def parse_packet(data: bytes):
    assert data[:4] == b"MMF1"
    (n,) = struct.unpack("<I", data[4:8])
    return json.loads(data[8 : 8 + n]), cv2.imdecode(np.frombuffer(data[8 + n :], np.uint8), cv2.IMREAD_GRAYSCALE)


@pytest.fixture(scope="module")
def svc():
    cfg = load_config(None, endpoints=RANDOM_TCP, web={"port": 0}, sources=SIM)
    with Service(cfg) as s:
        yield s


@pytest.fixture()
def page(svc):
    with connect(ws_url(svc), max_size=2**24) as ws:
        ws.send(json.dumps({"cmd": "hello"}))
        hello = recv_until(ws, is_type("hello"))
        assert hello["token_required"] is False
        yield ws


def test_page_is_served_with_security_headers_and_nothing_else(svc):
    with urllib.request.urlopen(svc.web.url, timeout=5) as r:
        body = r.read().decode()
        assert r.status == 200 and "mmstream" in body and 'src="/app.js"' in body
        assert "default-src 'self'" in r.headers["Content-Security-Policy"]
        assert r.headers["Cache-Control"] == "no-store" and r.headers["X-Content-Type-Options"] == "nosniff"
    for path in ("app.js", "style.css"):
        with urllib.request.urlopen(svc.web.url + path, timeout=5) as r:
            assert r.status == 200 and len(r.read()) > 500
    for path in ("nope", "../pyproject.toml", "static/app.js", "ws?patient=x"):
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(svc.web.url + path, timeout=5)
        assert exc.value.code in (400, 404, 426)


def test_frames_and_overlays_arrive_latest_wins(svc, page):
    data = recv_until(page, lambda m: isinstance(m, bytes))
    meta, img = parse_packet(data)
    assert meta["stream_id"] == "sim" and meta["shape"] == [512, 512] and img.shape == (512, 512)
    assert meta["spacing_mm"] == [0.1, 0.1] and meta["t_frame_s"] > 0
    ov = recv_until(page, is_type("metrics"))
    assert ov["thickness"]["thickness_mm"] > 0 and ov["deep_rc"] and ov["echogenicity"]["mean"] > 0
    # never reported painted: at most WINDOW frames are sent until the ack timeout
    frames = [data]
    import time

    t_end = time.monotonic() + 0.6 * web_server.ACK_TIMEOUT_S
    while time.monotonic() < t_end:
        try:
            raw = page.recv(timeout=max(0.01, t_end - time.monotonic()))
        except TimeoutError:
            break
        if isinstance(raw, bytes):
            frames.append(raw)
    assert len(frames) <= web_server.WINDOW
    # once painted, the newest frame follows, skipping what the page could not show
    last = parse_packet(frames[-1])[0]
    for f in frames:
        m = parse_packet(f)[0]
        page.send(json.dumps({"cmd": "painted", "stream_id": "sim", "seq": m["seq"], "latency_ms": 12.5}))
    newer = parse_packet(recv_until(page, lambda m: isinstance(m, bytes)))[0]
    assert newer["seq"] > last["seq"]
    assert svc.graph.status()["web"]["counters"]["frames_not_sent"] > 0


def test_seed_roi_and_context_reach_the_service(svc, page):
    recv_until(page, lambda m: isinstance(m, bytes))  # a frame is shown: its shape bounds the seed
    for k, at in enumerate(([600, 20], [511.5, 256])):  # the sim frame is 512x512: centres 0..511
        page.send(json.dumps({"cmd": "set_seed", "seed_rc": at, "id": 1 + 10 * k}))
        rep = recv_until(page, is_type("reply"))
        assert rep["ok"] is False and rep["reason"] == "outside_image" and rep["id"] == 1 + 10 * k
    truth = recv_until(page, is_type("metrics"))["annotations"]
    seed = [truth["truth_nerve_row"], truth["truth_nerve_col"]]
    page.send(json.dumps({"cmd": "set_seed", "seed_rc": seed, "id": 2}))
    rep = recv_until(page, is_type("reply"))
    assert rep["ok"] and rep["id"] == 2 and svc.graph.settings.get("sim").seed_rc == tuple(seed)
    ov = recv_until(page, lambda m: is_type("metrics")(m) and m["csa"] is not None)
    contour = np.array(ov["contour_rc"])
    assert np.hypot(*(contour.mean(axis=0) - seed)) < 15
    assert ov["csa"]["area_mm2"] == pytest.approx(ov["annotations"]["truth_nerve_area_mm2"], rel=0.25)
    page.send(json.dumps({"cmd": "set_roi", "roi": [20, 30, 400, 500], "id": 3}))
    assert recv_until(page, is_type("reply"))["ok"]
    assert recv_until(page, lambda m: is_type("metrics")(m) and m["roi"] == [20, 30, 400, 500])
    page.send(json.dumps({"cmd": "set_roi", "roi": None}))
    page.send(json.dumps({"cmd": "set_context", "clinical": {"patient_id": "PSEUDO-7", "site": "median_nerve", "side": "left"}}))
    ctx = recv_until(page, is_type("context"))
    assert ctx["clinical"]["site"] == "median_nerve" and svc.graph.settings.get("sim").clinical.patient_id == "PSEUDO-7"


def test_line_clicks_reach_the_service_and_null_clears_them(svc, page):
    settings = lambda: svc.graph.settings.get("sim")  # noqa: E731
    rejected = lambda: svc.graph.status()["web"]["rejected"].get("outside_image", 0)  # noqa: E731
    recv_until(page, lambda m: isinstance(m, bytes))  # a frame is shown: its shape (512x512) bounds the click
    before, outside = settings(), rejected()
    for k, at in enumerate(([512, 20], [20, 512.5], [16000, 16000])):
        page.send(json.dumps({"cmd": "set_line", "line": "deep", "at_rc": at, "id": 10 + k}))
        rep = recv_until(page, is_type("reply"))
        assert (rep["ok"], rep["reason"], rep["id"], rep["cmd"]) == (False, "outside_image", 10 + k, "set_line")
    assert rejected() == outside + 3 and settings() == before  # counted, and nothing reached the service
    page.send(json.dumps({"cmd": "set_line", "line": "deep", "at_rc": [350.5, 256], "id": 20}))
    rep = recv_until(page, is_type("reply"))
    assert rep["ok"] and rep["id"] == 20 and rep["data"]["lines_version"] == before.lines_version + 1
    cfg = settings()
    assert cfg.deep_at_rc == (350.5, 256.0) and cfg.superficial_at_rc == before.superficial_at_rc
    assert cfg.seed_version == before.seed_version and cfg.lines_version == before.lines_version + 1
    page.send(json.dumps({"cmd": "set_line", "line": "superficial", "at_rc": [120, 300], "id": 21}))
    assert recv_until(page, is_type("reply"))["ok"]
    assert settings().superficial_at_rc == (120.0, 300.0) and settings().deep_at_rc == (350.5, 256.0)
    for k, line in enumerate(("superficial", "deep")):
        page.send(json.dumps({"cmd": "set_line", "line": line, "at_rc": None, "id": 30 + k}))
        rep = recv_until(page, is_type("reply"))
        assert rep["ok"] and rep["id"] == 30 + k
    cfg = settings()
    assert cfg.superficial_at_rc is None and cfg.deep_at_rc is None and cfg.lines_version == before.lines_version + 4
    seq = recv_until(page, is_type("metrics"))["seq"]
    ov = recv_until(page, lambda m: is_type("metrics")(m) and m["seq"] > seq + 2)  # found automatically again
    assert ov["thickness"]["thickness_mm"] > 0 and ov["thickness"]["deep_at_rc"] is None and ov["deep_rc"]


def test_point_commands_before_any_frame_are_refused():
    cfg = load_config(None, endpoints=RANDOM_TCP, web={"port": 0})  # no source: nothing to click on
    with Service(cfg) as svc, connect(ws_url(svc)) as ws:
        ws.send(json.dumps({"cmd": "hello"}))
        recv_until(ws, is_type("hello"))
        points = ({"cmd": "set_seed", "seed_rc": [10, 10]}, {"cmd": "set_line", "line": "deep", "at_rc": [10, 10]})
        for k, cmd in enumerate(points):
            ws.send(json.dumps({**cmd, "id": k}))
            rep = recv_until(ws, is_type("reply"))
            assert (rep["ok"], rep["reason"], rep["id"]) == (False, "no_frame", k)
        ws.send(json.dumps({"cmd": "set_line", "line": "deep", "at_rc": None, "id": 5}))  # needs no frame, but a stream
        rep = recv_until(ws, is_type("reply"))
        assert (rep["ok"], rep["reason"], rep["id"]) == (False, "no_stream", 5)


def test_an_roi_is_bounded_by_the_rows_and_the_columns_of_a_wide_frame():
    """A 64 x 128 frame (rows x columns): an ROI as wide as the frame goes to the service; one column
    more, or one row more, is refused before it."""
    from mmstream.source import FrameSender, SourceFrame

    cfg = load_config(None, endpoints=RANDOM_TCP, web={"port": 0})
    with Service(cfg) as svc:
        with FrameSender(svc.graph.endpoints["ingest"], "wide") as snd:
            snd.send(SourceFrame(image=np.full((64, 128), 90, np.uint8)))
        wait_for(lambda: svc.web.live.frame("wide") is not None, what="the wide frame in the live view")
        with connect(ws_url(svc)) as ws:
            ws.send(json.dumps({"cmd": "hello", "stream_id": "wide"}))
            assert recv_until(ws, is_type("hello"))["stream_id"] == "wide"
            for k, roi in enumerate(([0, 0, 64, 129], [0, 0, 65, 128])):
                ws.send(json.dumps({"cmd": "set_roi", "roi": roi, "id": k}))
                rep = recv_until(ws, is_type("reply"))
                assert (rep["ok"], rep["reason"], rep["id"]) == (False, "outside_image", k)
            assert svc.graph.settings.get("wide").roi is None  # nothing reached the service
            ws.send(json.dumps({"cmd": "set_roi", "roi": [0, 10, 64, 128], "id": 5}))
            rep = recv_until(ws, is_type("reply"))
            assert (rep["ok"], rep["id"]) == (True, 5) and svc.graph.settings.get("wide").roi == (0, 10, 64, 128)


def test_capture_goes_to_the_service_and_the_page_sees_the_captured_frames(svc, page):
    from mmstream.codec import decode
    from mmstream.transport import make_socket

    events = make_socket("sub", svc.graph.endpoints["metrics"], bind=False, subscribe=("event.",))
    page.send(json.dumps({"cmd": "set_context", "clinical": {"patient_id": "PSEUDO-8", "site": "tibialis_anterior", "side": "right"}}))
    recv_until(page, is_type("context"))
    recv_until(page, lambda m: is_type("captures")(m) and m["captures"] == [])
    for i in range(3):
        page.send(json.dumps({"cmd": "capture", "id": 10 + i}))
        reply, caps = recv_all(page, lambda m: is_type("reply")(m) and m["id"] == 10 + i,
                               lambda m: is_type("captures")(m) and len(m["captures"]) == i + 1)  # fmt: skip
        assert reply["ok"]
    assert caps["complete"] and caps["mean"]["thickness_mm"] > 0 and caps["per_site"] == 3
    try:
        ev = None
        while ev is None or ev.reason != "capture":
            ev = decode(events.recv(timeout_ms=5000)).header
    finally:
        events.close()
    assert ev.node == "control" and ev.stream_id == "sim" and "PSEUDO-8" not in ev.message


def test_hostile_client_messages_are_refused_counted_and_closed(svc):
    rejected = lambda: svc.graph.status()["web"]["rejected"]  # noqa: E731
    before = dict(rejected())
    with connect(ws_url(svc)) as ws:
        ws.send(json.dumps({"cmd": "hello"}))
        recv_until(ws, is_type("hello"))
        for bad, reason in [
            ("{not json", "malformed_json"),
            ('{"cmd": "set_seed", "seed_rc": "here"}', "invalid_command"),
            ('{"cmd": "format_disk"}', "unknown_command"),
            (b"\x00\x01binary", "binary_message"),
            ('{"cmd": "select_stream", "stream_id": "ghost"}', "unknown_stream"),
            ('{"cmd": "hello"}', "repeated_hello"),
        ]:
            ws.send(bad)
            err = recv_until(ws, is_type("error"))
            assert err["reason"] == reason
        ws.send(json.dumps({"cmd": "clock", "t_page_ms": 5.0}))  # still served after refusals
        assert recv_until(ws, is_type("clock"))["t_page_ms"] == 5.0
        ws.send(json.dumps({"cmd": "capture", "pad": "x" * 10000}))  # over max_message_bytes: closed at once
        with pytest.raises(ConnectionClosed) as exc:
            recv_until(ws, lambda m: False)
        assert exc.value.rcvd.code == 1009
    with connect(ws_url(svc)) as ws:  # text that is not UTF-8: the websocket layer closes (1007), counted
        ws.send(json.dumps({"cmd": "hello"}))
        recv_until(ws, is_type("hello"))
        ws.send(b'{"cmd":"clock","t_page_ms":\xff}', text=True)
        with pytest.raises(ConnectionClosed) as exc:
            recv_until(ws, lambda m: False)
        assert exc.value.rcvd.code == 1007
    wait_for(lambda: rejected().get("invalid_utf8", 0) > before.get("invalid_utf8", 0), what="invalid_utf8 counted")
    with connect(ws_url(svc)) as ws:  # a flood of invalid messages ends the connection
        ws.send(json.dumps({"cmd": "hello"}))
        with pytest.raises(ConnectionClosed) as exc:
            for _ in range(web_server.MAX_REJECTS + 5):
                ws.send("[]")
            recv_until(ws, lambda m: False)
        assert exc.value.rcvd.code == 1008
    with connect(ws_url(svc)) as ws:  # no hello first
        ws.send(json.dumps({"cmd": "capture"}))
        with pytest.raises(ConnectionClosed) as exc:
            recv_until(ws, lambda m: False)
        assert exc.value.rcvd.code == 1008
    after = wait_for(lambda: rejected() if rejected().get("too_large", 0) > before.get("too_large", 0) else None,
                     what="the oversized message counted")  # fmt: skip
    for reason in ("malformed_json", "invalid_command", "unknown_command", "binary_message", "no_hello"):
        assert after.get(reason, 0) > before.get(reason, 0), reason
    with pytest.raises(InvalidStatus) as exc:  # another site's page in the same browser
        connect(ws_url(svc), origin="http://evil.example")
    assert exc.value.response.status_code == 403


def _raw_http(svc, request: bytes) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", svc.web.server.port), timeout=5) as s:
        s.sendall(request)
        return s.recv(200).split(b"\r\n")[0]


UPGRADE = b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"


def test_foreign_host_names_and_malformed_headers_are_refused(svc):
    """Without a token the view answers only to loopback names (a DNS-rebinding page reaches
    127.0.0.1 under its own name); malformed or repeated Host/Origin headers are a 400, counted."""
    port = svc.web.server.port
    rejected = lambda: svc.graph.status()["web"]["rejected"]  # noqa: E731
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", "localhost:9000"):  # 9000: an SSH tunnel
        assert _raw_http(svc, f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()).endswith(b"200 OK")
    for host in (f"attacker.example:{port}", f"127.0.0.1.attacker.example:{port}", f"localhost.attacker.example:{port}"):
        assert b"403" in _raw_http(svc, f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    with pytest.raises(InvalidStatus) as exc:  # the websocket too, even with a matching Origin
        import socket

        sock = socket.create_connection(("127.0.0.1", port))
        connect(f"ws://attacker.example:{port}/ws", sock=sock, origin=f"http://attacker.example:{port}")
    assert exc.value.response.status_code == 403 and rejected()["bad_host"] >= 4
    host = f"Host: 127.0.0.1:{port}\r\n".encode()
    for extra in (b"Origin: http://[\r\n", b"Origin: http://a\r\nOrigin: http://b\r\n", host):
        assert b"400" in _raw_http(svc, b"GET /ws HTTP/1.1\r\n" + host + extra + UPGRADE + b"\r\n")
    assert rejected()["bad_header"] >= 3


def _hold(port, n, source="127.0.0.1", request=b"GET /ws HTTP/1.1\r\n"):
    """``n`` TCP connections from address ``source`` that send ``request`` (by default the start of
    an HTTP request whose headers never end, as a slowloris does) and then nothing."""
    import socket

    held = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), source_address=(source, 0), timeout=5)
        if request:
            s.sendall(request)
        held.append(s)
    return held


def _closed_by_server(s) -> bool:
    """Whether the server has closed (or reset) TCP connection ``s`` (within its timeout)."""
    try:
        while s.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _raw_page(port, hello=b'{"cmd":"hello"}'):
    """A websocket page on a plain socket (it reads only the 101 answer): upgrade, then ``hello``."""
    import socket

    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode() + UPGRADE + b"\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101")
    s.sendall(_ws_frame(0x1, hello))
    return s


def _ws_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A masked client frame (payloads under 126 bytes)."""
    import os

    mask = os.urandom(4)
    masked = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
    return bytes([(0x80 if fin else 0) | opcode, 0x80 | len(payload)]) + mask + masked


def _tls_files(tmp_path):
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl command missing")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)  # fmt: skip
    return cert, key


def test_connections_are_bounded_from_accept(monkeypatch):
    """Idle TCP connections beyond max_clients + MAX_PENDING are closed at once; upgrades racing
    past the page check still leave at most max_clients pages."""
    monkeypatch.setattr(admission, "PENDING_GRACE_S", 60.0)  # none of the idle ones is old enough to make room
    cfg = load_config(None, endpoints=RANDOM_TCP, web={"port": 0, "max_clients": 2})
    with Service(cfg) as svc:
        rejected = lambda: svc.graph.status()["web"]["rejected"]  # noqa: E731
        peers = [f"127.0.0.{k}" for k in range(2, 6)]  # within the per-peer bound each, beyond the total together
        idle = [s for p in peers for s in _hold(svc.web.server.port, 6, p, request=b"")]
        wait_for(lambda: rejected().get("too_many_connections", 0) >= 24 - 18, what="refusals")
        for s in idle:
            s.close()
        with contextlib.ExitStack() as stack:
            conns = [stack.enter_context(connect(ws_url(svc))) for _ in range(4)]  # all upgraded before any hello
            for ws in conns:
                ws.send(json.dumps({"cmd": "hello"}))
            replies = [recv_until(ws, lambda m: isinstance(m, dict) and m.get("type") in ("hello", "error")) for ws in conns]
            assert sorted(r["type"] for r in replies) == ["error", "error", "hello", "hello"]
            assert svc.graph.status()["web"]["pages"] == 2


def test_tls_connections_are_counted_and_bounded_at_accept(tmp_path, monkeypatch, caplog):
    """With TLS, idle connects that never start the handshake are counted and bounded from
    accept like plain ones (before, only once past the TLS handshake: unbounded). One address
    holds at most MAX_PENDING_PER_PEER pending connections (a new one closes its oldest, in its
    handshake: no error logged); all of them, max_clients + MAX_PENDING (beyond, with none pending
    long, the new one is reset at once). Once the idle ones are gone, a page connects."""
    import gc
    import logging
    import ssl

    monkeypatch.setattr(admission, "PENDING_GRACE_S", 60.0)  # none of the idle ones is old enough to make room
    cert, key = _tls_files(tmp_path)
    token = "tls-token-0123456789abcdef"
    cfg = load_config(None, endpoints=RANDOM_TCP, web={"port": 0, "max_clients": 2, "token": token,
                                                       "tls_cert_file": str(cert), "tls_key_file": str(key)})  # fmt: skip
    with Service(cfg) as svc:
        server, port = svc.web.server, svc.web.server.port
        rejected = lambda: svc.graph.status()["web"]["rejected"]  # noqa: E731
        one_peer = _hold(port, admission.MAX_PENDING_PER_PEER + 4, "127.0.0.2", request=b"")
        wait_for(lambda: rejected().get("too_many_from_peer", 0) == 4, what="the address's oldest closed")
        for s in one_peer[:4]:
            s.settimeout(1.0)  # closed at once, not after the 5 s handshake timeout
        assert sum(_closed_by_server(s) for s in one_peer[:4]) == 4
        others = [s for p in ("127.0.0.3", "127.0.0.4") for s in _hold(port, 7, p, request=b"")]
        wait_for(lambda: rejected().get("too_many_connections", 0) == 8 + 14 - 18, what="refusals beyond the total")
        for s in others[-4:]:
            s.settimeout(1.0)
        assert sum(_closed_by_server(s) for s in others[-4:]) == 4
        assert server._admission.connections == 2 + admission.MAX_PENDING
        for s in one_peer + others:
            s.close()
        wait_for(lambda: server._admission.connections == 0, what="the idle connections uncounted")
        trust = ssl.create_default_context(cafile=str(cert))
        with connect(svc.web.url.replace("https://", "wss://") + "ws", ssl=trust) as ws:
            ws.send(json.dumps({"cmd": "hello", "token": token}))
            assert recv_until(ws, is_type("hello"))["token_required"] is True
    gc.collect()  # a failed handshake task would report its exception when collected
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_slow_connections_do_not_lock_pages_out():
    """Slowloris: connections holding half-sent headers. One address holds at most
    MAX_PENDING_PER_PEER of them; a new connection from that address (even the same machine's
    browser) closes its oldest one and gets its page. Before, 20 of them took every slot and a new
    page was reset (too_many_connections)."""
    cfg = load_config(None, endpoints=RANDOM_TCP, web={"port": 0, "max_clients": 2}, sources=SIM)
    with Service(cfg) as svc:
        rejected = lambda: svc.graph.status()["web"]["rejected"]  # noqa: E731
        slow = _hold(svc.web.server.port, 20)
        for _ in range(4):
            with connect(ws_url(svc), open_timeout=5) as ws:
                ws.send(json.dumps({"cmd": "hello"}))
                assert recv_until(ws, is_type("hello"))["stream_id"] in (None, "sim")
                recv_until(ws, lambda m: isinstance(m, bytes))  # and frames come
        # 12 closed as the 20 came, 1 for the first page (the others found a place: 7 slow ones pending)
        assert rejected().get("too_many_from_peer", 0) == 12 + 1 and rejected().get("too_many_connections", 0) == 0
        assert sum(_closed_by_server(s) for s in slow[:13]) == 13
        for s in slow:
            s.close()


def test_a_page_that_takes_no_data_is_dropped_and_a_slow_one_is_not(svc, monkeypatch):
    """A page that says hello and then reads nothing (a frozen tab, a tablet asleep) does not answer
    pings: it is dropped within PING_INTERVAL_S + PONG_TIMEOUT_S (before: once the kernel's socket
    buffers had filled, after about 20 s). A page that reads but never reports a paint (a hidden
    tab) and pauses its reading for less than PONG_TIMEOUT_S stays, and other pages stream on."""
    import threading
    import time

    monkeypatch.setattr(web_server, "PING_INTERVAL_S", 0.2, raising=False)
    monkeypatch.setattr(web_server, "PONG_TIMEOUT_S", 1.0, raising=False)
    status = lambda: svc.graph.status()["web"]  # noqa: E731
    before = status()["rejected"].get("stalled", 0)
    with connect(ws_url(svc), max_size=2**24) as live:
        live.send(json.dumps({"cmd": "hello"}))
        recv_until(live, is_type("hello"))
        stop, frames = threading.Event(), []

        def read_with_pauses():  # never reports painted; stops reading for 0.5 s every 0.5 s
            while not stop.is_set():
                t_end = time.monotonic() + 0.5
                while time.monotonic() < t_end:
                    with contextlib.suppress(TimeoutError):
                        if isinstance(live.recv(timeout=0.1), bytes):
                            frames.append(time.monotonic())
                stop.wait(0.5)

        reader = threading.Thread(target=read_with_pauses)
        reader.start()
        try:
            stalled = _raw_page(svc.web.server.port)
            wait_for(lambda: status()["pages"] == 2, what="the stalled page connected")
            t0 = time.monotonic()
            wait_for(lambda: status()["pages"] == 1, timeout_s=4.0, what="the stalled page dropped")
            assert time.monotonic() - t0 < 0.2 + 1.0 + 1.0
            assert status()["rejected"].get("stalled", 0) == before + 1
            stalled.settimeout(5)
            assert _closed_by_server(stalled)
            t1 = time.monotonic()
            wait_for(lambda: frames and frames[-1] - t1 > 3.0, timeout_s=6.0, what="a frame 3 s later")
        finally:
            stop.set()
            reader.join()
        assert status()["rejected"].get("stalled", 0) == before + 1  # the slow page stayed
        live.send(json.dumps({"cmd": "clock", "t_page_ms": 7.0}))
        assert recv_until(live, is_type("clock"))["t_page_ms"] == 7.0


def test_the_real_close_reason_is_counted_while_a_send_waits(svc):
    """Pages that send a message over max_message_bytes (in 120-byte fragments) right after hello
    and then neither read nor close: the server fails each connection with 1009 while its sends to
    the page are under way, and counts ``too_large`` for each (before, a send's own 2 s timeout
    often expired first: counted ``send_timeout``, and the 1009 was lost)."""
    rejected = lambda: svc.graph.status()["web"]["rejected"]  # noqa: E731
    before = dict(rejected())
    oversized = b"".join(_ws_frame(0x1 if i == 0 else 0x0, b" " * 120, fin=i == 39) for i in range(40))
    pages = [_raw_page(svc.web.server.port) for _ in range(5)]
    for s in pages:
        s.sendall(oversized)
    for s in pages:
        assert _closed_by_server(s)
    delta = lambda key: rejected().get(key, 0) - before.get(key, 0)  # noqa: E731
    wait_for(lambda: delta("too_large") == 5, what="5 too_large")
    assert delta("send_timeout") == 0 and delta("stalled") == 0
    for s in pages:
        s.close()


def test_paint_reports_count_once_for_frames_sent_to_the_page(svc, page):
    """A ``painted`` report counts once, for a frame sent to that page: the display figures of
    ``mmstream status`` are the page's paints, not what it claims; a report of a frame never sent
    to the page, or reported already, is refused (and a flood of them closes the page, 1008)."""
    status = lambda: svc.graph.status()["web"]  # noqa: E731
    painted = lambda: status()["display"].get("sim", {}).get("frames", 0)  # noqa: E731
    meta = parse_packet(recv_until(page, lambda m: isinstance(m, bytes)))[0]
    report = {"cmd": "painted", "stream_id": "sim", "seq": meta["seq"], "latency_ms": 30.0}
    frames0 = painted()
    page.send(json.dumps(report))
    wait_for(lambda: painted() == frames0 + 1, what="the paint counted")
    page.send(json.dumps(report))  # the same frame again
    err = recv_until(page, is_type("error"))
    assert err["reason"] == "unknown_frame"
    page.send(json.dumps({**report, "seq": meta["seq"] + 10**6}))  # a frame never sent
    assert recv_until(page, is_type("error"))["reason"] == "unknown_frame"
    assert painted() == frames0 + 1
    with connect(ws_url(svc), max_size=2**24) as flood:  # a flood of forged reports: refused, closed
        flood.send(json.dumps({"cmd": "hello"}))
        recv_until(flood, is_type("hello"))
        with pytest.raises(ConnectionClosed) as exc:
            for _ in range(web_server.MAX_REJECTS + 5):
                flood.send(json.dumps({**report, "seq": meta["seq"] + 10**6}))
            recv_until(flood, lambda m: False)
        assert exc.value.rcvd.code == 1008
    assert painted() == frames0 + 1


def test_a_page_flooding_messages_is_throttled_and_others_stream_on(svc, page):
    """A page's messages are handled at most MAX_MESSAGES_PER_S a second (as many at once): valid,
    answered ``clock`` messages sent as fast as possible take their time, and meanwhile another
    page gets its frames (before, a flood was read as fast as it came, starving the others)."""
    import time

    status = lambda: svc.graph.status()["web"]  # noqa: E731
    n = 2 * web_server.MAX_MESSAGES_PER_S + 100  # one burst, then the rate
    throttled = status()["counters"].get("throttled", 0)
    with connect(ws_url(svc), max_size=2**24) as busy:
        busy.send(json.dumps({"cmd": "hello"}))
        recv_until(busy, is_type("hello"))
        t0 = time.monotonic()
        for k in range(n):
            busy.send(json.dumps({"cmd": "clock", "t_page_ms": float(k)}))
        seen = []  # the good page's frames meanwhile, reported painted
        while True:
            m = recv_until(busy, lambda m: is_type("clock")(m) or isinstance(m, bytes), timeout_s=20)
            if isinstance(m, dict) and m["t_page_ms"] == n - 1:
                break
            try:
                raw = page.recv(timeout=0)
            except TimeoutError:
                continue
            if isinstance(raw, bytes):
                seen.append(time.monotonic())
                m = parse_packet(raw)[0]
                page.send(json.dumps({"cmd": "painted", "stream_id": "sim", "seq": m["seq"], "latency_ms": None}))
        elapsed = time.monotonic() - t0
    assert elapsed >= (n - web_server.MAX_MESSAGES_PER_S) / web_server.MAX_MESSAGES_PER_S * 0.9
    assert status()["counters"].get("throttled", 0) > throttled
    assert len(seen) >= 10 * elapsed  # the good page: >= 10 fps of a 30 fps source meanwhile


def test_taps_outside_the_image_never_close_the_connection(svc, page):
    """A misplaced tap is answered (``outside_image``, counted in ``rejected``) but does not count
    toward the MAX_REJECTS that close a connection: a bedside user keeps the view."""
    recv_until(page, lambda m: isinstance(m, bytes))
    for k in range(web_server.MAX_REJECTS + 5):
        page.send(json.dumps({"cmd": "set_seed", "seed_rc": [9000, 9000], "id": k}))
        rep = recv_until(page, lambda m: is_type("reply")(m) and m["id"] == k)
        assert rep["reason"] == "outside_image"
    page.send(json.dumps({"cmd": "clock", "t_page_ms": 3.0}))
    assert recv_until(page, is_type("clock"))["t_page_ms"] == 3.0


def test_only_get_and_head_are_served(svc):
    """GET serves a file; HEAD answers its headers (Content-Length included) without the body;
    any other method is a 405 with Allow (``/ws``: GET only), counted ``bad_method``."""
    import socket

    def ask(method, path):
        with socket.create_connection(("127.0.0.1", svc.web.server.port), timeout=5) as s:
            s.sendall(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{svc.web.server.port}\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        return lines[0], dict(line.split(": ", 1) for line in lines[1:]), body

    before = svc.graph.status()["web"]["rejected"].get("bad_method", 0)
    status, headers, body = ask("GET", "/app.js")
    assert status == "HTTP/1.1 200 OK" and int(headers["Content-Length"]) == len(body) > 500
    status, head_headers, head_body = ask("HEAD", "/app.js")
    assert status == "HTTP/1.1 200 OK" and head_body == b"" and head_headers == headers
    for method in ("POST", "PUT", "DELETE", "PATCH", "TRACE", "OPTIONS", "FOO"):
        status, headers, body = ask(method, "/app.js")
        assert status == "HTTP/1.1 405 Method Not Allowed" and headers["Allow"] == "GET, HEAD", method
        assert b"mmstream" not in body and headers["X-Frame-Options"] == "DENY"
    for method in ("POST", "HEAD"):
        status, headers, _ = ask(method, "/ws")
        assert status == "HTTP/1.1 405 Method Not Allowed" and headers["Allow"] == "GET"
    assert svc.graph.status()["web"]["rejected"]["bad_method"] == before + 9


def test_token_is_required_and_checked(monkeypatch):
    monkeypatch.setattr(web_server, "HELLO_TIMEOUT_S", 0.5)
    token = "bedside-token-0123456789"
    cfg = load_config(None, endpoints=RANDOM_TCP, web={"port": 0, "token": token})
    with Service(cfg) as svc:
        for hello in ({"cmd": "hello"}, {"cmd": "hello", "token": "bedside-token-0123456788"}, None):
            with connect(ws_url(svc)) as ws:
                if hello is not None:
                    ws.send(json.dumps(hello))
                err = recv_until(ws, is_type("error"))
                with pytest.raises(ConnectionClosed) as exc:
                    ws.recv(timeout=5)
                assert exc.value.rcvd.code == 1008
                assert err["reason"] == ("no_hello" if hello is None else "unauthorized")
        with connect(ws_url(svc)) as ws:
            ws.send(json.dumps({"cmd": "hello", "token": token}))
            assert recv_until(ws, is_type("hello"))["token_required"] is True
        assert svc.graph.status()["web"]["rejected"]["unauthorized"] == 2


def test_display_latency_reaches_mmstream_status(svc, page, capsys):
    for k in range(5):  # each frame received, reported painted
        meta = parse_packet(recv_until(page, lambda m: isinstance(m, bytes)))[0]
        page.send(json.dumps({"cmd": "painted", "stream_id": "sim", "seq": meta["seq"], "latency_ms": 20.0 + k}))
    wait_for(lambda: svc.graph.status()["web"]["display"].get("sim", {}).get("frames", 0) >= 5, what="paint reports")
    assert main(["status", "--control", svc.graph.endpoints["control"]]) == 0
    out = capsys.readouterr().out
    assert f"live view {svc.web.url}" in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("display "))
    row = lines[header + 1].split()
    assert row[0] == "sim" and 12 <= float(row[3]) <= 24  # display p50 ms of what the page reported


def test_web_port_in_use_is_a_clear_error(svc):
    cfg = load_config(None, endpoints=RANDOM_TCP, web={"port": svc.web.server.port})
    with pytest.raises(ConfigError, match="web view"):
        Service(cfg).start()


def test_tls_serves_https_and_wss(tmp_path):
    import ssl

    cert, key = _tls_files(tmp_path)
    token = "tls-token-0123456789abcdef"
    cfg = load_config(None, endpoints=RANDOM_TCP, web={"port": 0, "token": token, "tls_cert_file": str(cert), "tls_key_file": str(key)})
    trust = ssl.create_default_context(cafile=str(cert))
    with Service(cfg) as svc:
        assert svc.web.url.startswith("https://127.0.0.1:")
        with urllib.request.urlopen(svc.web.url, context=trust, timeout=5) as r:
            assert r.status == 200
        with connect(svc.web.url.replace("https://", "wss://") + "ws", ssl=trust) as ws:
            ws.send(json.dumps({"cmd": "hello", "token": token}))
            assert recv_until(ws, is_type("hello"))["token_required"] is True
        with pytest.raises(Exception):  # plain websocket to a TLS port
            connect(ws_url(svc).replace("https://", "ws://"), open_timeout=3)
    with pytest.raises(ConfigError, match="web.tls_cert_file and web.tls_key_file"):
        load_config(None, web={"tls_cert_file": str(cert)})
    bad = load_config(None, endpoints=RANDOM_TCP, web={"port": 0, "tls_cert_file": str(key), "tls_key_file": str(key)})
    with pytest.raises(ConfigError, match="TLS"):
        Service(bad).start()


def test_serve_prints_the_live_view_address(tmp_path):
    import re
    import shutil
    import signal
    import subprocess

    cfg = tmp_path / "serve.toml"
    cfg.write_text('[endpoints]\ningest = "tcp://127.0.0.1:*"\nmetrics = "tcp://127.0.0.1:*"\ncontrol = "tcp://127.0.0.1:*"\n'
                   "[web]\nport = 0\n")  # fmt: skip
    proc = subprocess.Popen([shutil.which("mmstream"), "serve", "--config", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        proc.stdout.readline()
        url = re.match(r"mmstream serve: live view (http://127\.0\.0\.1:\d+/)$", proc.stdout.readline().strip()).group(1)
        with urllib.request.urlopen(url, timeout=5) as r:
            assert r.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_curve_secured_control_needs_and_uses_the_web_client_key(tmp_path, sim_probe):
    from mmstream.source import FrameSender
    from mmstream.transport import Curve, make_keys

    _, server_sec = make_keys(tmp_path / "server", "server")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    secret = {}
    for name in ("web", "driver"):
        pub, secret[name] = make_keys(tmp_path / "clients", name)
        (allowed / pub.name).write_bytes(pub.read_bytes())
    security = {"server_secret_key_file": str(server_sec), "allowed_clients_dir": str(allowed)}
    with pytest.raises(ConfigError, match="control_client_secret_key_file"):
        Service(load_config(None, endpoints=RANDOM_TCP, security=security, web={"port": 0})).start()
    missing = {"port": 0, "control_client_secret_key_file": str(tmp_path / "missing.key_secret")}
    with pytest.raises(ConfigError, match="cannot load CURVE key"):  # at start, not as taps that go nowhere
        Service(load_config(None, endpoints=RANDOM_TCP, security=security, web=missing)).start()
    cfg = load_config(None, endpoints=RANDOM_TCP, security=security,
                      web={"port": 0, "control_client_secret_key_file": str(secret["web"])})  # fmt: skip
    driver = Curve(secret_key_file=secret["driver"], server_key_file=server_sec)
    with Service(cfg) as svc, connect(ws_url(svc), max_size=2**24) as ws:
        ws.send(json.dumps({"cmd": "hello", "stream_id": "sim"}))
        with FrameSender(svc.graph.endpoints["ingest"], "sim", curve=driver) as sender:
            sender.send(sim_probe.frame(0).to_source())
            recv_until(ws, lambda m: isinstance(m, bytes))
        ws.send(json.dumps({"cmd": "set_seed", "seed_rc": [290, 200], "id": 5}))
        assert recv_until(ws, is_type("reply"))["ok"]  # the request went over the CURVE-secured endpoint
        assert svc.graph.settings.get("sim").seed_rc == (290, 200)


def test_serve_with_the_live_view_port_taken_fails_cleanly(svc, tmp_path):
    import shutil
    import subprocess

    import os

    cfg = tmp_path / "serve.toml"
    cfg.write_text('[endpoints]\ningest = "tcp://127.0.0.1:*"\nmetrics = "tcp://127.0.0.1:*"\ncontrol = "tcp://127.0.0.1:*"\n')
    env = {**os.environ, "MMSTREAM_WEB__PORT": str(svc.web.server.port)}  # the environment overrides the file
    proc = subprocess.run([shutil.which("mmstream"), "serve", "--config", str(cfg)], capture_output=True, text=True,
                          timeout=60, env=env)  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("mmstream serve: error: cannot start the web view on 127.0.0.1:")


def test_a_new_page_shows_the_first_stream_seen_and_a_page_can_ask_for_its_own(monkeypatch):
    """``[web] stream_id`` unset: a new page shows the stream seen first, not the first by name (a
    reloaded page jumped to another probe); a page that names its stream in ``hello`` (the page
    keeps it across a reload) gets that one, also when it comes only later (a restarted service),
    and another only after ``WANTED_WAIT_S`` without it."""
    from mmstream.source import FrameSender, SourceFrame

    monkeypatch.setattr(web_server, "WANTED_WAIT_S", 1.0)
    cfg = load_config(None, endpoints=RANDOM_TCP, web={"port": 0})

    def send(s, sid):
        with FrameSender(s.graph.endpoints["ingest"], sid) as snd:
            snd.send(SourceFrame(image=np.full((64, 64), 90, np.uint8)))
        wait_for(lambda: sid in s.web.live.streams(), what=f"a frame of {sid} in the live view")

    def shown(ws):  # the stream of the first context message naming one
        return recv_until(ws, lambda m: is_type("context")(m) and m["stream_id"] is not None)["stream_id"]

    with Service(cfg) as s:
        for sid in ("zeta", "alpha"):
            send(s, sid)
        assert s.web.live.streams() == ["zeta", "alpha"]
        for asked, want in ((None, "zeta"), ("alpha", "alpha")):
            with connect(ws_url(s)) as ws:
                ws.send(json.dumps({"cmd": "hello", **({"stream_id": asked} if asked else {})}))
                assert recv_until(ws, is_type("hello"))["stream_id"] == want
        with connect(ws_url(s)) as late, connect(ws_url(s)) as gone:
            for ws, sid in ((late, "late"), (gone, "gone")):
                ws.send(json.dumps({"cmd": "hello", "stream_id": sid}))
                assert recv_until(ws, is_type("hello"))["stream_id"] is None  # not there yet: waits for it
            send(s, "late")
            assert shown(late) == "late"  # not zeta, which was there first
            assert shown(gone) == "zeta"  # after WANTED_WAIT_S without it: the first stream seen


def test_debug_logging_keeps_the_websocket_and_dicom_libraries_quiet(tmp_path):
    """``log_level = "debug"``: at debug, websockets logs message contents (a set_context with the
    patient pseudonym) and pynetdicom DICOM details; those two libraries stay at info."""
    import logging
    import subprocess
    import sys

    code = ("import logging; from mmstream.cli import _service_process; from mmstream.config import load_config\n"
            "_service_process(load_config(None, log_level='debug'))\n"
            "print(logging.getLogger().getEffectiveLevel(), logging.getLogger('websockets.server').getEffectiveLevel(),"
            " logging.getLogger('pynetdicom').getEffectiveLevel(), logging.getLogger('mmstream').getEffectiveLevel())")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert [int(v) for v in out] == [logging.DEBUG, logging.INFO, logging.INFO, logging.DEBUG]


def test_a_page_asking_for_its_stream_waits_for_it_over_the_configured_one(monkeypatch):
    """With ``[web] stream_id`` set, a (reloaded) page that asks for its own stream still waits for
    it; the configured stream is the fallback after ``WANTED_WAIT_S``, not an answer at once."""
    from mmstream.source import FrameSender, SourceFrame

    monkeypatch.setattr(web_server, "WANTED_WAIT_S", 1.0)
    cfg = load_config(None, endpoints=RANDOM_TCP, web={"port": 0, "stream_id": "zeta"})
    with Service(cfg) as s:
        for sid in ("zeta", "alpha"):
            with FrameSender(s.graph.endpoints["ingest"], sid) as snd:
                snd.send(SourceFrame(image=np.full((64, 64), 90, np.uint8)))
            wait_for(lambda sid=sid: sid in s.web.live.streams(), what=f"a frame of {sid}")
        with connect(ws_url(s)) as plain, connect(ws_url(s)) as late, connect(ws_url(s)) as gone:
            plain.send(json.dumps({"cmd": "hello"}))
            assert recv_until(plain, is_type("hello"))["stream_id"] == "zeta"  # the configured one
            for ws, sid in ((late, "late"), (gone, "gone")):
                ws.send(json.dumps({"cmd": "hello", "stream_id": sid}))
                assert recv_until(ws, is_type("hello"))["stream_id"] is None
            with FrameSender(s.graph.endpoints["ingest"], "late") as snd:
                snd.send(SourceFrame(image=np.full((64, 64), 90, np.uint8)))
            named = lambda m: is_type("context")(m) and m["stream_id"] is not None  # noqa: E731
            assert recv_until(late, named)["stream_id"] == "late"
            assert recv_until(gone, named)["stream_id"] == "zeta"  # the configured one after the wait, not alpha
