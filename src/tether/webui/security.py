"""Security rules both web pages follow (sessions, CSRF, headers, who may connect).

* The session lives in an ``HttpOnly``, ``SameSite=Strict`` cookie; scripts cannot read
  it and other sites cannot send it.
* Every POST carries a CSRF token bound to the session (form field ``csrf`` or header
  ``X-CSRF-Token``); :func:`csrf_token` derives it with HMAC from a per-process secret,
  so nothing extra is stored and a token from one session is useless in another. A POST
  without a valid token is refused with 403 before it changes anything.
* Responses forbid framing, sniffing, caching and every foreign origin (CSP
  ``default-src 'self'``): the pages only ever load their own vendored assets.
* No request body is read beyond :data:`MAX_REQUEST_BODY` (413): both apps are built
  with FastAPI's ``max_body_size``, which refuses a larger ``Content-Length`` before
  reading anything and counts the bytes of a body without one as they arrive, on every
  route, so no client can make a page hold more than that per request.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request, Response
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, select_autoescape
from starlette.templating import Jinja2Templates
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from tether.errors import NotReady
from tether.keys import format_address
from tether.webui import TEMPLATES_DIR

#: The largest request body either page reads (bytes): forms and JSON of a few KiB.
MAX_REQUEST_BODY = 1024 * 1024

CSRF_FIELD = "csrf"
CSRF_HEADER = "X-CSRF-Token"

#: What a refused CSRF check tells the user (nothing was changed).
CSRF_REFUSED = (
    "This form has no valid security token (it is stale, or was sent from another site). "
    "Nothing was changed. Reload the page and try again."
)

_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
        "form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def csrf_token(secret: bytes, session: str) -> str:
    """The CSRF token of ``session`` (HMAC-SHA256 under the process's ``secret``)."""
    return hmac.new(secret, b"csrf\0" + session.encode(), hashlib.sha256).hexdigest()


async def csrf_ok(request: Request, expected: str | None) -> bool:
    """Whether ``request`` carries ``expected`` as its CSRF token (header or form field)."""
    if not expected:
        return False
    sent = request.headers.get(CSRF_HEADER)
    if sent is None:
        form = await request.form()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    return sent is not None and hmac.compare_digest(sent.encode(), expected.encode())


def set_session_cookie(response: Response, name: str, value: str, *, max_age: int) -> None:
    """Set the session cookie: HttpOnly, SameSite=Strict, whole site."""
    response.set_cookie(
        name, value, max_age=max_age, httponly=True, samesite="strict", path="/", secure=False
    )


def install_security_headers(app: FastAPI, prefix: str = "/") -> None:
    """Add the headers of the module docstring to responses of ``app`` under ``prefix``."""

    @app.middleware("http")
    async def headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        if request.url.path.startswith(prefix):
            for name, value in _HEADERS.items():
                response.headers.setdefault(name, value)
        return response


def install_trusted_proxies(app: FastAPI, proxies: Iterable[str]) -> None:
    """Believe ``X-Forwarded-For`` from ``proxies`` (addresses / networks) only.

    A request arriving from one of them is attributed to the client the header names
    (uvicorn's proxy-headers middleware: the nearest address that is not itself a
    trusted proxy); from anywhere else the header is ignored. Call it after every other
    middleware of ``app``, so that it runs first and all of them see the real client.
    """
    trusted = [str(network) for network in parse_networks(proxies)]
    if trusted:
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=trusted)


def parse_networks(
    texts: Iterable[str],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Addresses or CIDR networks (``192.0.2.7``, ``10.0.0.0/8``, ``::1``) as networks."""
    return tuple(ipaddress.ip_network(t.strip(), strict=False) for t in texts)


def client_allowed(
    host: str | None, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    """Whether a client at ``host`` may use the page (any client when ``networks`` is empty)."""
    if not networks:
        return True
    if host is None:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address.version == n.version and address in n for n in networks)


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` is a loopback address (the machine itself)."""
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def from_the_machine(
    source: str | None,
    host_header: str | None,
    proxies: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
) -> bool:
    """Whether a request from ``source`` is the machine itself: loopback, not a proxy.

    A proxy or carrier on loopback (``proxies``) forwards clients from elsewhere; and a
    page on loopback answers the machine only under a loopback name (see
    :func:`loopback_host_header`).
    """
    via_proxy = bool(proxies) and client_allowed(source, proxies)
    return is_loopback(source) and not via_proxy and loopback_host_header(host_header)


def loopback_host_header(value: str | None) -> bool:
    """Whether a ``Host`` header names this machine's loopback (``localhost``, 127.x, ``[::1]``).

    A page on the loopback address answers only to such names: a web site that
    rebinds its own DNS name to 127.0.0.1 sends its name, and is refused.
    """
    if not value:
        return False
    host = value.rsplit(":", 1)[0] if not value.endswith("]") and value.count(":") == 1 else value
    host = host.split("]")[0].lstrip("[") if host.startswith("[") else host
    return host.lower() == "localhost" or is_loopback(host)


def templates(*directories: Path) -> Jinja2Templates:
    """Templates from ``directories`` first, then the shared layout; autoescaped."""
    loader = ChoiceLoader([FileSystemLoader(str(d)) for d in (*directories, TEMPLATES_DIR)])
    env = Environment(loader=loader, autoescape=select_autoescape(default=True))
    return Jinja2Templates(env=env)


def bind(host: str, port: int) -> socket.socket:
    """A listening, non-blocking TCP socket on ``host:port`` (port 0: the OS picks)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        raise NotReady(
            f"cannot listen on {format_address(host, port)}: {exc.strerror or exc}"
        ) from None
    sock.setblocking(False)
    return sock


def url_of(sock: socket.socket) -> str:
    """``http://HOST:PORT`` of a bound socket."""
    host, port = sock.getsockname()[:2]
    return f"http://{format_address(str(host), int(port))}"


class QuietServer(uvicorn.Server):
    """uvicorn, minus its signal handling: the process that embeds it decides when to stop."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Install no signal handlers."""
        yield
