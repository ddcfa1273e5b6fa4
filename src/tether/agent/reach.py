"""How the agent reaches a relay: the pinned SSH login over the ways ``[network]`` allows.

:func:`connect_any` is the one path for the tether, one-click requests and spent-key
reports: it tries the configured transports (:mod:`tether.agent.network`) in order,
the one that last worked first, and says in plain words why each failed.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import socket

from tether.agent.network import Carrier, NetworkError, TransportKind, resolve_proxy
from tether.config import TetherSettings
from tether.keys import parse_address
from tether.sshlib import asyncssh
from tether.tuning import coalesce_writes, skip_ignore_packets
from tether.wire import AGENT_USERNAME, CHANNEL_MAX_PACKET, CHANNEL_WINDOW, TRANSPORT_CIPHERS


class PinnedClient(asyncssh.SSHClient):
    """Accepts exactly the relay host key whose fingerprint the tether key pins."""

    def __init__(self, fingerprint: str) -> None:
        self._fingerprint = fingerprint
        self.mismatch: str | None = None

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        coalesce_writes(conn)
        skip_ignore_packets(conn)

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        seen = key.get_fingerprint("sha256")
        if seen != self._fingerprint:
            self.mismatch = seen
            return False
        return True


async def connect_as_agent(
    relay: str,
    client: PinnedClient,
    machine_key: asyncssh.SSHKey,
    *,
    within: float,
    keepalive_interval: float = 0.0,
    keepalive_count_max: int = 3,
    carrier: Carrier | None = None,
) -> asyncssh.SSHClientConnection:
    """Log in to ``relay`` as an agent with the machine key, its host key pinned by ``client``.

    Nothing of the local user's SSH setup is used (no config file, no ssh-agent).
    ``carrier``: the way to the relay (TLS, a proxy...); ``None``: SSH over TCP.
    Raises :class:`asyncssh.HostKeyNotVerifiable` when the pin does not match, and
    :class:`~tether.agent.network.NetworkError` when the carrier fails.
    """
    host, port = parse_address(relay)
    return await asyncio.wait_for(
        asyncssh.connect(
            host,
            port,
            tunnel=carrier if carrier is not None and carrier.kind != TransportKind.SSH else (),
            username=AGENT_USERNAME,
            client_keys=[machine_key],
            client_factory=lambda: client,
            known_hosts=([], [], []),
            config=None,
            agent_path=None,
            keepalive_interval=keepalive_interval,
            keepalive_count_max=keepalive_count_max,
            preferred_auth=["publickey"],
            encryption_algs=list(TRANSPORT_CIPHERS),
            window=CHANNEL_WINDOW,
            max_pktsize=CHANNEL_MAX_PACKET,
        ),
        within,
    )


class NoWayToRelay(Exception):
    """Every way to the relay failed; the message says why, per way when they differ."""


def carriers_for(
    relay: str, settings: TetherSettings, first: TransportKind | None = None
) -> list[Carrier]:
    """The ways to ``relay`` to try, in ``[network]`` order with ``first`` moved ahead.

    Ways through a proxy are left out when no proxy is configured. Raises
    :class:`~tether.errors.ConfigError` when the proxy settings cannot be used (a
    credentials file others can read...).
    """
    network = settings.network
    kinds = list(network.transports)
    if first in kinds:
        kinds.remove(first)
        kinds.insert(0, first)
    host, _ = parse_address(relay)
    proxy = resolve_proxy(network, host) if any(k.via_proxy for k in kinds) else None
    return [Carrier(kind, proxy) for kind in kinds if proxy is not None or not kind.via_proxy]


async def connect_any(
    relay: str,
    client: PinnedClient,
    machine_key: asyncssh.SSHKey,
    settings: TetherSettings,
    *,
    first: TransportKind | None = None,
    keepalive: bool = True,
) -> tuple[asyncssh.SSHClientConnection, Carrier, list[str]]:
    """Log in to ``relay`` over the first way that works (tether, requests, reports).

    :returns: the connection, the way it went, and why the ways tried before failed.
    :raises asyncssh.HostKeyNotVerifiable: the relay's key is not the pinned one (the
        same relay answers every way: the others are not tried).
    :raises NoWayToRelay: none worked; the message says why.
    :raises ConfigError: the proxy settings cannot be used.
    """
    failures: list[str] = []
    carriers = carriers_for(relay, settings, first)
    if not carriers:
        raise NoWayToRelay("no way to the relay: the transports need a proxy and none is set")
    # Where the TCP connection itself failed (to the relay directly, or to the proxy),
    # the other ways on that same connection are not tried this round: a dropped port
    # would cost each of them its own timeout.
    unreachable: set[bool] = set()
    skipped: list[str] = []
    for carrier in carriers:
        if carrier.kind != TransportKind.SSH and carrier.kind.via_proxy in unreachable:
            what = "the proxy" if carrier.kind.via_proxy else "the relay"
            skipped.append(f"{carrier.kind.value}: not tried ({what} could not be reached)")
            continue
        try:
            conn = await connect_as_agent(
                relay,
                client,
                machine_key,
                within=settings.connect_timeout,
                keepalive_interval=settings.keepalive_interval if keepalive else 0.0,
                keepalive_count_max=settings.keepalive_count_max,
                carrier=carrier,
            )
        except asyncssh.HostKeyNotVerifiable:
            raise
        except NetworkError as exc:
            failures.append(f"{carrier.kind.value}: {exc.message}")
        except (TimeoutError, OSError, asyncssh.Error) as exc:
            failures.append(f"{carrier.kind.value}: {describe_error(exc, relay)}")
        else:
            return conn, carrier, failures
        if carrier.kind != TransportKind.SSH and not carrier.reached:
            unreachable.add(carrier.kind.via_proxy)
    # The same words on every way tried (the relay is down): say them once; the ways
    # not tried would only have said them again.
    words = {failure.split(": ", 1)[1] for failure in failures}
    if len(words) == 1:
        raise NoWayToRelay(words.pop())
    raise NoWayToRelay(f"relay {relay} unreachable every way: {'; '.join(failures + skipped)}")


def describe_error(exc: BaseException, relay: str) -> str:
    if isinstance(exc, asyncssh.PermissionDenied):
        return "relay did not accept this machine's key"
    if isinstance(exc, asyncssh.DisconnectError):
        return f"relay disconnected: {exc.reason}"
    return cannot_reach(relay, exc)


#: errno → the words a person reads (``os.strerror`` says "Connection refused" too,
#: but a multi-address connect only leaves "[Errno 111] …" in its message).
_ERRNO_WORDS = {
    errno.ECONNREFUSED: "connection refused",
    errno.ETIMEDOUT: "timed out",
    errno.EHOSTUNREACH: "no route to host",
    errno.ENETUNREACH: "network unreachable",
    errno.ECONNRESET: "connection reset",
    errno.EADDRNOTAVAIL: "address not available",
}
_ERRNO_IN_TEXT = re.compile(r"\[Errno (-?\d+)\]")


def connect_failure(exc: BaseException) -> str:
    """Say in a few words why a connection failed: "connection refused", "timed out"…

    Never a raw ``[Errno 111] Connect call failed ('127.0.0.1', 2222)``: asyncio
    puts the errno only in the text when it tried several addresses.
    """
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return f"name not found: {(exc.strerror or str(exc)).lower()}"
    code = getattr(exc, "errno", None)
    if code is None and (found := _ERRNO_IN_TEXT.search(str(exc))) is not None:
        code = int(found.group(1))
    if isinstance(code, int) and code > 0:
        return _ERRNO_WORDS.get(code) or os.strerror(code).lower()
    words = (exc.reason if isinstance(exc, asyncssh.Error) else str(exc)) or type(exc).__name__
    return words[:1].lower() + words[1:]


def cannot_reach(relay: str, exc: BaseException) -> str:
    """``cannot reach the relay at HOST:PORT (connection refused)``, for any failure."""
    return f"cannot reach the relay at {relay} ({connect_failure(exc)})"
