"""Carrying an engineer's channel to a port of a tethered machine, and counting it.

The relay never opens a socket for a tether: an agent's ``tcpip-forward`` is accepted
with a :class:`NullListener`, and an engineer's ``direct-tcpip`` channel is joined to a
``forwarded-tcpip`` channel the relay opens on the agent's connection
(:func:`open_to_machine`). The two channels are piped by asyncssh's own
:class:`~asyncssh.SSHForwarder`, counting bytes each way for the channel's audit entry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, cast

from tether import log
from tether.audit import FieldValue
from tether.sshlib import asyncssh
from tether.wire import CHANNEL_MAX_PACKET, CHANNEL_WINDOW, FORWARD_BIND_HOST

if TYPE_CHECKING:
    from tether.relay.server import Relay

logger = logging.getLogger("tether.relay")


class NullListener(asyncssh.SSHListener):
    """Accepts an agent's tcpip-forward without opening any socket."""

    def __init__(self, port: int) -> None:
        self._port = port

    def get_port(self) -> int:
        return self._port

    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass


@dataclass(eq=False)  # one per channel, kept in a set: identity is equality
class ChannelStats:
    """One engineer channel to one machine port: who, where, bytes each way, how long."""

    engineer: str
    serial: str
    port: int
    #: The relay the engineer is logged in to, when another relay carried the channel here.
    via: str | None = None
    #: Called once when the channel ends (a carried channel stops being cuttable).
    on_close: Callable[[], None] | None = None
    started: float = field(default_factory=time.monotonic)
    to_machine: int = 0
    to_engineer: int = 0
    logged: bool = False
    #: Registers the channel in the shared store (for "engineers connected" views).
    row: asyncio.Task[int] | None = None
    relay: Relay | None = None
    #: When the channel opened (its row says so, also when it is written again).
    opened_at: datetime | None = None

    def opened(self, relay: Relay) -> None:
        """Register the channel's row (again, after the fleet swept this relay's rows)."""
        self.relay = relay
        relay.live_channels.add(self)
        if self.opened_at is None:
            self.opened_at = relay.clock.now()
        self.row = relay.tasks.spawn(
            relay.store.channels.open(
                relay_id=relay.config.relay_id,
                serial=self.serial,
                engineer=self.engineer,
                port=self.port,
                now=self.opened_at,
            ),
            f"relay.channel.{self.serial}",
        )

    async def _forget(self, relay: Relay, row: asyncio.Task[int]) -> None:
        await relay.store.channels.close(await row)

    def close(self) -> None:
        if self.logged:
            return
        self.logged = True
        details: dict[str, FieldValue] = {
            "engineer": self.engineer,
            "serial": self.serial,
            "port": self.port,
            "bytes_to_machine": self.to_machine,
            "bytes_to_engineer": self.to_engineer,
            "duration": round(time.monotonic() - self.started, 3),
        }
        if self.via is not None:
            details["via"] = self.via
        if self.on_close is not None:
            self.on_close()
        if self.relay is not None:
            self.relay.live_channels.discard(self)
            bytes_ = self.relay.metrics.channel_bytes
            bytes_.labels("to_machine").inc(self.to_machine)
            bytes_.labels("to_engineer").inc(self.to_engineer)
        if self.row is not None and self.relay is not None:
            self.relay.tasks.spawn(
                self._forget(self.relay, self.row), f"relay.channel_close.{self.serial}"
            )
            self.relay.audit.record("channel.closed", details, log_as="channel.close")
        else:
            log.event_fields(logger, "channel.close", details)


class CountingForwarder(asyncssh.SSHForwarder):
    """Pipes one channel to its peer, counting bytes for the channel's log line."""

    def __init__(
        self, stats: ChannelStats, to_machine: bool, peer: asyncssh.SSHForwarder | None = None
    ) -> None:
        super().__init__(peer)
        self._stats = stats
        self._to_machine = to_machine

    def data_received(self, data: bytes, datatype: int | None = None) -> None:
        if self._to_machine:
            self._stats.to_machine += len(data)
        else:
            self._stats.to_engineer += len(data)
        super().data_received(data, datatype)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # The machine side may have spoken (sshd's banner) before this side existed;
        # SSHForwarder buffers that but never replays it for tunnelled channels.
        peer = self._peer
        if isinstance(peer, CountingForwarder):
            peer.replay_buffered()

    def replay_buffered(self) -> None:
        if self._peer is None:
            return
        if self._inpbuf:
            data, self._inpbuf = self._inpbuf, b""
            self._peer.write(data)
        if self.was_eof_received():
            self._peer.write_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._stats.close()

    def when_closed(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once when the channel ends (at once if it already has)."""
        stats = self._stats
        if stats.logged:
            callback()
            return
        previous = stats.on_close

        def both() -> None:
            if previous is not None:
                previous()
            callback()

        stats.on_close = both


async def pipe_channel(
    conn: asyncssh.SSHServerConnection | asyncssh.SSHClientConnection,
    dest_host: str,
    dest_port: int,
    orig_host: str,
    stats: ChannelStats,
) -> CountingForwarder:
    """Open a channel on ``conn`` (``forwarded-tcpip`` to an agent, ``direct-tcpip`` to a
    peer relay) and return the engineer-side end of a counting pipe to it.

    :raises asyncssh.ChannelOpenError: as the other end refused the channel.
    """
    # SSHForwarder is asyncssh's own channel-to-channel pipe; it speaks the
    # SSHTCPSession protocol without being declared one, hence the casts.
    _, upstream = await conn.create_connection(
        lambda: cast(asyncssh.SSHTCPSession[bytes], CountingForwarder(stats, to_machine=False)),
        dest_host,
        dest_port,
        orig_host,
        0,
        window=CHANNEL_WINDOW,
        max_pktsize=CHANNEL_MAX_PACKET,
    )
    return CountingForwarder(stats, to_machine=True, peer=cast(asyncssh.SSHForwarder, upstream))


async def open_to_machine(
    relay: Relay,
    agent: asyncssh.SSHServerConnection,
    *,
    engineer: str,
    serial: str,
    port: int,
    via: str | None = None,
    on_close: Callable[[], None] | None = None,
) -> CountingForwarder:
    """Open ``port`` on the machine behind ``agent`` for ``engineer``; return the
    engineer-side end of the pipe (audited as ``channel.opened`` / ``channel.closed``,
    with ``via``: the relay that carried the channel here, if another one did).

    :raises asyncssh.ChannelOpenError: the machine could not open the port; the reason
        names the machine and the port for the engineer's ``ssh``.
    """
    stats = ChannelStats(engineer, serial, port, via=via, on_close=on_close)
    try:
        down = await pipe_channel(agent, FORWARD_BIND_HOST, port, engineer, stats)
    except asyncssh.ChannelOpenError as exc:
        log.event(logger, "channel.failed", engineer=engineer, serial=serial, port=port)
        relay.metrics.channels_refused.labels("machine-refused").inc()
        raise asyncssh.ChannelOpenError(
            asyncssh.OPEN_CONNECT_FAILED,
            f"machine {serial} could not open port {port}: {exc.reason}",
        ) from None
    log.event(logger, "channel.open", engineer=engineer, serial=serial, port=port, via=via)
    relay.metrics.channels_opened.inc()
    if via is not None:
        relay.metrics.cross_relay_channels.labels("in").inc()
    if via is None:
        relay.audit.write("channel.opened", engineer=engineer, serial=serial, port=port)
    else:
        relay.audit.write("channel.opened", engineer=engineer, serial=serial, port=port, via=via)
    stats.opened(relay)
    return down
