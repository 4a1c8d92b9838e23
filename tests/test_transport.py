"""Sockets over real ZeroMQ: endpoint checks, loopback policy, PUSH/PULL and PUB/SUB over ipc and
loopback tcp, timeouts, high-water marks, CURVE. Only loopback traffic; random ports; every socket
closed; polls with timeouts, never fixed sleeps."""

import contextlib
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from mmstream.errors import ConfigError
from mmstream.transport import (
    ALLOWED_RELOAD_S, Curve, Poller, TransportTimeout, check_endpoint, is_loopback, make_keys, make_socket,
)

QUIET_MS = 500  # how long "nothing arrives" is watched for


@pytest.fixture()
def sockets():
    """Collects sockets and closes them all at the end of the test (even when it fails)."""
    made = []

    def make(*args, **kw):
        s = make_socket(*args, **kw)
        made.append(s)
        return s

    yield make
    for s in reversed(made):
        s.close()


# --------------------------------------------------------------------------- endpoints


@pytest.mark.parametrize(
    "endpoint",
    [
        "inproc://x", "inproc://mmstream-1/events", "ipc:///tmp/mm.sock", "ipc://relative.sock",
        "tcp://127.0.0.1:5555", "tcp://127.0.0.1:*", "tcp://localhost:1", "tcp://[::1]:65535", "tcp://0.0.0.0:*",
        "tcp://eth0:5555", "tcp://scanner.local:5555",
    ],
)  # fmt: skip
def test_check_endpoint_good(endpoint):
    assert check_endpoint(endpoint) == endpoint


@pytest.mark.parametrize(
    "endpoint",
    [
        "", "inproc://", "ipc://", "tcp://127.0.0.1", "tcp://127.0.0.1:", "tcp://:5555", "tcp://127.0.0.1:0",
        "tcp://127.0.0.1:65536", "tcp://127.0.0.1:-1", "tcp://127.0.0.1:http", "udp://127.0.0.1:5555",
        "http://127.0.0.1:5555", "127.0.0.1:5555", "tcp:/127.0.0.1:5555", "tcp://127.0.0.1:5555x",
        "tcp://127.0.0.1:\u0665\u0665\u0665\u0667",  # Arabic-Indic digits: str.isdigit takes them, ZeroMQ does not
        "tcp://127.0.0.1:\uff15\uff15\uff15\uff15",  # fullwidth digits
        "ipc:///tmp/" + "x" * 103,  # 108 bytes of path: over the 107 a Unix socket address holds
    ],
)  # fmt: skip
def test_check_endpoint_bad(endpoint):
    with pytest.raises(ConfigError):
        check_endpoint(endpoint)


@pytest.mark.parametrize(
    ("endpoint", "loopback"),
    [
        ("tcp://127.0.0.1:5555", True),
        ("tcp://127.5.5.5:5555", True),
        ("tcp://[::1]:5555", True),
        ("tcp://localhost:5555", True),
        ("tcp://localhost:*", True),
        ("tcp://0.0.0.0:5555", False),
        ("tcp://0.0.0.0:*", False),
        ("tcp://10.1.2.3:5555", False),
        ("tcp://192.168.1.10:5555", False),
        ("tcp://[::]:5555", False),
        ("tcp://scanner.example.org:5555", False),
        ("tcp://eth0:5555", False),
        ("tcp://*:5555", False),
        ("inproc://anything", True),
        ("ipc:///tmp/x.sock", True),
    ],
)
def test_is_loopback(endpoint, loopback):
    assert is_loopback(endpoint) is loopback


@pytest.mark.parametrize("endpoint", ["tcp://0.0.0.0:*", "tcp://10.1.2.3:5555", "tcp://eth0:*", "tcp://*:*"])
def test_binding_beyond_loopback_without_curve_is_refused(endpoint):
    with pytest.raises(ConfigError, match="CURVE"):
        make_socket("pull", endpoint, bind=True)  # refused before any socket exists: nothing to close


def test_connecting_beyond_loopback_is_not_policed_here():
    """Only binding is guarded (a connect exposes nothing); the connect is lazy, no traffic is sent."""
    s = make_socket("push", "tcp://10.1.2.3:5555", bind=False)
    s.close()


