"""How the agent reaches the relay: direct SSH, TLS, TLS through an HTTP proxy, WebSocket.

Networks that allow only HTTPS, often only through a proxy that wants a password, still
let a browser out; the agent goes the same ways, in the order ``[network] transports``
of agent.toml gives (by default all of them, in this order):

- ``ssh``: TCP to the relay, SSH on it (as before).
- ``tls``: TCP to the relay, TLS, SSH inside.
- ``websocket-tls``: TCP to the relay, TLS, a WebSocket upgrade inside, SSH in binary
  messages (for firewalls that break TLS open and pass only HTTP inside).
- ``tls-proxy``: HTTP ``CONNECT`` to the relay through the proxy, TLS, SSH inside.
- ``websocket-tls-proxy``: the same ``CONNECT`` and TLS, then a WebSocket inside (for
  proxies that inspect TLS and pass only HTTP inside it, as browsers' traffic is).
- ``websocket-proxy``: an HTTP WebSocket upgrade through the proxy (for proxies that
  refuse ``CONNECT`` but pass upgrades), SSH in binary messages.

The SSH inside is always the same: the relay host key pinned by the tether key is the
trust. TLS certificates are not checked (a TLS-inspecting proxy presents its own, and
then sees only SSH it cannot read or impersonate); the issuer is kept for diagnosis.

The proxy comes from ``[network] proxy``, else from the service's ``HTTPS_PROXY`` (and
``NO_PROXY``). Its user and password come only from a file readable by its owner alone
(``proxy_credentials``, ``user:password``), or from ``HTTPS_PROXY``'s URL; they go only
into the ``Proxy-Authorization`` header, never into a log line, a status or an error.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
import ssl
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import h11

from tether.carriers import WEBSOCKET_PATH, CodecLayer, LayerError, TlsCodec, WebSocketCodec
from tether.errors import ConfigError
from tether.keys import is_ip_address
from tether.tlscert import fingerprint_of, issuer_of


class TransportKind(StrEnum):
    """One way to the relay (the words of ``[network] transports`` and of ``status``)."""

    SSH = "ssh"
    TLS = "tls"
    WEBSOCKET_TLS = "websocket-tls"
    TLS_PROXY = "tls-proxy"
    WEBSOCKET_TLS_PROXY = "websocket-tls-proxy"
    WEBSOCKET_PROXY = "websocket-proxy"

    @property
    def via_proxy(self) -> bool:
        """Goes through the HTTP proxy."""
        return self in (
            TransportKind.TLS_PROXY,
            TransportKind.WEBSOCKET_TLS_PROXY,
            TransportKind.WEBSOCKET_PROXY,
        )

    @property
    def tunnels(self) -> bool:
        """Asks the proxy for a ``CONNECT`` tunnel to the relay."""
        return self in (TransportKind.TLS_PROXY, TransportKind.WEBSOCKET_TLS_PROXY)

    @property
    def tls(self) -> bool:
        """Speaks TLS with the relay (or with a proxy that inspects it)."""
        return self not in (TransportKind.SSH, TransportKind.WEBSOCKET_PROXY)

    @property
    def websocket(self) -> bool:
        """Carries SSH in WebSocket messages."""
        return self in (
            TransportKind.WEBSOCKET_TLS,
            TransportKind.WEBSOCKET_TLS_PROXY,
            TransportKind.WEBSOCKET_PROXY,
        )


DEFAULT_TRANSPORTS = tuple(TransportKind)


@dataclass(frozen=True)
class NetworkSettings:
    """The ``[network]`` table of agent.toml.

    :ivar transports: the ways to try, in order.
    :ivar proxy: ``http://host:port`` of the HTTP proxy (no credentials in it);
        ``None``: ``HTTPS_PROXY`` / ``NO_PROXY`` of the environment decide.
    :ivar proxy_credentials: a file holding ``user:password`` for the proxy, readable
        by its owner only (mode 0600 or stricter).
    """

    transports: tuple[TransportKind, ...] = DEFAULT_TRANSPORTS
    proxy: str | None = None
    proxy_credentials: Path | None = None
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ, compare=False)


class NetworkError(Exception):
    """A way to the relay failed for a reason a person can act on; the text says which.

    :ivar kind: a short machine-readable cause (``proxy-auth``, ``proxy-refused``,
        ``proxy-unreachable``, ``tls``, ``websocket-refused``...).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class Proxy:
    """An HTTP proxy: where it is and how to log in (credentials are never printed)."""

    host: str
    port: int
    #: ``Proxy-Authorization`` value, or ``None``.
    authorization: str | None = field(default=None, repr=False)
    #: Where the credentials came from, for messages ("" when none).
    credentials_from: str = ""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def parse_proxy_url(text: str, *, where: str) -> tuple[str, int, str | None]:
    """``http://[user:pass@]host[:port]`` → (host, port, ``user:pass`` or None)."""
    url = urlsplit(text if "://" in text else f"http://{text}")
    if url.scheme not in ("http", ""):
        raise ConfigError(f"{where}: only http:// proxies are supported, not {url.scheme}://")
    try:
        port = url.port or 3128
    except ValueError:
        raise ConfigError(f"{where}: the proxy URL has a bad port") from None
    if not url.hostname:
        raise ConfigError(f"{where}: the proxy URL names no host")
    userinfo = None
    if url.username is not None:
        userinfo = f"{unquote(url.username)}:{unquote(url.password or '')}"
    return url.hostname, port, userinfo


