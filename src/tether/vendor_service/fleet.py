"""Provisioning the vendor's relay fleet: one ``relay.toml`` per relay, never a shared id.

Every relay of a fleet shares the vendor's relay host key (tether keys pin it), the
engineer CA, the vendor's public key and the database; each has its own ``relay_id``
and its own addresses. Relays reach each other with the fleet's peer key
(``relay_peer_key``, made on first use), which logs in only as the relay-to-relay user
and never as an engineer.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tether.config import VendorConfig, toml_string
from tether.errors import BadInput, Refused
from tether.keys import SigningKey, parse_address
from tether.sshlib import asyncssh
from tether.store import RelayRecord, Store

#: A relay id: short, lower-case, safe in file names, logs and audit chain names.
RELAY_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
#: The fleet's relay-to-relay key, in the vendor data directory.
PEER_KEY_FILE = "relay_peer_key"


def check_relay_id(text: str) -> str:
    """``text`` if it is a valid relay id, else :class:`BadInput` saying what is allowed."""
    if not RELAY_ID.fullmatch(text):
        raise BadInput(
            f"relay id {text!r} is not valid: use 1-63 lower-case letters, digits and '-', "
            "starting with a letter or digit (e.g. relay-2, fra-1)"
        )
    return text


@dataclass(frozen=True)
class RelayPlan:
    """What ``tether vendor relay add`` writes for one relay."""

    relay_id: str
    #: Where the relay binds its SSH port (agents and engineers, via HAProxy or not).
    listen: str
    #: Where the other relays reach this one (its own address, never the balancer's).
    peer_listen: str
    #: Load balancers allowed to send PROXY v2 headers; empty: no balancer in front.
    trusted_proxies: tuple[str, ...] = ()
    #: The internal ``/metrics``, ``/healthz`` and ``/readyz`` endpoint, or "" for none.
    metrics_listen: str = ""


@dataclass(frozen=True)
class ProvisionedRelay:
    """The result: where its ``relay.toml`` is and whether the fleet's peer key was made."""

    relay_id: str
    config_path: Path
    peer_key_created: bool


def relays_dir(config: VendorConfig) -> Path:
    """Where the fleet's relay configurations live (``<data dir>/relays``)."""
    return config.data_dir / "relays"


async def provision_relay(
    config: VendorConfig, store: Store, plan: RelayPlan, now: datetime, *, dead_after: float = 15.0
) -> ProvisionedRelay:
    """Write ``relays/<id>.toml`` for a new relay of the fleet.

    Refused, changing nothing, if that file exists or a live relay holds the id.
    """
    relay_id = check_relay_id(plan.relay_id)
    for what, address in (("--listen", plan.listen), ("--peer-listen", plan.peer_listen)):
        parse_address(address, what=f"{what} address")
    if plan.metrics_listen:
        parse_address(plan.metrics_listen, what="--metrics-listen address")
    target = relays_dir(config) / f"{relay_id}.toml"
    if target.exists():
        raise Refused(f"relay {relay_id} is already provisioned ({target}); remove it first")
    live = await _live_holder(store, relay_id, now, dead_after)
    if live is not None:
        raise Refused(
            f"relay id {relay_id!r} is in use by the running relay at {live.address}; "
            "choose another id"
        )
    target.parent.mkdir(mode=0o700, exist_ok=True)
    peer_key = config.data_dir / PEER_KEY_FILE
    created = not peer_key.exists()
    if created:
        key = asyncssh.generate_private_key("ssh-ed25519", comment=f"{config.vendor} relay peers")
        _write(peer_key, key.export_private_key(), 0o600)
    signing = SigningKey.from_pem(config.signing_key_path.read_bytes())
    lines = [
        f"# Tether relay {relay_id} of {config.vendor}'s fleet; paths are relative to this file.",
        f"relay_id = {toml_string(relay_id)}",
        f"listen = {toml_string(plan.listen)}",
        f"advertise = {toml_string(config.relay)}",
        'host_key = "../relay_host_key"',
        'engineer_ca = "../engineer_ca.pub"',
        f"database = {toml_string(config.database)}",
        f"vendor_keys = [{toml_string(signing.verify_key().to_paserk())}]",
        f'peer_key = "../{PEER_KEY_FILE}"',
        f"peer_listen = {toml_string(plan.peer_listen)}",
    ]
    if plan.trusted_proxies:
        proxies = ", ".join(toml_string(p) for p in plan.trusted_proxies)
        lines += ["proxy_protocol = true", f"trusted_proxies = [{proxies}]"]
    if plan.metrics_listen:  # a table: after every top-level key
        lines += ["", "[metrics]", f"listen = {toml_string(plan.metrics_listen)}"]
    _write(target, ("\n".join(lines) + "\n").encode(), 0o644)
    return ProvisionedRelay(relay_id, target, created)


async def _live_holder(
    store: Store, relay_id: str, now: datetime, dead_after: float
) -> RelayRecord | None:
    for relay in await store.relays.list():
        alive = (now - relay.last_seen_at).total_seconds() < dead_after
        if relay.relay_id == relay_id and alive:
            return relay
    return None


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