def test_unknown_kind_and_bad_endpoint_raise_config_error():
    with pytest.raises(ConfigError):
        make_socket("dealer", "inproc://x", bind=True)
    with pytest.raises(ConfigError):
        make_socket("pull", "udp://127.0.0.1:1", bind=True)


def test_binding_a_taken_port_raises_config_error(sockets):
    a = sockets("pull", "tcp://127.0.0.1:*", bind=True)
    with pytest.raises(ConfigError, match="cannot bind"):
        make_socket("pull", a.last_endpoint, bind=True)


# --------------------------------------------------------------------------- traffic


def endpoints(tmp_path):
    return [f"ipc://{tmp_path}/sub/dir/push.sock", "tcp://127.0.0.1:*", f"inproc://t-{uuid.uuid4().hex[:8]}"]


@pytest.mark.parametrize("which", ["ipc", "tcp", "inproc"])
def test_push_pull(tmp_path, sockets, which):
    ep = dict(zip(["ipc", "tcp", "inproc"], endpoints(tmp_path)))[which]
    pull = sockets("pull", ep, bind=True)
    bound = pull.last_endpoint
    if which == "tcp":
        assert bound.startswith("tcp://127.0.0.1:") and not bound.endswith(":*")
    push = sockets("push", bound, bind=False)
    assert push.last_endpoint == bound  # connect side reports what it was given
    for i in range(5):
        push.send([b"t", str(i).encode(), bytes(1000)], timeout_ms=2000)
    got = [pull.recv(timeout_ms=2000) for _ in range(5)]
    assert [bytes(p[1]) for p in got] == [str(i).encode() for i in range(5)]
    assert all(len(p) == 3 and len(p[2].buffer) == 1000 for p in got)
    assert pull.try_recv() is None


def test_an_ipc_path_of_107_bytes_binds(tmp_path, sockets):
    """The longest ipc path check_endpoint takes is one the kernel binds (it used to take any length
    and the bind failed at start)."""
    short = Path(tempfile.mkdtemp(prefix="mm", dir="/tmp"))
    try:
        path = short / ("s" * (107 - len(str(short)) - 1))
        ep = check_endpoint(f"ipc://{path}")
        assert len(str(path).encode()) == 107
        pull = sockets("pull", ep, bind=True)
        sockets("push", ep, bind=False).send([b"t", b"x"], timeout_ms=2000)
        assert bytes(pull.recv(timeout_ms=2000)[1]) == b"x"
        with pytest.raises(ConfigError, match="longer than 107 bytes"):
            check_endpoint(f"ipc://{path}s")
    finally:
        shutil.rmtree(short)


def _ipv6_loopback() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback")
@pytest.mark.parametrize("kind", ["push-pull", "req-rep"])
def test_ipv6_loopback_binds_and_connects(sockets, kind):
    """``tcp://[::1]:PORT`` is loopback (is_loopback, docs/protocol.md section 9) but could not be
    bound ("No such device"): ZMQ_IPV6 was never set."""
    server_kind, client_kind = {"push-pull": ("pull", "push"), "req-rep": ("rep", "req")}[kind]
    server = sockets(server_kind, "tcp://[::1]:*", bind=True)
    assert server.last_endpoint.startswith("tcp://[::1]:")
    client = sockets(client_kind, server.last_endpoint, bind=False)
    client.send([b"t", b"over ::1"], timeout_ms=2000)
    assert bytes(server.recv(timeout_ms=5000)[1]) == b"over ::1"


def test_also_bind_takes_inproc_peers_of_a_curve_socket_without_keys(keys, sockets):
    """The service's own sources reach its CURVE-secured ingest socket in-process (inproc does not
    use CURVE); last_endpoint still names the external endpoint."""
    door = f"inproc://door-{uuid.uuid4().hex[:8]}"
    server = sockets("pull", "tcp://127.0.0.1:*", bind=True, curve=keys["server"], also_bind=(door,))
    assert server.last_endpoint.startswith("tcp://127.0.0.1:")
    sockets("push", door, bind=False).send([b"t", b"inside"], timeout_ms=2000)
    assert bytes(server.recv(timeout_ms=5000)[1]) == b"inside"
    sockets("push", server.last_endpoint, bind=False).try_send([b"t", b"outside, no key"])
    assert_nothing_arrives(server)
    with pytest.raises(ConfigError, match="also_bind"):
        make_socket("pull", "tcp://127.0.0.1:*", bind=True, also_bind=("tcp://127.0.0.1:*",))