def read_credentials(path: Path) -> str:
    """The ``user:password`` in ``path``, refused unless only its owner can read it."""
    try:
        info = path.stat()
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read the proxy credentials file {path}: {exc.strerror}"
        ) from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"the proxy credentials file {path} can be read by other users "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}"
        )
    line = text.strip("\r\n")
    if ":" not in line or "\n" in line or not line.split(":", 1)[0]:
        raise ConfigError(f"the proxy credentials file {path} must hold one line, user:password")
    return line


def _bypassed(host: str, no_proxy: str) -> bool:
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        entry = entry.split(":", 1)[0] if entry.count(":") == 1 else entry
        try:
            if ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False):
                return True
            continue
        except ValueError:
            pass
        name = entry.lstrip(".")
        if host.lower() == name or host.lower().endswith("." + name):
            return True
    return False


def resolve_proxy(settings: NetworkSettings, relay_host: str) -> Proxy | None:
    """The proxy to use for ``relay_host`` (``None``: none configured, or bypassed)."""
    env = settings.environ
    if settings.proxy is not None:
        host, port, userinfo = parse_proxy_url(settings.proxy, where="[network] proxy")
        source = "[network] proxy"
    else:
        text = env.get("HTTPS_PROXY") or env.get("https_proxy")
        if not text:
            return None
        if _bypassed(relay_host, env.get("NO_PROXY") or env.get("no_proxy") or ""):
            return None
        host, port, userinfo = parse_proxy_url(text, where="HTTPS_PROXY")
        source = "HTTPS_PROXY"
    if settings.proxy_credentials is not None:
        userinfo = read_credentials(settings.proxy_credentials)
        source = str(settings.proxy_credentials)
    authorization = None
    if userinfo is not None:
        token = base64.b64encode(userinfo.encode()).decode()
        authorization = f"Basic {token}"
    return Proxy(host, port, authorization, source if userinfo is not None else "")


