"""The vendor service's ``vendor.toml``: keys, CA, database and the one-click policy."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from pathlib import Path

from tether.config.common import (
    _REQUIRED,
    _metrics_listen,
    _read,
)
from tether.durations import parse_duration
from tether.errors import ConfigError
from tether.keys import check_ports, parse_address
from tether.wire import DEFAULT_PORTS, DEFAULT_SUPPORT_ACCOUNT


class RequestPolicy(StrEnum):
    """What the vendor service does with a one-click support request."""

    AUTO = "auto"
    """Issue a key at once to a machine already bound to its serial; others wait."""
    HOLD = "hold"
    """Keep the case pending until an engineer approves or denies it (the default)."""


#: Longest lifetime a one-click (request) key may be given: that of any tether key.
MAX_REQUEST_KEY_LIFETIME = timedelta(weeks=12)


@dataclass(frozen=True)
class VendorConfig:
    """The vendor service's settings (``vendor.toml`` in the vendor data directory)."""

    path: Path
    vendor: str
    data_dir: Path
    database: str
    relay: str
    support_account: str = DEFAULT_SUPPORT_ACCOUNT
    default_ports: tuple[int, ...] = DEFAULT_PORTS
    #: ``auto``: one-click requests get a key at once; ``hold``: an engineer decides.
    request_policy: str = RequestPolicy.HOLD
    #: Lifetime of keys issued on one-click requests (``request_key_lifetime = "21d"``).
    request_key_lifetime: timedelta = timedelta(days=21)
    #: Reverse proxies in front of the vendor service (addresses / networks): their
    #: ``X-Forwarded-For`` names the client, which the login limit counts per source.
    trusted_proxies: tuple[str, ...] = ()
    #: ``(host, port)`` of the internal HTTP endpoint (``[metrics] listen``):
    #: ``/metrics``, ``/healthz``, ``/readyz`` without authentication, so never on the
    #: API's public address; ``None``: off.
    metrics_listen: tuple[str, int] | None = None

    @property
    def signing_key_path(self) -> Path:
        return self.data_dir / "tether_signing_key.pem"

    @property
    def engineer_ca_path(self) -> Path:
        return self.data_dir / "engineer_ca"

    @property
    def seal_key_path(self) -> Path:
        return self.data_dir / "password_seal_key.pem"

    @property
    def relay_host_key_path(self) -> Path:
        return self.data_dir / "relay_host_key"

    @classmethod
    def load(cls, path: Path) -> VendorConfig:
        r = _read(path)
        relay = r.text("relay", _REQUIRED)
        try:
            parse_address(relay, what="relay address")
        except Exception as exc:
            raise ConfigError(f"{path}: relay: {exc}") from None
        ports = r._get("default_ports", list, list(DEFAULT_PORTS))
        try:
            default_ports = check_ports(ports)
        except Exception as exc:
            raise ConfigError(f"{path}: default_ports: {exc}") from None
        policy = r.text("request_policy", RequestPolicy.HOLD.value)
        try:
            request_policy = RequestPolicy(policy)
        except ValueError:
            raise ConfigError(
                f'{path}: request_policy must be "auto" (issue keys at once) or "hold" '
                f"(an engineer approves each request), not {policy!r}"
            ) from None
        lifetime_text = r.text("request_key_lifetime", "21d")
        try:
            lifetime = parse_duration(lifetime_text)
        except Exception as exc:
            raise ConfigError(f"{path}: request_key_lifetime: {exc}") from None
        if lifetime > MAX_REQUEST_KEY_LIFETIME:
            raise ConfigError(
                f"{path}: request_key_lifetime may be at most 12 weeks (84d), not {lifetime_text!r}"
            )
        proxies = r.strings("trusted_proxies", [])
        try:
            for text in proxies:
                ipaddress.ip_network(text, strict=False)
        except ValueError as exc:
            raise ConfigError(f"{path}: trusted_proxies: {exc}") from None
        config = cls(
            path=r.path,
            vendor=r.text("vendor", _REQUIRED),
            data_dir=r.path_("data_dir", "."),
            database=r.text("database", _REQUIRED),
            relay=relay,
            support_account=r.text("support_account", DEFAULT_SUPPORT_ACCOUNT),
            default_ports=default_ports,
            request_policy=request_policy,
            request_key_lifetime=lifetime,
            trusted_proxies=tuple(proxies),
            metrics_listen=_metrics_listen(r),
        )
        r.finish()
        return config