@pytest.mark.parametrize("which", ["ipc", "tcp"])
def test_a_part_over_max_msg_bytes_is_never_received(tmp_path, sockets, which):
    """ZMQ_MAXMSGSIZE: the peer is disconnected before the oversized part is held; it reconnects
    and its next message arrives."""
    ep = dict(zip(["ipc", "tcp"], endpoints(tmp_path)))[which]
    pull = sockets("pull", ep, bind=True, max_msg_bytes=4096)
    push = sockets("push", pull.last_endpoint, bind=False)
    push.send([b"t", b"big", bytes(5000)], timeout_ms=2000)
    deadline = time.monotonic() + 10
    got = []
    while not got and time.monotonic() < deadline:  # resent until the reconnected pipe takes it
        push.send([b"t", b"small", bytes(4096)], timeout_ms=2000)
        try:
            got.append(bytes(pull.recv(timeout_ms=200)[1]))
        except TransportTimeout:
            continue
    while (more := pull.try_recv()) is not None:
        got.append(bytes(more[1]))
    assert got and set(got) == {b"small"}


@pytest.mark.parametrize("which", ["ipc", "tcp"])
def test_pub_sub_with_topic_filter(tmp_path, sockets, which):
    ep = dict(zip(["ipc", "tcp"], endpoints(tmp_path)))[which]
    pub = sockets("pub", ep, bind=True)
    sub = sockets("sub", pub.last_endpoint, bind=False, subscribe=("metrics.a",))
    # slow joiner: publish until the subscription has arrived, then check filtering on fresh messages
    deadline = time.monotonic() + 5
    while True:
        pub.send([b"metrics.a", b"hello"])
        try:
            sub.recv(timeout_ms=20)
            break
        except TransportTimeout:
            assert time.monotonic() < deadline, "subscription never reached the publisher"
    while sub.try_recv() is not None:
        pass
    pub.send([b"metrics.b", b"other stream"])
    pub.send([b"event.ingest", b"event"])
    pub.send([b"metrics.a.x", b"prefix match"])
    pub.send([b"metrics.a", b"last"])
    got = []
    while True:
        try:
            got.append(bytes(sub.recv(timeout_ms=1000)[1]))
        except TransportTimeout:
            break
        if got[-1] == b"last":
            break
    assert [g for g in got if g != b"hello"] == [b"prefix match", b"last"]


def test_req_rep_and_poller(sockets):
    rep = sockets("rep", "tcp://127.0.0.1:*", bind=True)
    req = sockets("req", rep.last_endpoint, bind=False)
    poller = Poller([rep])
    assert poller.poll(0) == []
    req.send([b"control", b"ping"], timeout_ms=1000)
    assert poller.poll(2000) == [rep]
    assert bytes(rep.recv(timeout_ms=0)[1]) == b"ping"
    rep.send([b"reply", b"pong"], timeout_ms=1000)
    assert bytes(req.recv(timeout_ms=2000)[1]) == b"pong"


def test_req_recovers_after_a_lost_reply(sockets):
    """REQ_RELAXED: a client that timed out may send again instead of being stuck."""
    rep = sockets("rep", "tcp://127.0.0.1:*", bind=True)
    req = sockets("req", rep.last_endpoint, bind=False)
    req.send([b"control", b"1"], timeout_ms=1000)
    with pytest.raises(TransportTimeout):
        req.recv(timeout_ms=50)
    req.send([b"control", b"2"], timeout_ms=1000)  # allowed with REQ_RELAXED
    assert bytes(rep.recv(timeout_ms=2000)[1]) == b"1"
    rep.send([b"reply", b"late"], timeout_ms=1000)  # answer to request 1: dropped by REQ_CORRELATE
    assert bytes(rep.recv(timeout_ms=2000)[1]) == b"2"
    rep.send([b"reply", b"fresh"], timeout_ms=1000)
    assert bytes(req.recv(timeout_ms=2000)[1]) == b"fresh"


