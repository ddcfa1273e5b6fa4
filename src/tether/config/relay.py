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
from tether.keys import VerifyKey, parse_address


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
    login_timeout: float = 30.0
    max_unauthenticated: int = 200
    #: Unauthenticated connections one source address may hold at once.
    max_unauthenticated_per_source: int = 20
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
        peer_listen = _peer_listen(r, peer_key is not None, proxy_protocol)
        config = cls(
            path=r.path,
            listen=listen,
            host_key=r.path_("host_key", _REQUIRED),
            database=r.text("database", _REQUIRED),
            vendor_keys=_verify_keys(r, "vendor_keys"),
            engineer_ca=r.path_("engineer_ca", _REQUIRED),
            relay_id=r.text("relay_id", "relay-1"),
            advertise=r.text("advertise", ""),
            login_timeout=r.number("login_timeout", 30.0),
            max_unauthenticated=r.integer("max_unauthenticated", 200, low=1, high=100_000),
            max_unauthenticated_per_source=r.integer(
                "max_unauthenticated_per_source", 20, low=1, high=100_000
            ),
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
        )
        r.finish()
        if config.dead_after < 2 * config.heartbeat_interval:
            raise ConfigError(
                f"{path}: dead_after ({config.dead_after:g} s) must be at least twice "
                f"heartbeat_interval ({config.heartbeat_interval:g} s), or a live relay "
                "is taken for dead after one late heartbeat"
            )
        return config


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


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
    if _is_ip(host) and ipaddress.ip_address(host).is_unspecified:
        raise ConfigError(
            f"{r.path}: peer_listen must be the address other relays reach this relay at, "
            f"not a wildcard ({text!r})"
        )
    return host, port