class ReadyProtocol(asyncio.Protocol):
    """Waits for a (layered) connection to be made, keeping what arrives meanwhile."""

    def __init__(self) -> None:
        self.made: asyncio.Future[asyncio.Transport] = asyncio.get_running_loop().create_future()
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self.made.done() and isinstance(transport, asyncio.Transport):
            self.made.set_result(transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data

    def fail(self, exc: Exception) -> None:
        if not self.made.done():
            self.made.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(ConnectionResetError("the connection closed before it was ready"))


class _Connect(asyncio.Protocol):
    """An HTTP ``CONNECT`` through a proxy (parsed by h11)."""

    def __init__(self, target: str, authorization: str | None) -> None:
        self._http = h11.Connection(h11.CLIENT)
        headers = [("Host", target)]
        if authorization is not None:
            headers.append(("Proxy-Authorization", authorization))
        self._request = self._http.send(
            h11.Request(method="CONNECT", target=target, headers=headers)
        )
        self.done: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, asyncio.Transport):
            transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        try:
            self._http.receive_data(data)
            event = self._http.next_event()
        except h11.RemoteProtocolError as exc:
            self.done.set_exception(NetworkError("proxy", f"the proxy answered nonsense: {exc}"))
            return
        if isinstance(event, h11.Response):
            trailing = self._http.trailing_data[0] if event.status_code == 200 else b""
            self.done.set_result((event.status_code, bytes(trailing)))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(
                NetworkError("proxy", "the proxy closed the connection without an answer")
            )


def _client_tls() -> ssl.SSLContext:
    # No certificate check on purpose: the pinned SSH host key inside is the trust.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    return context


def proxy_status_words(status: int, proxy: Proxy, target: str) -> NetworkError:
    """What a proxy's refusal means, with the fix."""
    if status == 407:
        if proxy.authorization is None:
            return NetworkError(
                "proxy-auth",
                f"the proxy at {proxy.address} wants a user and password (HTTP 407); "
                "put user:password in a file only root can read and name it in "
                "[network] proxy_credentials",
            )
        return NetworkError(
            "proxy-auth",
            f"the proxy at {proxy.address} refused the user and password from "
            f"{proxy.credentials_from} (HTTP 407); check them",
        )
    if status == 403:
        return NetworkError(
            "proxy-refused",
            f"the proxy at {proxy.address} refused to connect to {target} (HTTP 403); "
            f"ask the network's administrator to allow {target}",
        )
    return NetworkError(
        "proxy-refused", f"the proxy at {proxy.address} answered HTTP {status} for {target}"
    )


