"""``tether web SERIAL``: a local port forwarded through the relay to a machine's port.

asyncssh is the SSH client here: it logs in to the relay as the engineer with the
stored key and certificate, checks the relay's host key against the ``known_hosts``
written at login (nothing else is trusted, no ``~/.ssh/config`` is read, no agent is
asked), and forwards ``127.0.0.1:N`` to ``SERIAL:PORT`` with ``direct-tcpip``, exactly
what ``ssh -L N:SERIAL:PORT tether-relay`` would do.

Before the local port opens, one channel is opened and closed again: if the relay
refuses it (the machine is not tethered, the port is not open), its reason is shown
at once instead of a browser error later. The forwarding ends when the certificate
expires or the relay drops the connection.
"""

from __future__ import annotations

import asyncio
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


def web_url(local_port: int, machine_port: int) -> str:
    """The URL to open: ``http://`` for the machine's port 80, else ``https://``."""
    scheme = "http" if machine_port == 80 else "https"
    return f"{scheme}://{LOCAL_HOST}:{local_port}/"


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
    """

    def __init__(
        self,
        conn: asyncssh.SSHClientConnection,
        client: _Client,
        listener: asyncssh.SSHListener,
        serial: str,
        port: int,
    ) -> None:
        """Hold the open connection and listener (see :func:`open_web`)."""
        self._conn = conn
        self._client = client
        self._listener = listener
        self.serial = serial
        self.port = port

    @property
    def local_port(self) -> int:
        """The local port (the OS picked it if none was asked for)."""
        return self._listener.get_port()

    @property
    def url(self) -> str:
        """What to open in a browser."""
        return web_url(self.local_port, self.port)

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

    ``local_port`` 0 lets the OS pick. A refusal from the relay is raised as
    :class:`Refused` in the relay's own words; a local port in use as :class:`Refused`.
    """
    check_serial(serial)
    conn, client = await _connect(session, ask_passphrase)
    try:
        try:
            _, writer = await conn.open_connection(serial, port)
        except asyncssh.ChannelOpenError as exc:
            raise Refused(
                f"the relay refused {serial}:{port}: {clean_detail(exc.reason)}"
            ) from None
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
    forward = WebForward(conn, client, listener, serial, port)
    try:
        yield forward
    finally:
        await forward.aclose()
