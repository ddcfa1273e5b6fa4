"""The pre-auth gate at the relay's door: every connection is admitted, or refused, at accept.

:class:`Door` asks the relay's :class:`~tether.relay.gate.Gate` about each accepted TCP
connection before anything else is spent on it: before TLS, before a WebSocket upgrade,
before an asyncssh connection object is built. A connection still inside TLS or a
WebSocket handshake therefore holds a gate slot as much as one inside the SSH key
exchange, and one mechanism bounds them all (per address, per block, eviction,
shrinking login time, penalties).

A refused connection costs one write of constant bytes and a close. For a stock ``ssh``
the bytes say why: an SSH version line, then an unencrypted ``SSH_MSG_DISCONNECT``
(RFC 4253 §11.1; before the key exchange packets travel unencrypted, §6), which OpenSSH
prints as ``Received disconnect from HOST port PORT:12: too many connections waiting to
log in; retry``. (A line before the version, RFC 4253 §4.2, is shown only with ``-v``.)
The relay then shuts its sending side and discards what the client sends for up to
:data:`REFUSAL_LINGER` seconds, so that the refusal reaches the client before the
connection is torn down.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from typing import Protocol

from tether.config import RelayConfig
from tether.relay.gate import Drop, Gate, GateLimits, Outcome, RefusalSummary

#: What a refused client is told (its ``ssh`` prints it).
REFUSED_MESSAGE = "too many connections waiting to log in; retry"
#: Seconds a refused connection stays open, reading and discarding, after the refusal
#: was sent and its sending side shut: closing at once, with the client's own version
#: line unread, makes the kernel answer with a reset that can destroy the refusal before
#: the client's ssh reads it ("Broken pipe" instead of the reason).
REFUSAL_LINGER = 1.0
#: Refused connections lingering at most; beyond, the next refused one is closed at once.
MAX_LINGERING = 512
#: Connections the kernel holds for the relay before it accepts them (the listen backlog).
LISTEN_BACKLOG = 1024
#: Connections accepted in one turn of the event loop. asyncio accepts as many as the
#: listen backlog in one go: under a flood that was up to 1,024 connections set up
#: (and most refused) before anything else ran, and every step of a legitimate login
#: waited behind such a turn (the relay's loop lag under the bench's flood, p99: 53 ms
#: so, 32 ms with 16; bench/README.md). The kernel queues the rest meanwhile.
ACCEPT_BURST = 16
#: RFC 4253 §11.1 reason code SSH_DISCONNECT_TOO_MANY_CONNECTIONS.
DISCONNECT_TOO_MANY_CONNECTIONS = 12
_MSG_DISCONNECT = 1


def disconnect_bytes(server_version: str, reason: int, message: str) -> bytes:
    """An SSH server's version line, then an unencrypted ``SSH_MSG_DISCONNECT`` packet.

    :param server_version: the version line without CR LF (``SSH-2.0-…``).
    """
    text = message.encode()
    payload = (
        bytes([_MSG_DISCONNECT])
        + struct.pack(">I", reason)
        + struct.pack(">I", len(text))
        + text
        + struct.pack(">I", 0)  # language tag: empty
    )
    # Packet length + padding length + payload + padding is a multiple of 8 (the
    # "none" cipher's block), with at least 4 bytes of padding (RFC 4253 §6).
    padding = 8 - (5 + len(payload)) % 8
    if padding < 4:
        padding += 8
    packet = struct.pack(">IB", 1 + len(payload) + padding, padding) + payload + bytes(padding)
    return f"{server_version}\r\n".encode() + packet


async def listen(
    factory: Callable[[], asyncio.BaseProtocol], host: str, port: int
) -> asyncio.Server:
    """Listen on ``host:port`` with a deep kernel backlog but short accept turns.

    asyncio uses one number for both (see :data:`ACCEPT_BURST`); the listening sockets
    are given their deeper backlog again after asyncio set it.
    """
    server = await asyncio.get_running_loop().create_server(
        factory, host, port, backlog=ACCEPT_BURST
    )
    for listening in server.sockets:
        # listen() again on a listening socket only changes its backlog (a duplicate
        # descriptor, so that the socket asyncio serves is left as it is).
        with socket.fromfd(listening.fileno(), listening.family, listening.type) as same:
            same.listen(LISTEN_BACKLOG)
    return server


class Admitted(Protocol):
    """What a gate slot's SSH connection does when the gate ends it."""

    def gate_closed(self, why: str) -> None: ...