class Carrier:
    """One way to the relay, as asyncssh's ``tunnel``: it opens the byte stream for SSH.

    :ivar tls_issuer: the issuer of the TLS certificate seen (``""``: no TLS yet).
    :ivar tls_fingerprint: that certificate's SHA-256 in hex (``""``: no TLS yet).
    :ivar reached: the TCP connection to the proxy (or to the relay) was made.
    """

    def __init__(self, kind: TransportKind, proxy: Proxy | None) -> None:
        if kind.via_proxy and proxy is None:
            raise NetworkError(
                "no-proxy", "no proxy is configured ([network] proxy or HTTPS_PROXY)"
            )
        self.kind = kind
        self.proxy = proxy
        self.tls_issuer = ""
        self.tls_fingerprint = ""
        #: The TCP connection (to the proxy, or to the relay) was made.
        self.reached = False

    def describe(self) -> str:
        """``tls-proxy via proxy:3128`` (never the credentials)."""
        if self.kind.via_proxy and self.proxy is not None:
            return f"{self.kind.value} via {self.proxy.address}"
        return self.kind.value

    async def create_connection(
        self, session_factory: Callable[[], asyncio.BaseProtocol], host: str, port: int
    ) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
        """Open the stream to ``host:port`` and run ``session_factory()``'s protocol on it."""
        loop = asyncio.get_running_loop()
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if self.kind.via_proxy:
            proxy = self.proxy
            if proxy is None:  # pragma: no cover - checked in __init__
                raise NetworkError("no-proxy", "no proxy configured")
            try:
                raw, _ = await loop.create_connection(ReadyProtocol, proxy.host, proxy.port)
            except OSError as exc:
                raise NetworkError(
                    "proxy-unreachable",
                    f"cannot reach the proxy at {proxy.address} ({exc.strerror or exc})",
                ) from None
            self.reached = True
            transport: asyncio.Transport = raw
            leftover = b""
            if self.kind.tunnels:
                connect = _Connect(target, proxy.authorization)
                transport.set_protocol(connect)
                connect.connection_made(transport)
                try:
                    status, leftover = await connect.done
                except BaseException:
                    transport.abort()
                    raise
                if status != 200:
                    transport.abort()
                    raise proxy_status_words(status, proxy, target)
        else:
            transport, _ = await loop.create_connection(ReadyProtocol, host, port)
            self.reached = True
            leftover = b""
        try:
            if self.kind.tls:
                sni = None if is_ip_address(host) else host
                transport = await stack_layer(
                    transport,
                    TlsCodec(_client_tls(), server_side=False, server_hostname=sni),
                    leftover,
                )
                leftover = b""
                seen = transport.get_extra_info("tls_peer_certificate")
                self.tls_issuer = issuer_of(seen)
                self.tls_fingerprint = fingerprint_of(seen)
            if self.kind.websocket:
                transport = await self._upgrade(transport, target, leftover)
        except LayerError as exc:
            transport.abort()
            raise NetworkError("tls", f"{exc} (through {self.describe()})") from None
        except BaseException:
            transport.abort()
            raise
        session = session_factory()
        pending = transport.get_protocol()
        transport.set_protocol(session)
        session.connection_made(transport)
        if (
            isinstance(pending, ReadyProtocol)
            and pending.buffer
            and isinstance(session, asyncio.Protocol)
        ):
            session.data_received(pending.buffer)
        return transport, session

    async def _upgrade(
        self, transport: asyncio.Transport, target: str, leftover: bytes
    ) -> asyncio.Transport:
        """The WebSocket upgrade: through the proxy as an absolute request with the
        proxy's credentials, or, inside TLS, to the relay itself."""
        headers: list[tuple[bytes, bytes]] = []
        request = WEBSOCKET_PATH
        if self.kind == TransportKind.WEBSOCKET_PROXY:
            request = f"http://{target}{WEBSOCKET_PATH}"
            if self.proxy is not None and self.proxy.authorization is not None:
                headers.append((b"Proxy-Authorization", self.proxy.authorization.encode()))
        codec = WebSocketCodec(host=target, target=request, headers=headers)
        try:
            return await stack_layer(transport, codec, leftover)
        except LayerError as exc:
            # An inspecting proxy answers inside the TLS it broke open, like the others.
            if codec.status in (403, 407) and self.proxy is not None and self.kind.via_proxy:
                raise proxy_status_words(codec.status, self.proxy, target) from None
            raise NetworkError("websocket-refused", str(exc)) from None

    def close(self) -> None:
        """asyncssh calls this on tunnels it opened itself; nothing to do here."""

    async def wait_closed(self) -> None:
        return None

    def __repr__(self) -> str:
        return self.describe()


async def stack_layer(outer: asyncio.Transport, codec: Any, leftover: bytes) -> asyncio.Transport:
    """Run ``codec`` on ``outer`` (``leftover``: bytes already read) until its handshake
    is done; return the layer, whose protocol is a :class:`ReadyProtocol` until replaced.

    Raises :class:`~tether.carriers.LayerError` when the handshake fails.
    """
    ready = ReadyProtocol()
    layer = CodecLayer(codec, ready, failed=ready.fail)
    outer.set_protocol(layer)
    layer.connection_made(outer)
    if leftover:
        layer.data_received(leftover)
    try:
        return await ready.made
    except ConnectionResetError:
        raise LayerError("the connection closed during the handshake") from None


__all__ = [
    "DEFAULT_TRANSPORTS",
    "Carrier",
    "NetworkError",
    "NetworkSettings",
    "Proxy",
    "ReadyProtocol",
    "TransportKind",
    "read_credentials",
    "resolve_proxy",
    "stack_layer",
]