def test_recv_timeout(sockets):
    pull = sockets("pull", "tcp://127.0.0.1:*", bind=True)
    t0 = time.monotonic()
    with pytest.raises(TransportTimeout):
        pull.recv(timeout_ms=100)
    assert 0.09 <= time.monotonic() - t0 < 2.0
    with pytest.raises(TimeoutError):  # TransportTimeout is a TimeoutError
        pull.recv(timeout_ms=0)
    assert pull.try_recv() is None


def test_try_send_false_when_the_peer_is_full(sockets):
    pull = sockets("pull", f"inproc://full-{uuid.uuid4().hex[:8]}", bind=True, hwm=4)
    push = sockets("push", pull.last_endpoint, bind=False, hwm=4)
    sent = 0
    while push.try_send([b"t", b"x"]):
        sent += 1
        assert sent < 10_000, "high-water mark never reached"
    assert sent >= 4
    assert push.try_send([b"t", b"x"]) is False
    with pytest.raises(TransportTimeout):
        push.send([b"t", b"x"], timeout_ms=50)
    # draining one message makes room again (the queue is bounded, not broken)
    pull.recv(timeout_ms=1000)
    deadline = time.monotonic() + 5
    while not push.try_send([b"t", b"y"]):
        assert time.monotonic() < deadline
        pull.try_recv()


def test_try_send_false_without_a_peer(sockets):
    """A bound PUSH with nobody connected has no queue to put a message in."""
    push = sockets("push", "tcp://127.0.0.1:*", bind=True)
    assert push.try_send([b"t", b"x"]) is False


def test_context_manager_closes():
    with make_socket("pull", "tcp://127.0.0.1:*", bind=True) as s:
        ep = s.last_endpoint
    # the port is released (asynchronously, by ZeroMQ's I/O thread): it can be bound again
    deadline = time.monotonic() + 2
    while True:
        try:
            make_socket("pull", ep, bind=True).close()
            break
        except ConfigError:
            assert time.monotonic() < deadline, f"{ep} still taken after close"
            time.sleep(0.01)


# --------------------------------------------------------------------------- CURVE


@pytest.fixture()
def keys(tmp_path):
    """Server keys, an allowed client, a stranger; the allowed-clients folder holds one public key."""
    kd = tmp_path / "keys"
    server_pub, server_sec = make_keys(kd, "server")
    client_pub, client_sec = make_keys(kd, "client")
    _, stranger_sec = make_keys(kd, "stranger")
    other_server_pub, _ = make_keys(kd, "other-server")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    shutil.copy(client_pub, allowed / client_pub.name)
    assert oct(server_sec.stat().st_mode & 0o777) == "0o600"
    return {
        "server": Curve(secret_key_file=server_sec, allowed_clients_dir=allowed),
        "client": Curve(secret_key_file=client_sec, server_key_file=server_pub),
        "stranger": Curve(secret_key_file=stranger_sec, server_key_file=server_pub),
        "wrong_server_key": Curve(secret_key_file=client_sec, server_key_file=other_server_pub),
    }


def assert_nothing_arrives(sock, ms=QUIET_MS):
    with pytest.raises(TransportTimeout):
        sock.recv(timeout_ms=ms)


def test_make_keys_writes_a_loadable_pair(tmp_path):
    pub, sec = make_keys(tmp_path / "new" / "dir", "svc")
    assert pub.name == "svc.key" and sec.name == "svc.key_secret"
    assert "secret-key" not in pub.read_text() and "secret-key" in sec.read_text()


def test_make_keys_creates_everything_private_whatever_the_umask(tmp_path):
    """Under umask 000 too, the folders and both files are the user's only from the moment they
    exist (a secret key chmod-ed after pyzmq wrote it could be opened by another user meanwhile;
    an allowed-clients folder writable by others would let them add their own key)."""
    import stat
    import subprocess
    import sys

    code = ("import os, sys; os.umask(0); from mmstream.cli import main\n"
            f"sys.exit(main(['keys', {str(tmp_path / 'k')!r}, '--client', 'tablet']))")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    for path in (tmp_path / "k" / "server", tmp_path / "k" / "clients", tmp_path / "k" / "allowed_clients",
                 *(tmp_path / "k").rglob("*.key*")):  # fmt: skip
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, (path, oct(path.stat().st_mode))


