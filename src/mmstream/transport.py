"""ZeroMQ sockets for mmstream: the only module that imports zmq.

Endpoints are ``inproc://name`` (threads of one process), ``ipc:///path`` (processes of one host) or
``tcp://host:port``. Binding a tcp endpoint beyond the loopback range requires CURVE encryption and
authentication (:class:`Curve`, keys made by :func:`make_keys` / ``mmstream keys``); a client
without an allowed key is refused by the ZAP authenticator.

Every socket is made with ``linger=0`` and an explicit high-water mark, so closing never hangs and
no queue is unbounded.
"""

import hashlib
import ipaddress
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from mmstream.errors import ConfigError

__all__ = [
    "Curve", "Socket", "Poller", "context", "make_socket", "make_keys", "is_loopback", "check_endpoint",
    "TransportTimeout", "close_context", "read_key_file",
]  # fmt: skip

_KINDS = {
    "pub": zmq.PUB, "sub": zmq.SUB, "push": zmq.PUSH, "pull": zmq.PULL, "req": zmq.REQ, "rep": zmq.REP,
    "pair": zmq.PAIR,
}  # fmt: skip
_ctx: zmq.Context | None = None
_ctx_lock = threading.Lock()
_auth: ThreadAuthenticator | None = None
_domains: dict[str, str] = {}  # ZAP domain -> allowed clients directory, re-read every ALLOWED_RELOAD_S
ALLOWED_RELOAD_S = 2.0  # a client key removed from (or added to) allowed_clients_dir takes effect within this


class TransportTimeout(TimeoutError):
    """No message arrived (or could be sent) within the timeout."""


def context() -> zmq.Context:
    """The process-wide ZeroMQ context (created on first use; inproc needs one shared context)."""
    global _ctx
    with _ctx_lock:
        if _ctx is None or _ctx.closed:
            _ctx = zmq.Context()
        return _ctx


def close_context() -> None:
    """Stop the authenticator and terminate the context (every socket must be closed first)."""
    global _ctx, _auth
    with _ctx_lock:
        if _auth is not None:
            _auth.stop()
            _auth = None
        _domains.clear()
        if _ctx is not None:
            _ctx.term()
            _ctx = None


IPC_PATH_MAX_BYTES = 107  # an ipc:// path longer than this cannot be bound (Linux sun_path: 108 bytes with its NUL)
KEY_FILE_MAX_BYTES = 64 * 1024  # a CURVE key file (mmstream keys writes ~300 bytes)


def check_endpoint(endpoint: str) -> str:
    """``endpoint`` if it is a well-formed inproc/ipc/tcp endpoint; ConfigError otherwise. A tcp
    port is ASCII digits (``str.isdigit`` also takes other scripts' digits, which ZeroMQ refuses)."""
    parts = urlsplit(endpoint)
    if parts.scheme == "ipc" and len(endpoint.encode()) - len("ipc://") > IPC_PATH_MAX_BYTES:
        raise ConfigError(f"bad endpoint {endpoint!r}: an ipc path longer than {IPC_PATH_MAX_BYTES} bytes cannot be bound")
    if parts.scheme in ("inproc", "ipc") and len(endpoint) > len(parts.scheme) + 3:
        return endpoint
    if parts.scheme == "tcp":
        host, _, port = parts.netloc.rpartition(":")
        if host and (port == "*" or (port.isascii() and port.isdigit() and 0 < int(port) < 65536)):
            return endpoint
    raise ConfigError(f"bad endpoint {endpoint!r}: use inproc://NAME, ipc:///PATH or tcp://HOST:PORT")


def _ipv6(endpoint: str) -> bool:
    """A tcp endpoint whose host is a bracketed IPv6 address (``tcp://[::1]:5555``): ZeroMQ binds
    and connects those only with ZMQ_IPV6 set."""
    return endpoint.startswith("tcp://[")


