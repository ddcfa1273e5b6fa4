"""``tether web SERIAL``: a local port forwarded through the relay to a machine's port.

asyncssh is the SSH client here: it logs in to the relay as the engineer with the
stored key and certificate, checks the relay's host key against the ``known_hosts``
written at login (nothing else is trusted, no ``~/.ssh/config`` is read, no agent is
asked), and forwards ``127.0.0.1:N`` to ``SERIAL:PORT`` with ``direct-tcpip``, exactly
what ``ssh -L N:SERIAL:PORT tether-relay`` would do.

Before the local port opens, one channel is opened and closed again: if the relay
refuses it (the machine is not tethered, the port is not open), its reason is shown
at once instead of a browser error later. Through that channel goes what a browser
sends first over HTTPS, a TLS ClientHello: a TLS record in reply means the URL to
print is ``https://``, anything else (an HTTP error, silence) ``http://``. The
forwarding ends when the certificate expires or the relay drops the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path

from tether.clock import Clock
from tether.engineer.client import clean_detail
from tether.engineer.identity import load_client_identity
from tether.engineer.state import CertificateExpired, Session, format_utc, login_command
from tether.errors import NotReady, Refused
from tether.keys import check_serial
from tether.sshlib import asyncssh

#: Seconds to reach the relay and log in before giving up.
CONNECT_TIMEOUT = 15.0
#: The loopback address the local port listens on (never any other interface).
LOCAL_HOST = "127.0.0.1"


#: Seconds the machine's port has at least to answer the TLS probe.
PROBE_TIMEOUT = 2.0
#: ... or this many times as long as opening the channel to it took (a slow link).
PROBE_ROUND_TRIPS = 4
#: TLS record types that only a TLS server sends first: handshake, alert.
_TLS_RECORDS = (0x16, 0x15)
#: Sent after the ClientHello: an HTTP server that reads a request line or header
#: block then answers (400) at once instead of waiting; a TLS server has answered the
#: hello before it reads these.
_END_OF_HEADERS = b"\r\n\r\n"


def web_url(local_port: int, scheme: str) -> str:
    """The URL to open in a browser: ``SCHEME://127.0.0.1:LOCAL_PORT/``."""
    return f"{scheme}://{LOCAL_HOST}:{local_port}/"