def test_curve_push_pull(keys, sockets):
    server = sockets("pull", "tcp://127.0.0.1:*", bind=True, curve=keys["server"])
    ep = server.last_endpoint
    bad = [
        sockets("push", ep, bind=False, curve=keys["stranger"]),  # key not in allowed_clients_dir
        sockets("push", ep, bind=False),  # no CURVE at all
        sockets("push", ep, bind=False, curve=keys["wrong_server_key"]),  # allowed key, wrong server key
    ]
    for i, s in enumerate(bad):
        s.try_send([b"t", f"bad-{i}".encode()])
    assert_nothing_arrives(server)
    good = sockets("push", ep, bind=False, curve=keys["client"])
    good.send([b"t", b"good"], timeout_ms=2000)
    assert bytes(server.recv(timeout_ms=5000)[1]) == b"good"
    for i, s in enumerate(bad):  # still nothing from the others, even after the good one got in
        s.try_send([b"t", f"bad-again-{i}".encode()])
    assert_nothing_arrives(server, 300)


def test_curve_req_rep(keys, sockets):
    server = sockets("rep", "tcp://127.0.0.1:*", bind=True, curve=keys["server"])
    ep = server.last_endpoint
    stranger = sockets("req", ep, bind=False, curve=keys["stranger"])
    stranger.try_send([b"control", b"let me in"])
    assert_nothing_arrives(server)
    with pytest.raises(TransportTimeout):
        stranger.recv(timeout_ms=50)
    client = sockets("req", ep, bind=False, curve=keys["client"])
    client.send([b"control", b"ping"], timeout_ms=2000)
    assert bytes(server.recv(timeout_ms=5000)[1]) == b"ping"
    server.send([b"reply", b"pong"], timeout_ms=2000)
    assert bytes(client.recv(timeout_ms=5000)[1]) == b"pong"


def test_curve_config_errors(tmp_path, keys):
    with pytest.raises(ConfigError, match="allowed_clients_dir"):
        make_socket("pull", "tcp://127.0.0.1:*", bind=True, curve=Curve(secret_key_file=keys["server"].secret_key_file))
    with pytest.raises(ConfigError, match="server_key_file"):
        make_socket("push", "tcp://127.0.0.1:9", bind=False, curve=Curve(secret_key_file=keys["client"].secret_key_file))
    with pytest.raises(ConfigError, match="cannot load"):
        make_socket("push", "tcp://127.0.0.1:9", bind=False, curve=Curve(secret_key_file=tmp_path / "missing"))
    with pytest.raises(ConfigError, match="no secret"):
        make_socket("push", "tcp://127.0.0.1:9", bind=False,
                    curve=Curve(secret_key_file=keys["client"].server_key_file, server_key_file=keys["client"].server_key_file))  # fmt: skip


@pytest.mark.parametrize("kind", ["link to /dev/zero", "fifo", "directory", "over 64 KiB"])
def test_a_key_file_that_is_no_regular_small_file_is_not_read(tmp_path, keys, kind):
    """pyzmq reads a key file line by line: /dev/zero has no line end and was read until memory ran
    out (4.8 GB, then an empty error), a FIFO blocked for ever. Neither is opened now."""
    bad = tmp_path / "bad.key"
    if kind == "link to /dev/zero":
        bad.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(bad)
    elif kind == "directory":
        bad.mkdir()
    else:
        bad.write_bytes(keys["client"].secret_key_file.read_bytes() + b"#" * 65536)
        bad.chmod(0o600)
    says = {"link to /dev/zero": "a character device, not a regular file", "fifo": "a FIFO (named pipe), not a regular file",
            "directory": "a directory, not a regular file", "over 64 KiB": "bytes, more than the 65,536"}[kind]  # fmt: skip
    good = keys["client"]
    for curve in (Curve(secret_key_file=bad, server_key_file=bad), Curve(good.secret_key_file, server_key_file=bad)):
        with pytest.raises(ConfigError) as e:
            make_socket("push", "tcp://127.0.0.1:9", bind=False, curve=curve)
        assert str(e.value).startswith(f"cannot load CURVE key {bad}: ") and says in str(e.value)


