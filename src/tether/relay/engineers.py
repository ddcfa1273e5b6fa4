"""The engineers' side of the relay: a certificate holder asks for ``SERIAL:PORT``.

An engineer logs in under their own name with an OpenSSH certificate from the vendor's
engineer CA, and may then only open ``direct-tcpip`` channels, each to a port a
tethered machine offered (:meth:`~tether.relay.routing.Registry.route` decides). A
machine another relay of the fleet holds is reached through that relay
(:mod:`tether.relay.peering`), which applies the same rules. The connection ends when
the certificate does, or at once when the vendor disables the engineer
(:meth:`tether.relay.revocations.RevocationWatch.check`); channels carried to other relays
end with it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Protocol, cast

from tether import log
from tether.relay.forwarding import CountingForwarder, open_to_machine
from tether.relay.peering import PeerOrigin
from tether.relay.routing import NotTetheredHere, RouteRefused, route_to_peer
from tether.sshlib import asyncssh
from tether.store.db import StoreError

if TYPE_CHECKING:
    from tether.relay.connection import RelayConnection

logger = logging.getLogger("tether.relay")


class Cuttable(Protocol):
    """What the relay closes when the vendor disables an engineer: a connection of theirs,
    or a channel another relay carried here for them."""

    def close(self) -> None: ...


class EngineerLink:
    """The engineer's side of one relay connection: their name and certificate's end."""

    def __init__(self, connection: RelayConnection, name: str) -> None:
        self.connection = connection
        self.relay = connection.relay
        self.name = name
        self._cert_expiry: asyncio.TimerHandle | None = None
        self._valid_before: float | None = None
        #: Channels this connection holds open, or is opening.
        self.channels = 0
        #: ``time.monotonic()`` at login (None: not logged in), for the session metrics.
        self._since: float | None = None

    def close(self) -> None:
        self.connection.close()

    def authenticated(self, certificate_valid_before: float | None) -> None:
        """Logged in: watch for revocation, and end the connection with the certificate."""
        self.relay.engineer_connected(self.name, self)
        self._since = time.monotonic()
        self.relay.metrics.engineer_sessions.inc()
        conn = self.connection
        kex = None if conn.kex_done is None else round((conn.kex_done - conn.accepted) * 1000)
        log.event(
            logger,
            "engineer.login",
            engineer=self.name,
            peer=conn.peer,
            # Milliseconds from accept to the end of the key exchange, and to this login.
            kex_ms=kex,
            login_ms=round((self._since - conn.accepted) * 1000),
        )
        if certificate_valid_before is None:
            self.close()  # engineers only ever authenticate with a certificate
            return
        self._valid_before = certificate_valid_before
        self._cert_expiry = asyncio.get_running_loop().call_later(
            max(0.0, certificate_valid_before - time.time()), self._certificate_expired
        )
        # A revocation processed between begin_auth and now found nothing to cut.
        self.relay.tasks.spawn(self._recheck(), f"relay.recheck.{self.name}")

    def lost(self) -> None:
        if self._cert_expiry is not None:
            self._cert_expiry.cancel()
        self.relay.engineer_gone(self.name, self)
        # Whatever asyncssh never reported closed stops counting with the connection.
        while self.channels > 0:
            self._release()
        if self._since is not None:
            metrics = self.relay.metrics
            metrics.engineer_sessions.dec()
            metrics.engineer_session_duration.observe(time.monotonic() - self._since)
            self._since = None

    def _reserve(self, dest_host: str, dest_port: int) -> None:
        """Count one more channel, or refuse it if the connection or engineer is at a cap."""
        config = self.relay.config
        if self.channels >= config.max_channels_per_connection:
            why = (
                f"too many open channels on this connection (at most "
                f"{config.max_channels_per_connection}); close some or open another connection"
            )
        elif self.relay.engineer_channels[self.name] >= config.max_channels_per_engineer:
            why = (
                f"too many open channels for engineer {self.name} on this relay (at most "
                f"{config.max_channels_per_engineer}); close some first"
            )
        else:
            self.channels += 1
            self.relay.engineer_channels[self.name] += 1
            return
        log.event(
            logger,
            "channel.refused",
            engineer=self.name,
            host=dest_host[:80],
            port=dest_port,
            reason="channel-cap",
        )
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_RESOURCE_SHORTAGE, why)

    def _release(self) -> None:
        if self.channels <= 0:
            return
        self.channels -= 1
        counts = self.relay.engineer_channels
        counts[self.name] -= 1
        if counts[self.name] <= 0:
            del counts[self.name]

    async def _counted(
        self, opening: Awaitable[CountingForwarder]
    ) -> asyncssh.SSHTCPSession[bytes]:
        """Await a channel's opening; its slot is released when it fails or ends."""
        try:
            down = await opening
        except BaseException:
            self._release()
            raise
        released = False

        def release() -> None:
            nonlocal released
            if not released:  # once, even if the connection's end released it already
                released = True
                self._release()

        down.when_closed(release)
        return cast(asyncssh.SSHTCPSession[bytes], down)

    def _certificate_expired(self) -> None:
        log.event(logger, "engineer.cert_expired", engineer=self.name, peer=self.connection.peer)
        self.close()

    async def _recheck(self) -> None:
        engineer = await self.relay.store.engineers.get(self.name)
        if engineer is None or not engineer.active:
            log.event(logger, "engineer.cut", engineer=self.name, reason="disabled during login")
            self.close()

    def open_channel(
        self, dest_host: str, dest_port: int
    ) -> Awaitable[asyncssh.SSHTCPSession[bytes]]:
        """Route ``dest_host:dest_port`` to a tethered machine, or refuse with the reason.

        At most ``max_channels_per_connection`` channels per connection and
        ``max_channels_per_engineer`` per engineer are open at once; one more is refused
        with a message saying which cap it met.
        """
        try:
            entry = self.relay.registry.route(dest_host, dest_port)
        except NotTetheredHere as refusal:
            if self.relay.peers is None:
                raise self._refused(refusal, dest_host, dest_port) from None
            self._reserve(dest_host, dest_port)
            return self._counted(self._via_peer(refusal, dest_host, dest_port))
        except RouteRefused as refusal:
            raise self._refused(refusal, dest_host, dest_port) from None
        agent = entry.link.conn
        if agent is None:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "the tether just closed")
        self._reserve(dest_host, dest_port)
        return self._counted(
            open_to_machine(
                self.relay, agent, engineer=self.name, serial=entry.serial, port=dest_port
            )
        )

    def _refused(
        self, refusal: RouteRefused, dest_host: str, dest_port: int
    ) -> asyncssh.ChannelOpenError:
        self.relay.metrics.channels_refused.labels(refusal.reason).inc()
        log.event(
            logger,
            "channel.refused",
            engineer=self.name,
            host=dest_host[:80],
            port=dest_port,
            reason=str(refusal),
        )
        return asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, str(refusal))

    async def _via_peer(
        self, refusal: NotTetheredHere, dest_host: str, dest_port: int
    ) -> CountingForwarder:
        """Carry the channel to the relay of the fleet that holds the machine, if one does."""
        relay = self.relay
        if relay.peers is None or self._valid_before is None:
            raise self._refused(refusal, dest_host, dest_port)
        try:
            # Both at once: one database round trip on the engineer's connect, not two.
            holder, relays = await asyncio.gather(
                relay.store.tethers.get(refusal.serial), relay.store.relays.list()
            )
        except StoreError as exc:
            log.event(logger, "channel.store_error", level=logging.WARNING, error=str(exc))
            relay.metrics.channels_refused.labels("store-unavailable").inc()
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_CONNECT_FAILED,
                "vendor database unavailable: cannot find which relay holds machine "
                f"{refusal.serial}; try again shortly",
            ) from None
        try:
            route = route_to_peer(
                refusal,
                holder,
                relays,
                own_relay_id=relay.config.relay_id,
                port=dest_port,
                now=relay.clock.now(),
                dead_after=relay.config.dead_after,
            )
        except RouteRefused as refused:
            raise self._refused(refused, dest_host, dest_port) from None
        origin = PeerOrigin(
            engineer=self.name,
            key_id=self.connection.certificate_key_id or self.name,
            via=relay.config.relay_id,
            expires=int(self._valid_before),
        )
        try:
            down = await relay.peers.open(route, origin)
        except asyncssh.ChannelOpenError:
            relay.metrics.channels_refused.labels("peer-refused").inc()
            raise
        if self.connection.closing:  # cut (revoked, certificate ended) while it opened
            down.close()
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "connection closing")
        return down
