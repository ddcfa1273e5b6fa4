"""Relay-to-relay links: an engineer on one relay reaches a machine tethered to another.

Relays of a fleet share one store. When an engineer's relay (the *front* relay) holds no
tether for the serial asked for, it reads the shared registry row
(:func:`~tether.relay.routing.route_to_peer` decides) and carries the channel to the
relay holding the machine (the *home* relay) over an SSH link it opened as
:data:`~tether.wire.PEER_USERNAME` with the fleet's peer key (``peer_key`` in
``relay.toml``). There is one link per peer address, shared by every channel to that
relay and opened again on first use after it dropped (:class:`PeerLinks`).

Each carried channel is a ``direct-tcpip`` to ``SERIAL:PORT`` whose originator field
holds the engineer's identity as a small JSON document (:class:`PeerOrigin`), validated
strictly. The home relay believes it only on a link that logged in with the peer key
(:class:`PeerSession`), and then treats the channel as its own engineer's: the same
route and port allowlist, the same refusal messages, the engineer's revocation and
certificate end, and an audit entry naming the engineer and the front relay (``via``).
A carried channel is never carried further: a home relay routes to its own tethers only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tether import log
from tether.certs import check_engineer_name
from tether.errors import BadInput, ConfigError
from tether.relay.forwarding import ChannelStats, CountingForwarder, open_to_machine, pipe_channel
from tether.relay.routing import PeerRoute, RouteRefused
from tether.sshlib import asyncssh
from tether.tuning import coalesce_writes, quick_acks, skip_ignore_packets
from tether.wire import (
    CHANNEL_MAX_PACKET,
    CHANNEL_WINDOW,
    PEER_ORIGIN_VERSION,
    PEER_USERNAME,
    TRANSPORT_CIPHERS,
)

if TYPE_CHECKING:
    from tether.relay.connection import RelayConnection
    from tether.relay.server import Relay

logger = logging.getLogger("tether.relay")

#: Longest originator field a peer may send (the JSON of a :class:`PeerOrigin`).
_ORIGIN_MAX = 1024
#: Key ids and relay ids: printable ASCII without spaces (they go into logs and audit).
_TOKEN = re.compile(r"[\x21-\x7e]{1,128}")
#: How long opening a link to a peer relay may take before the engineer is told.
CONNECT_TIMEOUT = 10.0


class BadPeerOrigin(BadInput):
    """A peer relay sent an engineer identity this relay does not accept."""


@dataclass(frozen=True)
class PeerOrigin:
    """Who a carried channel is for, as the front relay authenticated them.

    :param engineer: the engineer's login name (a principal of their certificate).
    :param key_id: their certificate's key id.
    :param via: the front relay's id (audited by the home relay).
    :param expires: when their certificate ends (Unix seconds); the channel ends then.
    """

    engineer: str
    key_id: str
    via: str
    expires: int

    def encode(self) -> str:
        """The originator field of the carried ``direct-tcpip`` channel."""
        return json.dumps(
            {
                "v": PEER_ORIGIN_VERSION,
                "engineer": self.engineer,
                "key_id": self.key_id,
                "via": self.via,
                "expires": self.expires,
            },
            separators=(",", ":"),
            sort_keys=True,
        )

    @classmethod
    def decode(cls, text: str) -> PeerOrigin:
        """Parse and check an originator field; anything unexpected raises :class:`BadPeerOrigin`."""
        if len(text) > _ORIGIN_MAX:
            raise BadPeerOrigin("engineer identity too long")
        try:
            data: Any = json.loads(text)
        except ValueError:
            raise BadPeerOrigin("engineer identity is not JSON") from None
        if not isinstance(data, dict) or set(data) != {"v", "engineer", "key_id", "via", "expires"}:
            raise BadPeerOrigin("engineer identity has unexpected fields")
        if data["v"] != PEER_ORIGIN_VERSION or isinstance(data["v"], bool):
            raise BadPeerOrigin(f"engineer identity version {data['v']!r} is not supported")
        engineer, key_id, via, expires = (data[k] for k in ("engineer", "key_id", "via", "expires"))
        if not isinstance(engineer, str):
            raise BadPeerOrigin("engineer name is not a string")
        try:
            check_engineer_name(engineer)
        except BadInput as exc:
            raise BadPeerOrigin(str(exc)) from None
        for name, value in (("key id", key_id), ("relay id", via)):
            if not isinstance(value, str) or not _TOKEN.fullmatch(value):
                raise BadPeerOrigin(f"{name} malformed")
        if isinstance(expires, bool) or not isinstance(expires, int) or not 0 < expires < 2**63:
            raise BadPeerOrigin("certificate end malformed")
        return cls(engineer, key_id, via, expires)


def _refuse(code: int, message: str) -> asyncssh.ChannelOpenError:
    return asyncssh.ChannelOpenError(code, message)


class PeerLinks:
    """This relay's links to its peers (one per peer address) and its peer credential.

    Built by :meth:`configured` from ``peer_key``; a relay without one has no
    ``PeerLinks``: it accepts no peer login and carries nothing to other relays.
    """

    def __init__(self, relay: Relay, key: asyncssh.SSHKey) -> None:
        self._relay = relay
        self._key = key
        self._public = key.convert_to_public()
        self._links: dict[tuple[str, int], asyncssh.SSHClientConnection] = {}
        self._locks: dict[tuple[str, int], asyncio.Lock] = {}
        #: Links opened since start (one per peer unless one dropped).
        self.connects = 0

    @classmethod
    def configured(cls, relay: Relay) -> PeerLinks | None:
        """The relay's peer links, or None when its ``relay.toml`` names no ``peer_key``.

        :raises ConfigError: the key file is unreadable or not an ed25519 private key.
        """
        path = relay.config.peer_key
        if path is None:
            return None
        try:
            key = asyncssh.read_private_key(path)
        except (OSError, asyncssh.KeyImportError, ValueError) as exc:
            # The reason names the file, never its content.
            raise ConfigError(
                f"{relay.config.path}: peer_key: cannot read the private key {path}: "
                f"{type(exc).__name__}"
            ) from None
        if key.algorithm != b"ssh-ed25519":
            raise ConfigError(
                f"{relay.config.path}: peer_key: {path} must be an ed25519 key "
                "(ssh-keygen -t ed25519 -N '' -f peer_key), shared by the fleet's relays"
            )
        return cls(relay, key)

    def accepts(self, key: asyncssh.SSHKey) -> bool:
        """Whether ``key`` is the fleet's peer key (the only key a peer may log in with)."""
        return bool(key.public_data == self._public.public_data)

    def __len__(self) -> int:
        """Links up right now."""
        return sum(1 for conn in self._links.values() if not conn.is_closed())

    async def aclose(self) -> None:
        """Close every link (channels carried over them end with it)."""
        links, self._links = list(self._links.values()), {}
        for conn in links:
            conn.close()
        for conn in links:
            await conn.wait_closed()

    async def open(self, route: PeerRoute, origin: PeerOrigin) -> CountingForwarder:
        """Carry ``origin``'s channel to ``route``; return the engineer-side end of the pipe.

        A link found dead is replaced once. The home relay's refusal reaches the
        engineer word for word.

        :raises asyncssh.ChannelOpenError: refused by the home relay, or it is unreachable.
        """
        stats = ChannelStats(origin.engineer, route.serial, route.port)  # logged, not a row
        for attempt in (1, 2):
            conn = await self._link(route)
            try:
                down = await pipe_channel(conn, route.serial, route.port, origin.encode(), stats)
            except asyncssh.ChannelOpenError:
                if conn.is_closed() and attempt == 1:
                    continue  # the link dropped under us: once more on a new one
                raise
            self._relay.metrics.cross_relay_channels.labels("out").inc()
            log.event(
                logger,
                "channel.relay",
                engineer=origin.engineer,
                serial=route.serial,
                port=route.port,
                relay=route.relay_id,
            )
            self._relay.audit.write(
                "channel.relayed",
                engineer=origin.engineer,
                serial=route.serial,
                port=route.port,
                relay=route.relay_id,
            )
            return down
        raise _refuse(asyncssh.OPEN_CONNECT_FAILED, _unreachable(route))  # pragma: no cover

    async def _link(self, route: PeerRoute) -> asyncssh.SSHClientConnection:
        """The link to ``route.address``: the open one, or a new one (one connect at a time)."""
        address = route.address
        conn = self._links.get(address)
        if conn is not None and not conn.is_closed():
            return conn
        async with self._locks.setdefault(address, asyncio.Lock()):
            conn = self._links.get(address)
            if conn is not None and not conn.is_closed():
                return conn
            conn = await self._connect(route)
            self._links[address] = conn
            self.connects += 1
            self._relay.tasks.spawn(self._watch(address, conn), f"relay.peer.{route.relay_id}")
            return conn

    async def _connect(self, route: PeerRoute) -> asyncssh.SSHClientConnection:
        relay = self._relay
        config = relay.config
        host, port = route.address
        try:
            conn = await asyncio.wait_for(
                asyncssh.connect(
                    host,
                    port,
                    username=PEER_USERNAME,
                    client_keys=[self._key],
                    # The fleet's relays share the host key that tether keys pin.
                    known_hosts=([relay.host_public_key], [], []),
                    config=None,
                    agent_path=None,
                    preferred_auth=["publickey"],
                    gss_host=None,
                    encryption_algs=list(TRANSPORT_CIPHERS),
                    keepalive_interval=config.keepalive_interval,
                    keepalive_count_max=config.keepalive_count_max,
                    tcp_keepalive=True,
                    window=CHANNEL_WINDOW,
                    max_pktsize=CHANNEL_MAX_PACKET,
                ),
                CONNECT_TIMEOUT,
            )
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            log.event(
                logger,
                "peer.unreachable",
                level=logging.WARNING,
                relay=route.relay_id,
                address=f"{host}:{port}",
                error=str(exc)[:200] or type(exc).__name__,
            )
            raise _refuse(asyncssh.OPEN_CONNECT_FAILED, _unreachable(route)) from None
        coalesce_writes(conn)
        quick_acks(conn)
        skip_ignore_packets(conn)
        log.event(logger, "peer.link_up", relay=route.relay_id, address=f"{host}:{port}")
        return conn

    async def _watch(self, address: tuple[str, int], conn: asyncssh.SSHClientConnection) -> None:
        await conn.wait_closed()
        if self._links.get(address) is conn:
            del self._links[address]
        log.event(logger, "peer.link_down", address=f"{address[0]}:{address[1]}")