def client_hello() -> bytes:
    """A TLS ClientHello, the first bytes a browser sends to an https:// URL."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    outgoing = ssl.MemoryBIO()
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing)
    with contextlib.suppress(ssl.SSLWantReadError):  # it now waits for the server's answer
        tls.do_handshake()
    return outgoing.read()


def speaks_tls(answer: bytes) -> bool:
    """Whether a server's first bytes after a ClientHello are a TLS record (any 3.x version).

    A TLS server answers with a handshake record (ServerHello) or, if it dislikes the
    hello, an alert; an HTTP server answers ``HTTP/1.1 400`` or nothing at all.
    """
    return len(answer) >= 2 and answer[0] in _TLS_RECORDS and answer[1] == 0x03


async def probe_scheme(
    reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes], round_trip: float
) -> str:
    """``https`` if the stream's far end answers a ClientHello with TLS, else ``http``.

    A TLS server always answers a ClientHello; silence for :data:`PROBE_TIMEOUT` (or
    :data:`PROBE_ROUND_TRIPS` times ``round_trip``, the seconds opening the channel
    took) means something else is listening there, so ``http``.
    """
    writer.write(client_hello() + _END_OF_HEADERS)
    try:
        async with asyncio.timeout(max(PROBE_TIMEOUT, PROBE_ROUND_TRIPS * round_trip)):
            answer = await reader.read(5)
    except (TimeoutError, OSError, asyncssh.Error):
        answer = b""
    return "https" if speaks_tls(answer) else "http"


class _Client(asyncssh.SSHClient):
    """Remembers why the connection to the relay ended."""

    def __init__(self) -> None:
        """Nothing lost yet."""
        self.lost: Exception | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        """Remember the reason (``None``: closed by us)."""
        self.lost = exc


class WebForward:
    """A running forwarding from ``127.0.0.1:local_port`` to ``serial:port``.

    :param conn: the SSH connection to the relay.
    :param client: its client object (knows why it ended).
    :param listener: the local listener.
    :param serial: the machine.
    :param port: the machine's port.
    :param scheme: ``https`` or ``http``, what that port serves.
    """

    def __init__(
        self,
        conn: asyncssh.SSHClientConnection,
        client: _Client,
        listener: asyncssh.SSHListener,
        serial: str,
        port: int,
        scheme: str,
    ) -> None:
        """Hold the open connection and listener (see :func:`open_web`)."""
        self._conn = conn
        self._client = client
        self._listener = listener
        self.serial = serial
        self.port = port
        #: ``https`` or ``http``: what the machine's port serves.
        self.scheme = scheme

    @property
    def local_port(self) -> int:
        """The local port (the OS picked it if none was asked for)."""
        return self._listener.get_port()

    @property
    def url(self) -> str:
        """What to open in a browser."""
        return web_url(self.local_port, self.scheme)

    async def run_until(self, deadline: datetime, clock: Clock, *, vendor: str) -> None:
        """Forward until ``deadline`` (the certificate's end) or until the relay drops us.

        Both end with an error that says why (exit 1); cancellation (Ctrl-C) just returns.
        """
        remaining = max(0.0, (deadline - clock.now()).total_seconds())
        try:
            await asyncio.wait_for(self._conn.wait_closed(), timeout=remaining)
        except TimeoutError:
            raise CertificateExpired(
                f"your certificate expired at {format_utc(deadline)}; the local port is closed — "
                f"run `{login_command(vendor)}` again"
            ) from None
        reason = self._client.lost
        words = (
            clean_detail(getattr(reason, "reason", "") or str(reason or "")) or "no reason given"
        )
        raise NotReady(f"the relay closed the connection ({words}); the local port is closed")

    async def aclose(self) -> None:
        """Stop listening and close the connection to the relay."""
        self._listener.close()
        self._conn.close()
        await self._conn.wait_closed()


async def _connect(
    session: Session, ask_passphrase: Callable[[Path], str] | None
) -> tuple[asyncssh.SSHClientConnection, _Client]:
    """Log in to the relay as the engineer; every failure in words, with what to do."""
    settings = session.settings
    key, certificate = load_client_identity(
        settings.key, settings.certificate, ask_passphrase=ask_passphrase
    )
    relay = settings.relay
    again = f"run `{login_command(settings.vendor)}` again"
    client = _Client()
    try:
        conn, _ = await asyncssh.create_connection(
            lambda: client,
            settings.relay_host,
            settings.relay_port,
            username=settings.engineer,
            client_keys=[(key, certificate)],
            known_hosts=str(session.state.known_hosts_path),
            config=None,
            agent_path=None,
            password_auth=False,
            kbdint_auth=False,
            connect_timeout=CONNECT_TIMEOUT,
            keepalive_interval=30,
        )
    except asyncssh.PermissionDenied:
        raise Refused(
            f"the relay at {relay} refused your certificate (your account may be disabled, "
            f"or the certificate replaced): {again}"
        ) from None
    except asyncssh.HostKeyNotVerifiable:
        raise Refused(
            f"the relay at {relay} showed a host key other than the one the vendor service "
            f"gave at login; not connecting. If the vendor changed it, {again}"
        ) from None
    except asyncssh.DisconnectError as exc:
        raise NotReady(
            f"the relay at {relay} closed the connection: {clean_detail(exc.reason)}"
        ) from None
    except (OSError, TimeoutError) as exc:
        words = clean_detail(getattr(exc, "strerror", None) or str(exc)) or "timed out"
        raise NotReady(f"cannot reach the relay at {relay} ({words}); check your network") from None
    return conn, client


@asynccontextmanager
async def open_web(
    session: Session,
    serial: str,
    port: int,
    *,
    local_port: int = 0,
    ask_passphrase: Callable[[Path], str] | None = None,
) -> AsyncIterator[WebForward]:
    """Connect to the relay and forward ``127.0.0.1:local_port`` to ``serial:port``.

    ``local_port`` 0 lets the OS pick. The forward's :attr:`~WebForward.url` says
    ``https://`` or ``http://`` by what the port answered (see :func:`probe_scheme`). A refusal from the relay is raised as
    :class:`Refused` in the relay's own words; a local port in use as :class:`Refused`.
    """
    check_serial(serial)
    conn, client = await _connect(session, ask_passphrase)
    try:
        started = time.monotonic()
        try:
            reader, writer = await conn.open_connection(serial, port)
        except asyncssh.ChannelOpenError as exc:
            raise Refused(
                f"the relay refused {serial}:{port}: {clean_detail(exc.reason)}"
            ) from None
        try:
            scheme = await probe_scheme(reader, writer, time.monotonic() - started)
        finally:
            writer.close()
        try:
            listener = await conn.forward_local_port(LOCAL_HOST, local_port, serial, port)
        except OSError as exc:
            raise Refused(
                f"cannot listen on {LOCAL_HOST}:{local_port} ({clean_detail(exc.strerror or str(exc))}); "
                "choose another --local-port or leave it out"
            ) from None
    except BaseException:
        conn.close()
        await conn.wait_closed()
        raise
    forward = WebForward(conn, client, listener, serial, port, scheme)
    try:
        yield forward
    finally:
        await forward.aclose()