def is_loopback(endpoint: str) -> bool:
    """True for inproc and ipc endpoints and for tcp on 127.0.0.0/8, ::1 or localhost."""
    parts = urlsplit(endpoint)
    if parts.scheme in ("inproc", "ipc"):
        return True
    host = (parts.hostname or "").strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name or interface name: treat as reachable from outside


@dataclass(frozen=True)
class Curve:
    """CURVE keys of one side.

    Server: ``secret_key_file`` is the server's ``.key_secret``; ``allowed_clients_dir`` holds the
    ``.key`` files of the clients allowed in. Client: ``secret_key_file`` is the client's
    ``.key_secret`` and ``server_key_file`` the server's public ``.key``.
    """

    secret_key_file: Path
    allowed_clients_dir: Path | None = None
    server_key_file: Path | None = None


def make_keys(directory: Path, name: str) -> tuple[Path, Path]:
    """Write a CURVE key pair ``NAME.key`` (public) and ``NAME.key_secret``; returns both paths.
    Folders and files are created private to the user (umask 077: pyzmq writes the secret key with
    a plain open, and a chmod afterwards would leave a moment in which another user can open it)."""
    directory = Path(directory)
    old = os.umask(0o077)  # a command-line tool's process: no other thread creates files meanwhile
    try:
        directory.mkdir(parents=True, exist_ok=True)
        public, secret = zmq.auth.create_certificates(str(directory), name)
    finally:
        os.umask(old)
    Path(secret).chmod(0o600)  # also when the folder already existed with laxer rights
    return Path(public), Path(secret)


def _zap_domain(clients_dir: Path) -> str:
    """Start (once) the authenticator and register ``clients_dir`` under a ZAP domain of its own, so
    each server socket admits the clients of its own directory only."""
    global _auth
    clients_dir = Path(clients_dir).resolve()
    if not clients_dir.is_dir():
        raise ConfigError(f"allowed_clients_dir {clients_dir} is not a directory")
    domain = "mmstream-" + hashlib.sha256(str(clients_dir).encode()).hexdigest()[:16]
    with _ctx_lock:
        if _auth is None:
            _auth = ThreadAuthenticator(_ctx)
            _auth.start()
            threading.Thread(target=_reload_allowed_keys, args=(_auth,), name="mmstream-zap-reload", daemon=True).start()
        # what pyzmq's configure_curve does, without its loader (which reads a *.key link to
        # /dev/zero until memory runs out, and blocks on a FIFO): this domain's allowed keys
        _auth.certs[domain] = _allowed_keys(str(clients_dir))
        _domains[domain] = str(clients_dir)
    return domain


def _allowed_keys(location: str) -> dict[bytes, bool]:
    """The public keys of the ``*.key`` files in ``location`` (pyzmq's form), skipping unreadable,
    malformed or irregular files (a link to a device is never read), and none when the folder is
    gone: a removal always takes effect (pyzmq's own loader keeps the previous set when any one file
    fails)."""
    keys = {}
    for f in sorted(Path(location).glob("*.key")):
        try:
            public, _ = read_key_file(f, secret=False)
        except ConfigError:
            continue
        if public:
            keys[public] = True
    return keys


def _reload_allowed_keys(auth: ThreadAuthenticator) -> None:
    """Re-read every allowed-clients directory every ALLOWED_RELOAD_S, so a revoked client key stops
    working without a restart; ends when ``auth`` is stopped."""
    while True:
        time.sleep(ALLOWED_RELOAD_S)
        with _ctx_lock:
            if _auth is not auth:
                return
            for domain, location in list(_domains.items()):
                auth.certs[domain] = _allowed_keys(location)