def _unreachable(route: PeerRoute) -> str:
    return (
        f"machine {route.serial} is tethered to relay {route.relay_id}, which this relay "
        "cannot reach right now; try again shortly"
    )


class CarriedChannel:
    """A channel a peer carried here, as the engineer's revocation and certificate see it.

    Registered under the engineer's name with the relay, like an engineer's own
    connection: :meth:`close` (the vendor disabled the engineer, or their certificate
    ended) ends the channel, also if it comes before the channel is fully open.
    """

    def __init__(self, relay: Relay, origin: PeerOrigin) -> None:
        self._relay = relay
        self.origin = origin
        self.cut = False
        self._down: CountingForwarder | None = None
        self._expiry = asyncio.get_running_loop().call_later(
            max(0.0, origin.expires - time.time()), self.close
        )
        relay.engineer_connected(origin.engineer, self)

    def close(self) -> None:
        self.cut = True
        if self._down is not None:
            self._down.close()

    def attach(self, down: CountingForwarder) -> None:
        """The channel is open: closing from now on closes it."""
        self._down = down

    def gone(self) -> None:
        """The channel ended (or never opened): forget it."""
        self._expiry.cancel()
        self._relay.engineer_gone(self.origin.engineer, self)


class PeerSession:
    """A peer relay logged in here: it may only carry engineers' channels to our tethers."""

    def __init__(self, connection: RelayConnection) -> None:
        self.connection = connection
        self.relay = connection.relay

    def authenticated(self) -> None:
        log.event(logger, "peer.login", peer=self.connection.peer)

    def lost(self) -> None:
        log.event(logger, "peer.logout", peer=self.connection.peer)

    def open_channel(
        self, dest_host: str, dest_port: int, orig_host: str
    ) -> Awaitable[asyncssh.SSHTCPSession[bytes]]:
        """Route a carried channel as this relay's own engineer's, or refuse with the reason."""
        try:
            origin = PeerOrigin.decode(orig_host)
        except BadPeerOrigin as exc:
            log.event(
                logger,
                "peer.refused",
                level=logging.WARNING,
                peer=self.connection.peer,
                reason=str(exc),
            )
            raise _refuse(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                f"the relay link sent no valid engineer identity: {exc}",
            ) from None
        try:
            entry = self.relay.registry.route(dest_host, dest_port)
        except RouteRefused as refusal:
            self.relay.metrics.channels_refused.labels(refusal.reason).inc()
            log.event(
                logger,
                "channel.refused",
                engineer=origin.engineer,
                via=origin.via,
                host=dest_host[:80],
                port=dest_port,
                reason=str(refusal),
            )
            raise _refuse(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, str(refusal)) from None
        agent = entry.link.conn
        if agent is None:
            raise _refuse(asyncssh.OPEN_CONNECT_FAILED, "the tether just closed")
        return self._open(origin, agent, entry.serial, dest_port)

    async def _open(
        self, origin: PeerOrigin, agent: asyncssh.SSHServerConnection, serial: str, port: int
    ) -> asyncssh.SSHTCPSession[bytes]:
        relay = self.relay
        # Registered before the check: a revocation processed meanwhile still cuts it.
        carried = CarriedChannel(relay, origin)
        try:
            engineer = await relay.store.engineers.get(origin.engineer)
            ended = origin.expires <= time.time()
            if engineer is None or not engineer.active or carried.cut or ended:
                relay.metrics.channels_refused.labels("engineer-disabled").inc()
                log.event(logger, "channel.refused", engineer=origin.engineer, via=origin.via)
                raise _refuse(
                    asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                    f"engineer {origin.engineer} may not connect: the vendor disabled them "
                    "or their certificate ended",
                )
            down = await open_to_machine(
                relay,
                agent,
                engineer=origin.engineer,
                serial=serial,
                port=port,
                via=origin.via,
                on_close=carried.gone,
            )
        except BaseException:
            carried.gone()
            raise
        if carried.cut:  # disabled while the machine opened the port
            down.close()
            raise _refuse(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                f"engineer {origin.engineer} may not connect: the vendor disabled them",
            )
        carried.attach(down)
        return down  # type: ignore[return-value]