class Slot:
    """One accepted connection's slot in the gate, from accept until it logs in or closes.

    Before SSH runs on it (TLS or WebSocket still in progress) the gate ends it by
    aborting the TCP connection; once :meth:`attach`\\ ed to its SSH connection, by an SSH
    disconnect that says why.
    """

    __slots__ = ("_gate", "_ssh", "_transport", "address")

    def __init__(self, gate: Gate[Slot], transport: asyncio.Transport, address: str) -> None:
        self._gate = gate
        self._transport = transport
        self._ssh: Admitted | None = None
        self.address = address

    def attach(self, ssh: Admitted) -> None:
        """SSH runs on this connection now: the gate ends it through ``ssh``."""
        self._ssh = ssh

    def gate_closed(self, why: str) -> None:
        """The gate ended this connection (login time over, or evicted)."""
        if self._ssh is not None:
            self._ssh.gate_closed(why)
        else:
            self._transport.abort()

    def active(self) -> None:
        """The client sent something (see :meth:`~tether.relay.gate.Gate.active`)."""
        self._gate.active(self)

    def progressed(self) -> None:
        self._gate.progressed(self)

    def authenticated(self) -> None:
        self._gate.authenticated(self)

    def lost(self) -> None:
        """The connection closed without logging in (no-op once it left the gate)."""
        self._gate.closed(self, Outcome.NOAUTH)

    def withdraw(self) -> None:
        """The relay closed it for its own reasons (draining): no penalty."""
        self._gate.withdraw(self)


class _Refused(asyncio.Protocol):
    """A refused connection after its refusal was sent: discard, close on EOF or timer."""

    def __init__(self, transport: asyncio.Transport, done: Callable[[], None]) -> None:
        self._transport = transport
        self._done = done
        self._timer = asyncio.get_running_loop().call_later(REFUSAL_LINGER, transport.abort)

    def data_received(self, data: bytes) -> None:
        pass  # the client's version line and key exchange: nothing to answer

    def eof_received(self) -> bool | None:
        return False  # close

    def connection_lost(self, exc: Exception | None) -> None:
        self._timer.cancel()
        self._done()


class Door:
    """Admits or refuses each accepted connection (see the module's docstring).

    :param gate: the relay's gate.
    :param refusals: where refusals are counted, for the per-block summary lines.
    :param dropped: called with the :class:`Drop` of each refusal (metrics).
    :param server_version: the relay's SSH version line, sent before a refusal.
    """

    def __init__(
        self,
        gate: Gate[Slot],
        refusals: RefusalSummary,
        dropped: Callable[[Drop], None],
        server_version: str,
    ) -> None:
        self._gate = gate
        self._refusals = refusals
        self._dropped = dropped
        self._refusal = disconnect_bytes(
            server_version, DISCONNECT_TOO_MANY_CONNECTIONS, REFUSED_MESSAGE
        )
        self._lingering = 0

    def admit(self, transport: asyncio.Transport, address: str) -> Slot | None:
        """The connection's slot, or ``None``: refused (told why, and closed)."""
        slot = Slot(self._gate, transport, address)
        decision = self._gate.admit(slot, address)
        if decision.evict is not None:
            decision.evict.gate_closed("evicted: too slow to log in while the relay is busy")
        if decision.drop is None:
            return slot
        self._refusals.count(decision.block, decision.drop.value)
        self._dropped(decision.drop)
        transport.write(self._refusal)
        if self._lingering >= MAX_LINGERING or not transport.can_write_eof():
            transport.close()
            return None
        transport.write_eof()
        self._lingering += 1
        transport.set_protocol(_Refused(transport, self._unlinger))
        return None

    def _unlinger(self) -> None:
        self._lingering -= 1


__all__ = [
    "REFUSED_MESSAGE",
    "Door",
    "Slot",
    "disconnect_bytes",
]


def gate_limits(config: RelayConfig) -> GateLimits:
    """The pre-auth gate's thresholds from ``relay.toml``."""
    return GateLimits(
        start=min(config.early_drop_start, config.max_unauthenticated),
        rate=config.early_drop_rate / 100.0,
        full=config.max_unauthenticated,
        per_address=config.max_unauthenticated_per_source,
        per_netblock=config.max_unauthenticated_per_netblock,
        ipv4_prefix=config.netblock_ipv4,
        ipv6_prefix=config.netblock_ipv6,
        login_timeout=config.login_timeout,
        busy_login_timeout=min(config.login_timeout_busy, config.login_timeout),
        penalty_stall=config.penalty_stall,
        penalty_noauth=config.penalty_noauth,
        penalty_min=min(config.penalty_min, config.penalty_max),
        penalty_max=config.penalty_max,
        stall_after=config.stall_after,
    )


def describe_limits(limits: GateLimits, config: RelayConfig) -> dict[str, str | int]:
    """The relay's limits as the fields of the ``relay.limits`` line it logs at start."""
    return {
        "max_unauthenticated": limits.full,
        "early_drop": f"{limits.start}:{round(limits.rate * 100)}:{limits.full}",
        "stall_after": f"{limits.stall_after:g}s",
        "per_source": limits.per_address,
        "per_netblock": limits.per_netblock,
        "netblock": f"/{limits.ipv4_prefix},/{limits.ipv6_prefix}",
        "login_timeout": f"{limits.login_timeout:g}s..{limits.busy_login_timeout:g}s",
        "penalties": f"stall:{limits.penalty_stall:g} noauth:{limits.penalty_noauth:g} "
        f"min:{limits.penalty_min:g} max:{limits.penalty_max:g}",
        "channels": f"{config.max_channels_per_connection}/connection,"
        f"{config.max_channels_per_engineer}/engineer",
        "request_timeout": f"{config.request_timeout:g}s",
        "refused_log_interval": f"{config.refused_log_interval:g}s",
    }
