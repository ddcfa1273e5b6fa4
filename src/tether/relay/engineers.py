"""The engineers' side of the relay: a certificate holder asks for ``SERIAL:PORT``.

An engineer logs in under their own name with an OpenSSH certificate from the vendor's
engineer CA, and may then only open ``direct-tcpip`` channels, each to a port a
tethered machine offered (:meth:`~tether.relay.routing.Registry.route` decides). The
connection ends when the certificate does, or at once when the vendor disables the
engineer (:meth:`tether.relay.server.Relay.check_revocations`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from tether import log
from tether.relay.forwarding import open_to_machine
from tether.relay.routing import RouteRefused
from tether.sshlib import asyncssh

if TYPE_CHECKING:
    from tether.relay.connection import RelayConnection

logger = logging.getLogger("tether.relay")


class EngineerLink:
    """The engineer's side of one relay connection: their name and certificate's end."""

    def __init__(self, connection: RelayConnection, name: str) -> None:
        self.connection = connection
        self.relay = connection.relay
        self.name = name
        self._cert_expiry: asyncio.TimerHandle | None = None

    def close(self) -> None:
        self.connection.close()

    def authenticated(self, certificate_valid_before: float | None) -> None:
        """Logged in: watch for revocation, and end the connection with the certificate."""
        self.relay.engineer_connected(self.name, self)
        log.event(logger, "engineer.login", engineer=self.name, peer=self.connection.peer)
        if certificate_valid_before is None:
            self.close()  # engineers only ever authenticate with a certificate
            return
        self._cert_expiry = asyncio.get_running_loop().call_later(
            max(0.0, certificate_valid_before - time.time()), self._certificate_expired
        )
        # A revocation processed between begin_auth and now found nothing to cut.
        self.relay.tasks.spawn(self._recheck(), f"relay.recheck.{self.name}")

    def lost(self) -> None:
        if self._cert_expiry is not None:
            self._cert_expiry.cancel()
        self.relay.engineer_gone(self.name, self)

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
        """Route ``dest_host:dest_port`` to a tethered machine, or refuse with the reason."""
        try:
            entry = self.relay.registry.route(dest_host, dest_port)
        except RouteRefused as refusal:
            log.event(
                logger,
                "channel.refused",
                engineer=self.name,
                host=dest_host[:80],
                port=dest_port,
                reason=str(refusal),
            )
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, str(refusal)
            ) from None
        agent = entry.link.conn
        if agent is None:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "the tether just closed")
        return open_to_machine(
            self.relay, agent, engineer=self.name, serial=entry.serial, port=dest_port
        )
