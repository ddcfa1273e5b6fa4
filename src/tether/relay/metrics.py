"""The relay's Prometheus metrics, in a registry of its own.

Each :class:`~tether.relay.server.Relay` builds one :class:`RelayMetrics` with a fresh
:class:`~prometheus_client.CollectorRegistry` (several relays run in one test process,
and a bench runs a fleet in one), exposed on its internal ``/metrics``
(:mod:`tether.metrics_http`). Names and labels follow Prometheus' conventions: base
units (seconds, bytes), ``_total`` for counters, and bounded label values only — a
refusal reason, a direction, never a serial, an engineer or an address.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tether.metrics_http import DATABASE_UNAVAILABLE
from tether.protocol import RefusalReason
from tether.relay.gate import Drop

ItemsT = TypeVar("ItemsT")
ResultT = TypeVar("ResultT")

#: Admission results: ``admitted`` or one of these refusal reasons.
ADMITTED = "admitted"
#: The agent logged in but presented no tether key in time.
REGISTER_TIMEOUT = "register-timeout"

#: The relay's writes to the shared store (the ``operation`` label of store latency):
#: admission batches, unregistration batches, audit chain appends.
STORE_OPERATIONS = ("admit", "unregister", "audit-append")

#: Engineer channel refusals (the ``reason`` label of refused channels).
CHANNEL_REASONS = (
    "not-a-serial",
    "not-tethered",
    "port-closed",
    "machine-refused",
    "engineer-disabled",
    "peer-refused",
    "store-unavailable",
)


# Revocation to cut: the ≤ 1 s invariant needs resolution around 1 s.
_REVOKE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)
# TCP accept to admission: key exchange, login and one store transaction; seconds when
# the store is slow or a reconnect storm queues admissions.
_HANDSHAKE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# One transaction on the shared store: milliseconds, seconds when it struggles.
_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_STORE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Engineer sessions last from seconds to a working day.
_SESSION_BUCKETS = (1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0)


class RelayMetrics:
    """Every metric one relay exports; the relay's parts update them.

    :param tethers: counts live tethers (read at each scrape, never kept in step).
    :param unauthenticated: counts connections not yet logged in (read at each scrape).
    :param peer_links: counts links up to the fleet's other relays (read at each scrape).
    :param audit_backlog: counts audit events not yet written (read at each scrape).
    """

    def __init__(
        self,
        *,
        tethers: Callable[[], float],
        unauthenticated: Callable[[], float],
        peer_links: Callable[[], float],
        audit_backlog: Callable[[], float] = lambda: 0,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.tethers_connected = Gauge(
            "tether_relay_tethers_connected",
            "Machines tethered to this relay now.",
            registry=r,
        )
        self.tethers_connected.set_function(tethers)
        self.admissions = Counter(
            "tether_relay_tether_admissions",
            "Tether registrations, by result: admitted, or the refusal reason.",
            ["result"],
            registry=r,
        )
        self.tether_drops = Counter(
            "tether_relay_tether_drops",
            "Tethers the relay ended itself (revoked, expired, replaced, shutdown...).",
            ["reason"],
            registry=r,
        )
        self.channels_opened = Counter(
            "tether_relay_engineer_channels_opened",
            "Engineer channels opened to a machine tethered here (carried from a peer or not).",
            registry=r,
        )
        self.channels_refused = Counter(
            "tether_relay_engineer_channels_refused",
            "Engineer channels refused, by reason.",
            ["reason"],
            registry=r,
        )
        self.channel_bytes = Counter(
            "tether_relay_engineer_channel_bytes",
            "Bytes carried on engineer channels to machines, by direction.",
            ["direction"],
            registry=r,
        )
        self.engineer_sessions = Gauge(
            "tether_relay_engineer_sessions",
            "Engineers logged in to this relay now (one per SSH connection).",
            registry=r,
        )
        self.engineer_session_duration = Histogram(
            "tether_relay_engineer_session_duration_seconds",
            "How long engineers' SSH connections to this relay lasted, from login to close.",
            buckets=_SESSION_BUCKETS,
            registry=r,
        )
        self.revocation_cut = Histogram(
            "tether_relay_revocation_cut_seconds",
            "From a revocation written to the store to this relay closing a live "
            "tether or engineer connection it covers, by what was revoked.",
            ["kind"],
            buckets=_REVOKE_BUCKETS,
            registry=r,
        )
        self.handshake_duration = Histogram(
            "tether_relay_tether_handshake_duration_seconds",
            "From the relay accepting an agent's TCP connection to admitting its tether.",
            buckets=_HANDSHAKE_BUCKETS,
            registry=r,
        )
        self.loop_lag = Histogram(
            "tether_relay_event_loop_lag_seconds",
            "How late the relay's event loop ran a timer (sampled every "
            "0.1 s): time every connection's handshake and traffic waited for the loop.",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.gc_pause = Histogram(
            "tether_relay_gc_pause_seconds",
            "How long each of Python's garbage collections stopped the relay, by generation.",
            ["generation"],
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.reconnects = Counter(
            "tether_relay_tether_reconnects",
            "Admissions of a tether whose key was used before (by this machine, on any "
            "relay of the fleet): a machine coming back, not a new access.",
            registry=r,
        )
        self.store_latency = Histogram(
            "tether_relay_store_latency_seconds",
            "How long the relay waited for its writes to the shared store, by operation "
            "(failed writes included).",
            ["operation"],
            buckets=_STORE_BUCKETS,
            registry=r,
        )
        self.audit_backlog = Gauge(
            "tether_relay_audit_backlog",
            "Events this relay's audit writer holds that are not yet in the database.",
            registry=r,
        )
        self.audit_backlog.set_function(audit_backlog)
        self.unauthenticated = Gauge(
            "tether_relay_unauthenticated_connections",
            "Connections to this relay that have not logged in yet (from accept, inside TLS "
            "or a WebSocket handshake too).",
            registry=r,
        )
        self.unauthenticated.set_function(unauthenticated)
        self.unauthenticated_dropped = Counter(
            "tether_relay_unauthenticated_dropped",
            "Connections dropped before login by the relay's limits, by limit.",
            ["reason"],
            registry=r,
        )
        self.peer_links = Gauge(
            "tether_relay_peer_links",
            "Links up from this relay to the fleet's other relays.",
            registry=r,
        )
        self.peer_links.set_function(peer_links)
        self.cross_relay_channels = Counter(
            "tether_relay_cross_relay_channels",
            "Engineer channels carried between relays of the fleet: 'out' to the relay "
            "holding the machine, 'in' from the relay the engineer logged in to.",
            ["direction"],
            registry=r,
        )
        self.ready = Gauge(
            "tether_relay_ready",
            "1 while this relay takes new connections (what /readyz says), else 0.",
            registry=r,
        )
        self.database_up = Gauge(
            "tether_relay_database_up",
            "1 while the vendor database answers this relay, else 0 (checked at each scrape).",
            registry=r,
        )
        # Every bounded label value exists from the start: a rate over a series that
        # appears only at its first event misses that event.
        self.admissions.labels(ADMITTED)
        self.admissions.labels(REGISTER_TIMEOUT)
        for reason in RefusalReason:
            self.admissions.labels(reason.value)
            self.tether_drops.labels(reason.value)
        for text in CHANNEL_REASONS:
            self.channels_refused.labels(text)
        for direction in ("to_machine", "to_engineer"):
            self.channel_bytes.labels(direction)
        for drop in Drop:  # why the pre-auth gate dropped a connection
            self.unauthenticated_dropped.labels(drop.value)
        for direction in ("in", "out"):
            self.cross_relay_channels.labels(direction)
        for kind in ("key", "engineer", "machine"):
            self.revocation_cut.labels(kind)
        for operation in STORE_OPERATIONS:
            self.store_latency.labels(operation)
        for generation in ("0", "1", "2"):
            self.gc_pause.labels(generation)

    def timed_store(
        self, operation: str, write: Callable[[ItemsT], Awaitable[ResultT]]
    ) -> Callable[[ItemsT], Awaitable[ResultT]]:
        """``write``, observed in the store latency histogram under ``operation``.

        :raises ValueError: ``operation`` is not one of :data:`STORE_OPERATIONS` (the
            label set stays fixed).
        """
        if operation not in STORE_OPERATIONS:
            raise ValueError(f"unknown store operation {operation!r}")
        histogram = self.store_latency.labels(operation)

        async def timed(items: ItemsT) -> ResultT:
            started = time.monotonic()
            try:
                return await write(items)
            finally:
                histogram.observe(time.monotonic() - started)

        return timed

    def readiness(self, reason: str | None) -> None:
        """Record the relay's readiness check (``None``: ready) for this scrape."""
        self.ready.set(1 if reason is None else 0)
        if reason is None or reason == DATABASE_UNAVAILABLE:
            self.database_up.set(1 if reason is None else 0)
