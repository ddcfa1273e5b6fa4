"""``tether vendor relay …``: add relays to the fleet and see which are alive."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click
from rich.markup import escape

from tether.cli.common import data_dir_option, handle_errors, json_option, out, print_json, run
from tether.cli.vendor_common import with_authority
from tether.store import RelayRecord
from tether.vendor_service.fleet import ProvisionedRelay, RelayPlan, provision_relay

#: Seconds without a heartbeat after which `relay list` calls a relay dead (the
#: relays' own default ``dead_after``).
DEAD_AFTER = 15.0


@click.group()
def relay() -> None:
    """The relay fleet: several relays on one database, behind HAProxy.

    \b
    Each relay gets its own relay.toml from `relay add`:
      tether vendor relay add relay-2 --listen 0.0.0.0:2222 --peer-listen 10.0.0.12:2223
      tether relay serve --config /var/lib/tether-vendor/relays/relay-2.toml
    The fleet needs the database to be PostgreSQL (vendor init --database ...).
    """


@relay.command("add")
@data_dir_option
@click.argument("relay_id")
@click.option("--listen", required=True, help="HOST:PORT the relay's SSH port binds.")
@click.option(
    "--peer-listen",
    required=True,
    help="HOST:PORT where the other relays reach this one (an internal address).",
)
@click.option(
    "--trusted-proxy",
    "trusted_proxies",
    multiple=True,
    help="Address or network of a HAProxy in front (repeatable); turns on PROXY protocol v2.",
)
@click.option(
    "--metrics-listen",
    default="",
    help="HOST:PORT of the relay's /metrics, /healthz and /readyz (an internal address).",
)
@json_option
@handle_errors
def relay_add(
    data_dir: Path,
    relay_id: str,
    listen: str,
    peer_listen: str,
    trusted_proxies: tuple[str, ...],
    metrics_listen: str,
    as_json: bool,
) -> None:
    """Write relays/RELAY_ID.toml: its own id, the fleet's keys and database.

    Refused if that relay is already provisioned or a running relay holds the id. The
    first relay added also creates the fleet's relay-to-relay key (relay_peer_key).
    """
    plan = RelayPlan(relay_id, listen, peer_listen, trusted_proxies, metrics_listen)

    async def go() -> ProvisionedRelay:
        async with with_authority(data_dir) as authority:
            return await provision_relay(
                authority.config, authority.store, plan, authority.clock.now()
            )

    made = run(go())
    if as_json:
        print_json(
            {
                "relay_id": made.relay_id,
                "config": str(made.config_path),
                "peer_key_created": made.peer_key_created,
            }
        )
        return
    out.print(f"Relay {escape(made.relay_id)}: {escape(str(made.config_path))}")
    if made.peer_key_created:
        out.print("Created the fleet's relay-to-relay key (relay_peer_key); keep it private.")
    out.print(f"Start it with: tether relay serve --config {escape(str(made.config_path))}")


@relay.command("list")
@data_dir_option
@json_option
@handle_errors
def relay_list(data_dir: Path, as_json: bool) -> None:
    """The relays that heartbeat into the database, their tethers and whether alive."""

    async def go() -> tuple[list[RelayRecord], datetime]:
        async with with_authority(data_dir) as authority:
            return await authority.store.relays.list(), authority.clock.now()

    relays, now = run(go())
    rows = [
        (r, max(0.0, (now - r.last_seen_at).total_seconds())) for r in relays
    ]  # fmt: skip
    if as_json:
        print_json(
            [
                {
                    "relay_id": r.relay_id,
                    "address": r.address,
                    "tethers": r.tethers,
                    "started_at": r.started_at.isoformat(),
                    "last_seen_at": r.last_seen_at.isoformat(),
                    "alive": silent < DEAD_AFTER,
                }
                for r, silent in rows
            ]
        )
        return
    if not rows:
        out.print("No relay has reported itself (none running, or a different database).")
        return
    for r, silent in rows:
        state = "alive" if silent < DEAD_AFTER else f"DEAD (silent {silent:.0f} s)"
        out.print(
            f"{escape(r.relay_id)}  {escape(r.address)}  {r.tethers} tethers  {state}  "
            f"(last heartbeat {silent:.0f} s ago)"
        )
