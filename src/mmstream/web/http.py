"""The plain-HTTP side of the live view: the page's three static files with strict security
headers (GET and HEAD only), the same-origin check of websocket upgrades, and the optional TLS
context."""

import dataclasses
import ssl
from importlib.resources import files
from pathlib import Path
from urllib.parse import urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from mmstream.errors import ConfigError

STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8")}  # fmt: skip
SECURITY_HEADERS = [
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Content-Security-Policy", "default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; frame-ancestors 'none'"),
]  # fmt: skip


class StaticPages:
    """The page's files, read once from the package."""

    def __init__(self):
        self._files = {p: (files("mmstream.web").joinpath("static", f).read_bytes(), ct) for p, (f, ct) in STATIC.items()}

    def response(self, path: str) -> Response | None:
        """200 with the file at URL ``path`` (query ignored), None when there is no such file."""
        found = self._files.get(urlsplit(path).path)
        if found is None:
            return None
        body, ctype = found
        return Response(200, "OK", Headers([("Content-Type", ctype), ("Content-Length", str(len(body))), *SECURITY_HEADERS]), body)


def refuse_method(method: str, path: str) -> Response | None:
    """405 (with ``Allow``) for a method that URL ``path`` does not serve: GET and HEAD for the
    page's files (and the 404 of any other path), GET only for the websocket ``/ws``."""
    allowed = ("GET",) if urlsplit(path).path == "/ws" else ("GET", "HEAD")
    if method in allowed:
        return None
    body = b"method not allowed\n"
    headers = [("Allow", ", ".join(allowed)), ("Content-Type", "text/plain; charset=utf-8"),
               ("Content-Length", str(len(body))), *SECURITY_HEADERS]  # fmt: skip
    return Response(405, "Method Not Allowed", Headers(headers), body)


def head_only(response: Response) -> Response:
    """The answer to HEAD: the headers of the GET answer (its Content-Length too), no body."""
    return dataclasses.replace(response, body=b"")


def same_origin(request: Request) -> bool:
    """False when a browser page of another site opens the websocket (its Origin is not this host).
    Raises ValueError or websockets' MultipleValuesError on malformed or repeated headers."""
    origin = request.headers.get("Origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("Host")


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def loopback_host(request: Request, bind_host: str) -> bool:
    """Whether the request's Host names this machine by a loopback name (any port: an SSH tunnel
    forwards another one). A view without a token serves only such requests: a DNS-rebinding page
    reaches 127.0.0.1 under its own name, which the browser puts in Host. Raises like
    :func:`same_origin`."""
    host = request.headers.get("Host") or ""
    name = host if host.endswith("]") or ":" not in host else host.rpartition(":")[0]
    return name.lower() in {*LOOPBACK_NAMES, f"[{bind_host}]" if ":" in bind_host else bind_host}


def tls_context(cert_file: Path | None, key_file: Path | None) -> ssl.SSLContext | None:
    """Server TLS context from PEM files (None without them); ConfigError if they do not load."""
    if cert_file is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"web view TLS: cannot load {cert_file} / {key_file}: {exc}") from None
    return ctx
