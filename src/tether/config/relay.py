"""A relay's ``relay.toml``: listening, limits, fleet membership and revocation watch."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from tether.config.common import (
    _REQUIRED,
    _metrics_listen,
    _read,
    _Reader,
    _verify_keys,
)
from tether.errors import ConfigError
from tether.keys import VerifyKey, is_ip_address, parse_address


@dataclass(frozen=True)
class RelayConfig:
    """A relay's settings (``relay.toml``).

    Revocations reach a relay two ways. On PostgreSQL the relay ``LISTEN`` s for the
    store's ``NOTIFY`` and applies a revocation as soon as it is written; it then
    re-reads the revocation feed only every ``listen_poll_interval`` seconds (default
    5), as a safety net. On SQLite, and on PostgreSQL while the listening connection
    is down, it re-reads every ``poll_interval`` seconds (default 0.25), which bounds
    how late a revocation can be applied. After the listening connection comes back
    the relay re-reads at once, so nothing revoked in between is missed.
    """

    path: Path
    listen: tuple[str, int]
    host_key: Path
    database: str
    vendor_keys: tuple[VerifyKey, ...]
    engineer_ca: Path
    relay_id: str = "relay-1"
    #: The address engineers and other relays reach this relay at (goes into keys).
    advertise: str = ""
    #: Seconds a client has to log in while the relay is quiet (fewer than
    #: :attr:`early_drop_start` connections waiting to log in).
    login_timeout: float = 30.0
    #: Seconds to log in when :attr:`max_unauthenticated` are waiting (linear between):
    #: under a flood a slot is held for seconds, not half a minute.
    login_timeout_busy: float = 5.0
    #: Connections waiting to log in, at most (OpenSSH ``MaxStartups`` *full*). At the
    #: cap the oldest one that has not finished its key exchange is closed to admit the
    #: newcomer; only if every one has is the newcomer refused.
    max_unauthenticated: int = 400
    #: Waiting connections from which a newcomer from a network block that already has
    #: one waiting is refused at random (``MaxStartups`` *start*; default: a quarter of
    #: ``max_unauthenticated``) ...
    early_drop_start: int = 100
    #: ... with this probability in percent at ``early_drop_start``, rising linearly to
    #: 100 at ``max_unauthenticated`` (``MaxStartups`` *rate*).
    early_drop_rate: int = 30
    #: Seconds after which a connection that has not finished its key exchange counts as
    #: stalling; only a block holding a stalling connection is dropped at random (a block
    #: whose clients all get through their key exchange is never).
    stall_after: float = 2.0
    #: Unauthenticated connections one source address may hold at once.
    max_unauthenticated_per_source: int = 20
    #: Unauthenticated connections one network block (below) may hold at once.
    max_unauthenticated_per_netblock: int = 100
    #: Prefix lengths that group addresses into one network block, for the cap above and
    #: for penalties (OpenSSH ``PerSourceNetBlockSize``): one IPv6 host has a whole /64.
    netblock_ipv4: int = 24
    netblock_ipv6: int = 64
    #: Penalty seconds a block earns when one of its connections is closed by the relay
    #: before logging in (timed out, or evicted while stalled) ...
    penalty_stall: float = 10.0
    #: ... and when one closes by itself without logging in.
    penalty_noauth: float = 1.0
    #: A block owing at least this many seconds is refused until they have drained
    #: (one second per second; the record is then forgotten) ...
    penalty_min: float = 15.0
    #: ... and owes at most this many. An address that logged in within the last hour is
    #: never penalised nor refused for its block's penalty.
    penalty_max: float = 600.0
    #: Seconds between two summaries of refused connections (one log line per block).
    refused_log_interval: float = 60.0
    #: Forwarded channels one engineer connection may hold open at once ...
    max_channels_per_connection: int = 32
    #: ... and one engineer across all their connections to this relay.
    max_channels_per_engineer: int = 128
    #: Seconds a one-click request may wait for the vendor's answer before the relay
    #: gives up on it (the case is cancelled and the machine told to ask again).
    request_timeout: float = 3600.0
    #: One-click requests one source address may make per hour.
    requests_per_source_per_hour: int = 10
    keepalive_interval: float = 15.0
    keepalive_count_max: int = 3
    #: How often the relay looks for revocations without a live LISTEN (seconds).
    poll_interval: float = 0.25
    #: How often it looks anyway while LISTEN/NOTIFY (PostgreSQL) pushes them (seconds).
    listen_poll_interval: float = 5.0
    #: How long an agent has after logging in to present its tether key.
    register_timeout: float = 15.0
    #: Tethers per second this relay asks its agents to come back at when it shuts down
    #: (each waits a random time within tethers / rate seconds).
    reconnect_rate: float = 300.0
    #: Seconds between this relay's heartbeats to the fleet's store.
    heartbeat_interval: float = 5.0
    #: A relay silent this long is dead: the others sweep its tethers (SPEC: ≤ 30 s).
    dead_after: float = 15.0
    #: Read a PROXY protocol v2 header (HAProxy ``send-proxy-v2``) before SSH on
    #: ``listen``; connections from outside :attr:`trusted_proxies` are then refused.
    proxy_protocol: bool = False
    #: Addresses / networks of the load balancers allowed to send PROXY headers.
    trusted_proxies: tuple[str, ...] = ()
    #: ``(host, port)`` of the internal HTTP endpoint (``[metrics] listen``): ``/metrics``
    #: for Prometheus, ``/healthz`` and ``/readyz`` for the load balancer's checks;
    #: ``None``: off. Keep it on an internal address.
    metrics_listen: tuple[str, int] | None = None
    #: The fleet's relay-to-relay key (an OpenSSH ed25519 private key file shared by the
    #: fleet's relays). With it the relay accepts other relays' logins as
    #: :data:`~tether.wire.PEER_USERNAME` with this key only, and carries engineers'
    #: channels to the relay holding a machine; without it (one relay) it does neither.
    peer_key: Path | None = None
    #: ``(host, port)`` of this relay's relay-to-relay port (plain SSH, no PROXY header,
    #: peer logins only), on an address the other relays reach; the fleet's registry
    #: names it. ``None``: peers use ``listen`` (not possible with ``proxy_protocol``).
    peer_listen: tuple[str, int] | None = None
    #: PEM certificate (chain) and key for TLS on ``listen``: the port then also takes
    #: SSH inside TLS and SSH over a WebSocket (relay/carriers.py). The certificate is
    #: not the trust (agents pin the SSH host key); it only lets the tether through
    #: networks that pass HTTPS alone. ``None``: plain SSH only.
    tls_certificate: Path | None = None
    tls_key: Path | None = None

    @classmethod
    def load(cls, path: Path) -> RelayConfig:
        r = _read(path)
        try:
            listen = parse_address(r.text("listen", "0.0.0.0:2222"), what="listen address")
        except Exception as exc:
            raise ConfigError(f"{path}: listen: {exc}") from None
        proxy_protocol = r._get("proxy_protocol", bool, False)
        proxies = r.strings("trusted_proxies", [])
        try:
            for text in proxies:
                ipaddress.ip_network(text, strict=False)
        except ValueError as exc:
            raise ConfigError(f"{path}: trusted_proxies: {exc}") from None
        if proxy_protocol and not proxies:
            raise ConfigError(
                f"{path}: proxy_protocol = true needs trusted_proxies (the load balancers' "
                'addresses, e.g. ["10.0.0.5/32"]): a PROXY header is accepted only from them'
            )
        metrics_listen = _metrics_listen(r)
        peer_key = r.path_("peer_key", None)
        full = r.integer("max_unauthenticated", 400, low=1, high=100_000)
        peer_listen = _peer_listen(r, peer_key is not None, proxy_protocol)
        tls_certificate = r.path_("tls_certificate", None)
        tls_key = r.path_("tls_key", None)
        if (tls_certificate is None) != (tls_key is None):
            raise ConfigError(f"{path}: tls_certificate and tls_key go together")
        config = cls(
            path=r.path,
            listen=listen,
            host_key=r.path_("host_key", _REQUIRED),
            database=r.text("database", _REQUIRED),
            vendor_keys=_verify_keys(r, "vendor_keys"),
            engineer_ca=r.path_("engineer_ca", _REQUIRED),
            relay_id=r.text("relay_id", "relay-1"),
            advertise=r.text("advertise", ""),
            login_timeout=r.number("login_timeout", 30.0, low=1.0, high=600.0),
            login_timeout_busy=r.number("login_timeout_busy", 5.0, low=0.5, high=600.0),
            max_unauthenticated=full,
            early_drop_start=r.integer("early_drop_start", max(1, full // 4), low=1, high=100_000),
            early_drop_rate=r.integer("early_drop_rate", 30, low=0, high=100),
            stall_after=r.number("stall_after", 2.0, low=0.0, high=600.0),
            max_unauthenticated_per_source=r.integer(
                "max_unauthenticated_per_source", 20, low=1, high=100_000
            ),
            max_unauthenticated_per_netblock=r.integer(
                "max_unauthenticated_per_netblock", 100, low=1, high=100_000
            ),
            netblock_ipv4=r.integer("netblock_ipv4", 24, low=8, high=32),
            netblock_ipv6=r.integer("netblock_ipv6", 64, low=16, high=128),
            penalty_stall=r.number("penalty_stall", 10.0, low=0.0, high=86_400.0),
            penalty_noauth=r.number("penalty_noauth", 1.0, low=0.0, high=86_400.0),
            penalty_min=r.number("penalty_min", 15.0, low=0.0, high=86_400.0),
            penalty_max=r.number("penalty_max", 600.0, low=0.0, high=86_400.0),
            refused_log_interval=r.number("refused_log_interval", 60.0, low=1.0, high=3600.0),
            max_channels_per_connection=r.integer(
                "max_channels_per_connection", 32, low=1, high=100_000
            ),
            max_channels_per_engineer=r.integer(
                "max_channels_per_engineer", 128, low=1, high=100_000
            ),
            request_timeout=r.number("request_timeout", 3600.0, low=10.0, high=7 * 86_400.0),
            requests_per_source_per_hour=r.integer(
                "requests_per_source_per_hour", 10, low=1, high=100_000
            ),
            keepalive_interval=r.number("keepalive_interval", 15.0),
            keepalive_count_max=r.integer("keepalive_count_max", 3, low=1, high=100),
            poll_interval=r.number("poll_interval", 0.25),
            listen_poll_interval=r.number("listen_poll_interval", 5.0),
            register_timeout=r.number("register_timeout", 15.0),
            reconnect_rate=r.number("reconnect_rate", 300.0, low=1.0, high=100_000.0),
            heartbeat_interval=r.number("heartbeat_interval", 5.0, low=0.1, high=60.0),
            dead_after=r.number("dead_after", 15.0, low=0.5, high=300.0),
            proxy_protocol=proxy_protocol,
            trusted_proxies=tuple(proxies),
            metrics_listen=metrics_listen,
            peer_key=peer_key,
            peer_listen=peer_listen,
            tls_certificate=tls_certificate,
            tls_key=tls_key,
        )
        r.finish()
        if config.early_drop_start > config.max_unauthenticated:
            raise ConfigError(
                f"{path}: early_drop_start ({config.early_drop_start}) must be at most "
                f"max_unauthenticated ({config.max_unauthenticated})"
            )
        if config.login_timeout_busy > config.login_timeout:
            raise ConfigError(
                f"{path}: login_timeout_busy ({config.login_timeout_busy:g} s) must be at "
                f"most login_timeout ({config.login_timeout:g} s)"
            )
        if config.penalty_min > config.penalty_max:
            raise ConfigError(
                f"{path}: penalty_min ({config.penalty_min:g}) must be at most "
                f"penalty_max ({config.penalty_max:g})"
            )
        if config.dead_after < 2 * config.heartbeat_interval:
            raise ConfigError(
                f"{path}: dead_after ({config.dead_after:g} s) must be at least twice "
                f"heartbeat_interval ({config.heartbeat_interval:g} s), or a live relay "
                "is taken for dead after one late heartbeat"
            )
        return config


def _peer_listen(r: _Reader, peer_key: bool, proxy_protocol: bool) -> tuple[str, int] | None:
    """``peer_listen``: needs ``peer_key``; required behind a PROXY-protocol balancer."""
    text = r.text("peer_listen", "")
    if not text:
        if peer_key and proxy_protocol:
            raise ConfigError(
                f"{r.path}: peer_key with proxy_protocol = true needs peer_listen (an "
                'internal HOST:PORT, e.g. "10.0.0.11:2223"): other relays send no PROXY header'
            )
        return None
    if not peer_key:
        raise ConfigError(f"{r.path}: peer_listen needs peer_key (the fleet's relay-to-relay key)")
    try:
        host, port = parse_address(text, what="peer address", any_port=True)
    except Exception as exc:
        raise ConfigError(f"{r.path}: peer_listen: {exc}") from None
    if is_ip_address(host) and ipaddress.ip_address(host).is_unspecified:
        raise ConfigError(
            f"{r.path}: peer_listen must be the address other relays reach this relay at, "
            f"not a wildcard ({text!r})"
        )
    return host, port
