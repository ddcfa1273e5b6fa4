"""The relay: one SSH port for agents' tethers and engineers' jump connections.

:class:`Relay` owns what one relay process shares between its connections: the
listening socket, the registry of live tethers, the limits, the batched writers to the
shared store, and the watch that applies revocations. Each client connection is a
:class:`~tether.relay.connection.RelayConnection`, which hands an agent to
:mod:`tether.relay.tethers` and an engineer to :mod:`tether.relay.engineers`; routing
and admission decisions are pure code in :mod:`tether.relay.routing`. The relay never
listens on a socket per tether.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

from tether import log
from tether.clock import SYSTEM_CLOCK, Clock
from tether.config import RelayConfig
from tether.metrics_http import DATABASE_UNAVAILABLE, MetricsServer
from tether.protocol import RefusalReason
from tether.relay.audit import HEAD_INTERVAL, AuditWriter, HeadChecks
from tether.relay.batching import Batcher
from tether.relay.carriers import AcceptFront, FrontDoor, server_context
from tether.relay.connection import RelayConnection
from tether.relay.door import Door, Slot, describe_limits, gate_limits, listen
from tether.relay.engineers import Cuttable
from tether.relay.fleet import Membership
from tether.relay.forwarding import ChannelStats
from tether.relay.gate import Gate, RefusalSummary
from tether.relay.limits import RateLimiter
from tether.relay.metrics import RelayMetrics, watch_loop_lag
from tether.relay.peering import PeerLinks
from tether.relay.proxy_protocol import ProxyFront, parse_networks
from tether.relay.revocations import RevocationWatch
from tether.relay.routing import Registry
from tether.relay.tethers import TetherLink, readmit
from tether.sshlib import asyncssh
from tether.store import Store, relay_chain
from tether.store.admission import Admission
from tether.store.changes import ChangeFeed
from tether.store.records import TetherRecord
from tether.tasks import TaskSet
from tether.tlscert import relay_tls_banner
from tether.wire import (
    CHANNEL_MAX_PACKET,
    CHANNEL_WINDOW,
    RELAY_SERVER_VERSION,
    TRANSPORT_CIPHERS,
)

logger = logging.getLogger("tether.relay")

#: Seconds the store has to answer a readiness check before the relay reports not ready.
READINESS_TIMEOUT = 2.0
#: Seconds between two sweeps of connections past their (pressure-dependent) login time.
GATE_SWEEP = 0.25


class Relay:
    """A relay process: ``await relay.start()``, then ``await relay.aclose()``.

    :param config: the relay's settings (listen address, keys, limits).
    :param store: the shared state (issued keys, revocations, tether registry).
    :param clock: the time source for key validity (injectable for tests).
    """

    def __init__(self, config: RelayConfig, store: Store, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.registry: Registry[TetherLink] = Registry()
        #: Engineers' channels open now (their rows are written again after a sweep).
        self.live_channels: set[ChannelStats] = set()
        self.unauthenticated = 0
        self._engineers: dict[str, set[Cuttable]] = {}
        #: Channels open per engineer on this relay (``max_channels_per_engineer``).
        self.engineer_channels: Counter[str] = Counter()
        self.connections: set[RelayConnection] = set()
        #: Keys revoked while this relay ran (closes the revoke-during-register race).
        self.revoked_keys: set[str] = set()
        #: Admission before login (caps, early drop, eviction, penalties); its counters
        #: (``drops`` by reason, ``evictions``, ``expirations``) are for metrics.
        self.gate: Gate[Slot] = Gate(gate_limits(config), time.monotonic)
        #: Refused connections, written as one summary line per network block per interval.
        self.refusals = RefusalSummary(config.refused_log_interval, time.monotonic)
        self.requests_by_source = RateLimiter(config.requests_per_source_per_hour, 3600.0)
        self.tasks = TaskSet()
        #: This relay's metrics, in a registry of its own (never the global one); the
        #: callables are read at each scrape, when every part named here exists.
        self.metrics = RelayMetrics(
            tethers=lambda: len(self.registry),
            unauthenticated=lambda: len(self.gate),  # from accept: TLS and WebSocket too
            peer_links=lambda: 0 if self.peers is None else len(self.peers),
            audit_backlog=lambda: self.audit.backlog,
        )
        #: Admissions and unregistrations are batched: a relay restart or a network
        #: failure moves thousands of tethers at once (bench/README.md).
        self.admissions: Batcher[Admission, TetherRecord] = Batcher(
            self.metrics.timed_store("admit", store.tethers.admit_many),
            self.tasks,
            "relay.admissions",
        )
        self.departures: Batcher[tuple[str, str], None] = Batcher(
            self.metrics.timed_store("unregister", store.tethers.unregister_many),
            self.tasks,
            "relay.departures",
        )
        self._server: asyncio.Server | None = None
        self._door: FrontDoor | None = None
        #: Set when the relay stops or drains: ``/readyz`` answers 503 from then on.
        self.draining = False
        #: The internal ``/metrics``, ``/healthz``, ``/readyz`` (``[metrics] listen``).
        self.metrics_server: MetricsServer | None = None
        self._host_key = asyncssh.read_private_key(config.host_key)
        self.engineer_ca = asyncssh.read_public_key(config.engineer_ca)
        self.host_key_fingerprint = self._host_key.get_fingerprint("sha256")
        self.host_public_key = self._host_key.convert_to_public()
        #: The auth banner telling agents this relay's TLS certificate (``None``: no TLS).
        self.tls_banner = relay_tls_banner(config.tls_certificate)
        #: Applies the fleet's revocations (relay/revocations.py).
        self.revocations = RevocationWatch(self)
        #: Wake-ups from the store's NOTIFY (PostgreSQL); ``None`` until started, or on SQLite.
        self.changes: ChangeFeed | None = None
        self._closed = asyncio.Event()
        #: The relay's hash-chained audit log (``relay:<relay id>`` in the database).
        self.audit = AuditWriter(store, relay_chain(config.relay_id), clock.now)
        self.audit.observe = self.metrics.store_latency.labels("audit-append").observe
        #: Seconds between two checks of one machine's reported audit chain heads.
        self.head_interval = HEAD_INTERVAL
        self.head_checks = HeadChecks()
        self.membership = Membership(
            config,
            store,
            clock,
            tether_count=lambda: len(self.registry),
            rejoined=self._rejoined,
            taken_over=self._taken_over,
        )
        #: Set when this relay must stop on its own (another process took its id).
        self.fatal = asyncio.Event()
        self.fatal_reason = ""
        #: Links to the fleet's other relays (None: no ``peer_key``, a relay on its own).
        self.peers = PeerLinks.configured(self)
        self._peer_server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The TCP port the relay listens on (useful when configured with port 0)."""
        if self._server is None:
            raise RuntimeError("relay not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Claim the relay id, clear its stale registry rows, listen, heartbeat and watch.

        Raises :class:`~tether.relay.fleet.RelayIdInUse` (nothing changed) if a live
        relay holds this relay's id.
        """
        await self.membership.join()
        await self.store.tethers.clear_relay(self.config.relay_id)
        await self.store.channels.clear_relay(self.config.relay_id)
        await self.revocations.start()
        self.changes = self.store.change_feed()
        if self.changes is not None:
            self.changes.start()
        self.audit.start()
        host, port = self.config.listen
        options = await asyncssh.SSHServerConnectionOptions.construct(
            server_factory=lambda: RelayConnection(self),
            server_host_keys=[self._host_key],
            server_version=RELAY_SERVER_VERSION,
            # The gate times logins out (sooner under pressure, and with a penalty);
            # asyncssh's own timer is only a backstop, a little later.
            login_timeout=self.config.login_timeout + 1.0,
            keepalive_interval=self.config.keepalive_interval,
            keepalive_count_max=self.config.keepalive_count_max,
            agent_forwarding=False,
            x11_forwarding=False,
            allow_scp=False,
            encoding=None,  # the control channel speaks bytes
            tcp_keepalive=True,
            encryption_algs=list(TRANSPORT_CIPHERS),
            # No GSSAPI: without this asyncssh looks up this host's FQDN (blocking DNS,
            # in a thread) for every connection that logs in.
            gss_host=None,
            window=CHANNEL_WINDOW,
            max_pktsize=CHANNEL_MAX_PACKET,
        )
        tls = (
            None
            if self.config.tls_certificate is None or self.config.tls_key is None
            else server_context(self.config.tls_certificate, self.config.tls_key)
        )
        # Our own accept path (relay/carriers.py), whatever the carrier: the gate decides
        # at accept (relay/door.py), before TLS or SSH costs anything; behind
        # HAProxy after its PROXY v2 header; with TLS one port for SSH, SSH in TLS, SSH
        # over WebSocket.
        gate_door = Door(
            self.gate,
            self.refusals,
            lambda drop: self.metrics.unauthenticated_dropped.labels(drop.value).inc(),
            f"SSH-2.0-{RELAY_SERVER_VERSION}",
        )

        def refuse(address: str, why: str) -> None:
            self.refusals.count(self.gate.block_of(address), why)

        door = self._door = FrontDoor(
            options,
            tls,
            admit=gate_door.admit,
            draining=lambda: self.draining,
            refuse=refuse,
            timeout=self.config.login_timeout,
        )
        if self.config.proxy_protocol:
            trusted = parse_networks(self.config.trusted_proxies)
            self._server = await listen(
                lambda: ProxyFront(trusted, door.hand_off, self.config.login_timeout), host, port
            )
        else:
            self._server = await listen(lambda: AcceptFront(door.hand_off), host, port)
        address = f"{host}:{self.port}"
        if self.config.peer_listen is not None:
            # Other relays' links: plain SSH (no PROXY header), peer logins only.
            peer_options = await asyncssh.SSHServerConnectionOptions.construct(
                options=options, server_factory=lambda: RelayConnection(self, peers_only=True)
            )
            peer_door = FrontDoor(
                peer_options,
                None,
                admit=gate_door.admit,
                draining=lambda: False,  # a draining relay still carries its peers' channels
                refuse=refuse,
                timeout=self.config.login_timeout,
            )
            self._peer_server = await listen(
                lambda: AcceptFront(peer_door.hand_off), *self.config.peer_listen
            )
            peer_port = self._peer_server.sockets[0].getsockname()[1]
            address = f"{self.config.peer_listen[0]}:{peer_port}"
        if self.config.metrics_listen is not None:
            self.metrics_server = MetricsServer(
                *self.config.metrics_listen,
                self.metrics.registry,
                self.readiness,
                part="relay",
                refresh=self._before_scrape,
            )
            await self.metrics_server.start()
        self.membership.address = address  # where the other relays' links reach this relay
        await self.membership.beat()  # the fleet learns the real port now, not in 5 s
        self.tasks.spawn(self.revocations.serve(), "relay.watch")
        self.tasks.spawn(self._sweep_gate(), "relay.gate")
        self.tasks.spawn(watch_loop_lag(self.metrics), "relay.loop_lag")
        self.tasks.spawn(self.membership.serve(), "relay.membership")
        log.event(
            logger,
            "relay.listen",
            relay=self.config.relay_id,
            address=f"{host}:{self.port}",
            host_key=self.host_key_fingerprint,
            proxy_protocol=self.config.proxy_protocol,
            tls=tls is not None,
            metrics="" if self.metrics_server is None else self.metrics_server.address,
        )
        log.event_fields(logger, "relay.limits", describe_limits(self.gate.limits, self.config))

    async def _sweep_gate(self) -> None:
        """Close connections past their login time; write the refusal summaries."""
        while True:
            await asyncio.sleep(GATE_SWEEP)
            for slot in self.gate.expired():
                slot.gate_closed("took too long to log in")
            self.summarise_refusals()

    def summarise_refusals(self) -> None:
        """One line per network block with refusals in the last interval, if one passed."""
        for block, counts in self.refusals.due():
            log.event(
                logger,
                "relay.refused",
                level=logging.WARNING,
                block=block,
                count=sum(counts.values()),
                interval=f"{self.refusals.interval:g}s",
                **{reason: n for reason, n in sorted(counts.items())},
            )

    async def readiness(self) -> str | None:
        """``None`` while this relay takes new connections, else why not (``/readyz``)."""
        if self.draining or self._server is None:
            return "stopping"
        try:
            await asyncio.wait_for(self.store.revocations.head(), READINESS_TIMEOUT)
        except Exception:  # whatever the driver raises, the answer is the same
            return DATABASE_UNAVAILABLE
        return None

    async def _before_scrape(self) -> None:
        self.metrics.readiness(await self.readiness())

    def drain(self) -> None:
        """Report not ready, so the load balancer sends no new connections here.

        Tethers and engineers already connected stay; :meth:`aclose` starts with this.
        """
        if not self.draining:
            self.draining = True
            log.event(logger, "relay.draining", relay=self.config.relay_id)

    async def serve(self) -> None:
        """Start, then run until :meth:`aclose` is called."""
        await self.start()
        await self._closed.wait()

    async def aclose(self) -> None:
        """Stop listening and drop every tether and engineer connection."""
        self.drain()
        if self._server is not None:
            self._server.close()
        # Spread the agents' return so the next relay is not met by all of them at once.
        spread = len(self.registry) / self.config.reconnect_rate
        for entry in self.registry:
            entry.link.drop(
                RefusalReason.SHUTDOWN,
                "the relay is shutting down; reconnect later",
                retry_within=spread,
            )
        for conn in list(self.connections):
            conn.close()
        if self._peer_server is not None:
            self._peer_server.close()
        if self.peers is not None:
            await self.peers.aclose()
        await self.head_checks.aclose()
        await self.tasks.aclose()
        if self.changes is not None:
            await self.changes.aclose()
        if self._server is not None:
            await self._server.wait_closed()
        await self.audit.aclose()
        if self.metrics_server is not None:
            await self.metrics_server.aclose()
        await self.membership.leave()
        self._closed.set()

    # --- fleet membership ----------------------------------------------------------

    def _rejoined(self) -> None:
        """The fleet swept our rows while we were alive: write them again."""
        self.tasks.spawn(readmit(self), "relay.readmit")

    def _taken_over(self, reason: str) -> None:
        """Another live process holds our id: hand the agents over and stop."""
        self.fatal_reason = reason
        spread = len(self.registry) / self.config.reconnect_rate
        for entry in self.registry:
            entry.link.drop(
                RefusalReason.SHUTDOWN,
                "another relay took this relay's id; reconnect to register again",
                retry_within=spread,
            )
        self.fatal.set()

    # --- engineers ---------------------------------------------------------------

    def engineer_connections(self, name: str) -> list[Cuttable]:
        """The live connections of engineer ``name`` on this relay (to cut them)."""
        return list(self._engineers.get(name, ()))

    def engineer_connected(self, name: str, conn: Cuttable) -> None:
        self._engineers.setdefault(name, set()).add(conn)

    def engineer_gone(self, name: str, conn: Cuttable) -> None:
        conns = self._engineers.get(name)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self._engineers[name]