def read_key_file(path: Path, what: str | None = None, *, secret: bool = True) -> tuple[bytes, bytes | None]:
    """The public and secret key of CURVE key file ``path`` (``mmstream keys``); ConfigError, led by
    ``what`` (the configuration key naming the file) when given, if it is not a regular file of at
    most KEY_FILE_MAX_BYTES (a link to ``/dev/zero`` would be read for ever), holds no key, or, for
    a ``secret`` key, holds no secret key or is readable by group or others."""
    from mmstream.config import file_problem  # mmstream.config imports this module

    lead = f"{what}: " if what else ""
    if why := file_problem(path, KEY_FILE_MAX_BYTES):
        raise ConfigError(f"{lead}cannot load CURVE key {path}: {why}")
    try:
        public, secret_key = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{lead}cannot load CURVE key {path}: {exc}") from None
    if secret and secret_key is None:
        raise ConfigError(f"{lead}{path} holds no secret key")
    if secret and os.stat(path).st_mode & 0o077:
        raise ConfigError(f"{lead}CURVE secret key {path} is readable by others: chmod 600 it")
    return public, secret_key


def _apply_curve(sock: zmq.Socket, curve: Curve, server: bool) -> None:
    public, secret = read_key_file(curve.secret_key_file)
    sock.curve_secretkey, sock.curve_publickey = secret, public
    if server:
        if curve.allowed_clients_dir is None:
            raise ConfigError("a CURVE server needs allowed_clients_dir")
        sock.zap_domain = _zap_domain(curve.allowed_clients_dir).encode()
        sock.curve_server = True
    else:
        if curve.server_key_file is None:
            raise ConfigError("a CURVE client needs server_key_file")
        server_public, _ = read_key_file(curve.server_key_file, secret=False)
        sock.curve_serverkey = server_public