def test_a_secret_key_readable_by_others_is_refused(keys):
    sec = keys["client"].secret_key_file
    sec.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        make_socket("push", "tcp://127.0.0.1:9", bind=False, curve=keys["client"])


def test_a_client_key_removed_from_the_allowed_folder_is_refused_without_a_restart(keys, sockets):
    from mmstream import transport

    server = sockets("pull", "tcp://127.0.0.1:*", bind=True, curve=keys["server"])
    first = sockets("push", server.last_endpoint, bind=False, curve=keys["client"])
    first.send([b"t", b"before"], timeout_ms=2000)
    assert bytes(server.recv(timeout_ms=5000)[1]) == b"before"
    for key in keys["server"].allowed_clients_dir.iterdir():
        key.unlink()  # revoked
    (keys["server"].allowed_clients_dir / "broken.key").mkdir()  # unreadable as a key: must not keep the old set
    time.sleep(transport.ALLOWED_RELOAD_S * 1.5)  # the reload period under test (a real wait)
    later = sockets("push", server.last_endpoint, bind=False, curve=keys["client"])
    later.try_send([b"t", b"after"])
    assert_nothing_arrives(server, 500)


@pytest.mark.timeout(60)
def test_a_fifo_or_device_in_the_allowed_folder_is_skipped(tmp_path, keys, sockets):
    """A ``*.key`` FIFO in the allowed-clients folder blocked the bind (pyzmq's loader opens it)
    and then its re-reading every 2 s, holding the transport's lock; a link to /dev/zero was read
    until memory ran out. They are skipped now: the clients beside them are admitted, one added
    later too."""
    allowed = keys["server"].allowed_clients_dir
    os.mkfifo(allowed / "fifo.key")
    (allowed / "zero.key").symlink_to("/dev/zero")
    server = sockets("pull", "tcp://127.0.0.1:*", bind=True, curve=keys["server"])
    sockets("push", server.last_endpoint, bind=False, curve=keys["client"]).try_send([b"t", b"client"])
    assert bytes(server.recv(timeout_ms=5000)[1]) == b"client"
    later_pub, later_sec = make_keys(tmp_path / "later", "later")
    shutil.copy(later_pub, allowed / later_pub.name)
    later = Curve(secret_key_file=later_sec, server_key_file=keys["client"].server_key_file)
    deadline = time.monotonic() + 5 * ALLOWED_RELOAD_S
    while time.monotonic() < deadline:  # a refused handshake is not retried: a new connection each time
        sockets("push", server.last_endpoint, bind=False, curve=later).try_send([b"t", b"later"])
        with contextlib.suppress(TransportTimeout):
            assert bytes(server.recv(timeout_ms=500)[1]) == b"later"
            break
    else:
        raise AssertionError("the client key added later was never admitted: the folder is no longer re-read")


def test_two_curve_servers_keep_their_own_allowed_clients(tmp_path, sockets):
    kd = tmp_path / "k"
    server_pub, server_sec = make_keys(kd, "server")
    a_pub, a_sec = make_keys(kd, "a")
    b_pub, b_sec = make_keys(kd, "b")
    for name, pub in (("allow_a", a_pub), ("allow_b", b_pub)):
        (tmp_path / name).mkdir()
        shutil.copy(pub, tmp_path / name / pub.name)
    only_a = sockets("pull", "tcp://127.0.0.1:*", bind=True, curve=Curve(server_sec, tmp_path / "allow_a"))
    sockets("pull", "tcp://127.0.0.1:*", bind=True, curve=Curve(server_sec, tmp_path / "allow_b"))
    good = sockets("push", only_a.last_endpoint, bind=False, curve=Curve(a_sec, server_key_file=server_pub))
    good.try_send([b"t", b"from a"])
    assert bytes(only_a.recv(timeout_ms=1000)[1]) == b"from a"


def test_curve_server_with_missing_allowed_clients_dir_is_refused(tmp_path, keys):
    curve = Curve(secret_key_file=keys["server"].secret_key_file, allowed_clients_dir=tmp_path / "missing")
    with pytest.raises(ConfigError):
        make_socket("pull", "tcp://127.0.0.1:*", bind=True, curve=curve).close()