class Socket:
    """A configured ZeroMQ socket: send and receive multipart messages with timeouts.

    Use :func:`make_socket` to create one. ``recv`` returns the parts as zero-copy ``zmq.Frame``
    objects (their ``.buffer`` is a memoryview) that :func:`mmstream.codec.decode` accepts.
    """

    def __init__(self, sock: zmq.Socket, endpoint: str, bound: bool):
        self._sock = sock
        self.endpoint = endpoint
        self.bound = bound

    @property
    def last_endpoint(self) -> str:
        """The endpoint actually bound (resolves ``tcp://127.0.0.1:*`` to the chosen port)."""
        return self._sock.getsockopt_string(zmq.LAST_ENDPOINT) if self.bound else self.endpoint

    def send(self, parts: list, timeout_ms: int | None = None) -> None:
        """Send one multipart message (zero-copy); TransportTimeout when the peer's queue stays full."""
        if timeout_ms is not None:
            self._sock.sndtimeo = timeout_ms
        try:
            self._sock.send_multipart(parts, copy=False)
        except zmq.Again as exc:
            raise TransportTimeout(f"send to {self.endpoint} timed out") from exc

    def try_send(self, parts: list) -> bool:
        """Send without blocking; False when the message could not be queued (peer full or absent)."""
        try:
            self._sock.send_multipart(parts, copy=False, flags=zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def recv(self, timeout_ms: int | None = None) -> list:
        """Receive one multipart message; TransportTimeout when nothing arrives in time."""
        if timeout_ms is not None and not self._sock.poll(timeout_ms, zmq.POLLIN):
            raise TransportTimeout(f"nothing received on {self.endpoint} within {timeout_ms} ms")
        return self._sock.recv_multipart(copy=False)

    def try_recv(self) -> list | None:
        """One message if one is waiting, else None."""
        try:
            return self._sock.recv_multipart(copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:
            return None

    def close(self, linger_ms: int = 0) -> None:
        """Close; ``linger_ms`` > 0 lets queued outgoing messages leave first (up to that long)."""
        self._sock.close(linger=linger_ms)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Poller:
    """Wait on several sockets at once."""

    def __init__(self, sockets: list[Socket]):
        self._poller = zmq.Poller()
        self._by_raw = {}
        for s in sockets:
            self._poller.register(s._sock, zmq.POLLIN)
            self._by_raw[s._sock] = s

    def poll(self, timeout_ms: int) -> list[Socket]:
        """Sockets with a message waiting, after at most ``timeout_ms``."""
        return [self._by_raw[raw] for raw, _ in self._poller.poll(timeout_ms)]


def make_socket(
    kind: str,
    endpoint: str,
    *,
    bind: bool,
    hwm: int = 1000,
    curve: Curve | None = None,
    subscribe: tuple[str, ...] = ("",),
    immediate: bool = False,
    ctx: zmq.Context | None = None,
    max_msg_bytes: int | None = None,
    also_bind: tuple[str, ...] = (),
) -> Socket:
    """Create, configure and bind or connect a socket.

    Parameters
    ----------
    kind : {"pub", "sub", "push", "pull", "req", "rep", "pair"}
    endpoint : str
    bind : bool
        Bind (the stable side: the service) or connect (drivers, clients).
    hwm : int
        High-water mark (messages) in each direction: the bound on queued messages.
    curve : Curve, optional
        CURVE keys; required to bind tcp beyond loopback.
    subscribe : topic prefixes for a "sub" socket (default: everything).
    immediate : bool
        Queue messages only to completed connections (ZMQ_IMMEDIATE): a send to a peer that is not
        there blocks (and times out) instead of waiting in a local queue that is lost on close.
    ctx : zmq.Context, optional
        A context of the caller's (default: the process-wide one), e.g. to wait with ``ctx.term()``
        until the messages of its sockets have left (inproc endpoints need the shared one).
    max_msg_bytes : int, optional
        Largest message part received (ZMQ_MAXMSGSIZE): ZeroMQ disconnects a peer that sends a
        larger one before it is held in memory (tcp/ipc; inproc passes messages without a limit).
        The limit is per part: ZeroMQ takes a message only whole and bounds neither its number of
        parts nor their sum (docs/protocol.md, section 4).
    also_bind : tuple of str
        ``inproc://`` endpoints the socket binds as well (``bind`` only): in-process peers, which
        CURVE does not apply to (the service's own sources reach a secured ingest socket so).
    """
    if kind not in _KINDS:
        raise ConfigError(f"unknown socket kind {kind!r}")
    check_endpoint(endpoint)
    if also_bind and (not bind or not all(e.startswith("inproc://") for e in also_bind)):
        raise ConfigError(f"also_bind takes inproc:// endpoints of a bound socket, not {also_bind!r}")
    if bind and curve is None and not is_loopback(endpoint):
        raise ConfigError(
            f"refusing to bind {endpoint} beyond loopback without CURVE authentication "
            "(make keys with `mmstream keys` and set security in the config)"
        )
    sock = (ctx or context()).socket(_KINDS[kind])
    try:
        sock.linger = 0
        sock.sndhwm = hwm
        sock.rcvhwm = hwm
        if kind == "req":
            sock.setsockopt(zmq.REQ_RELAXED, 1)
            sock.setsockopt(zmq.REQ_CORRELATE, 1)
        if curve is not None:
            _apply_curve(sock, curve, server=bind)
        if immediate:
            sock.immediate = 1
        if _ipv6(endpoint):
            sock.ipv6 = True
        if max_msg_bytes is not None:
            sock.setsockopt(zmq.MAXMSGSIZE, int(max_msg_bytes))
        if kind == "sub":
            for t in subscribe:
                sock.setsockopt_string(zmq.SUBSCRIBE, t)
        if bind:
            if endpoint.startswith("ipc://"):
                Path(endpoint[len("ipc://") :]).parent.mkdir(parents=True, exist_ok=True)
            for extra in also_bind:  # first: ``last_endpoint`` names the one bound last
                sock.bind(extra)
            sock.bind(endpoint)
        else:
            sock.connect(endpoint)
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        raise ConfigError(f"cannot {'bind' if bind else 'connect'} {kind} socket at {endpoint}: {exc}") from exc
    except BaseException:
        sock.close(linger=0)
        raise
    return Socket(sock, endpoint, bind)
