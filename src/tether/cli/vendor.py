"""``tether vendor …``: set up the vendor side, issue and revoke keys, sign certificates."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import click
from rich.markup import escape

from tether.certs import DEFAULT_CERT_TTL, EngineerCertificate, load_public_key
from tether.cli.common import err, handle_errors, json_option, out, print_json, run
from tether.durations import format_duration, parse_duration
from tether.errors import BadInput
from tether.keys import parse_ports
from tether.store import Store
from tether.vendor.authority import Authority, init_data_dir, load_vendor_config

data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="TETHER_VENDOR_DIR",
    default="/var/lib/tether-vendor",
    show_default=True,
    help="The vendor data directory (keys, CA, database, vendor.toml). Env: TETHER_VENDOR_DIR.",
)


@click.group()
def vendor() -> None:
    """The vendor side: keys, certificates, engineers (and later the vendor service)."""


@vendor.command()
@data_dir_option
@click.option(
    "--vendor", "vendor_name", required=True, help="Your company's name, as shown to customers."
)
@click.option(
    "--relay",
    required=True,
    help="HOST:PORT where agents reach the relay, e.g. relay.example.com:2222.",
)
@click.option(
    "--database", help="Database URL (default: SQLite file tether.db in the data directory)."
)
@click.option("--relay-listen", help="Address the relay binds (default 0.0.0.0:<relay port>).")
@json_option
@handle_errors
def init(
    data_dir: Path,
    vendor_name: str,
    relay: str,
    database: str | None,
    relay_listen: str | None,
    as_json: bool,
) -> None:
    """Create the vendor data directory: signing key, engineer CA, relay host key, database.

    Refuses to overwrite an existing setup. Prints the trust snippet that goes into
    every customer's /etc/tether/agent.toml.
    """
    result = run(
        init_data_dir(
            data_dir, vendor=vendor_name, relay=relay, database=database, relay_listen=relay_listen
        )
    )
    if as_json:
        print_json(
            {
                "data_dir": str(result.config.data_dir),
                "vendor_public_key": result.vendor_public_key,
                "engineer_ca": result.engineer_ca,
                "relay_host_key": result.relay_host_key_fingerprint,
                "agent_trust_file": str(result.agent_trust_file),
                "relay_config": str(result.relay_config),
            }
        )
        return
    out.print(f"Created vendor setup for {escape(vendor_name)} in {result.config.data_dir}")
    out.print(f"  relay host key:  {result.relay_host_key_fingerprint}")
    out.print(f"  agent trust:     {result.agent_trust_file}  (goes into customers' agent.toml)")
    out.print(f"  relay config:    {result.relay_config}")
    out.print(
        "Next: `tether vendor engineer add NAME`, `tether relay serve --config "
        f"{result.relay_config}`, `tether vendor issue-key --serial SERIAL`"
    )


@asynccontextmanager
async def _with_authority(data_dir: Path) -> AsyncIterator[Authority]:
    config = load_vendor_config(data_dir)
    store = await Store.open(config.database)
    try:
        yield Authority(config, store)
    finally:
        await store.aclose()


@vendor.command("issue-key")
@data_dir_option
@click.option("--serial", required=True, help="The customer machine's serial number.")
@click.option(
    "--expires",
    default="14d",
    show_default=True,
    help="Validity, e.g. 8h, 14d, 12w (at most 12 weeks).",
)
@click.option(
    "--ports",
    help="Ports engineers may reach on the machine (default from vendor.toml: 22,80,443).",
)
@click.option(
    "--relay", help="HOST:PORT of the relay the machine connects to (default from vendor.toml)."
)
@json_option
@handle_errors
def issue_key(
    data_dir: Path, serial: str, expires: str, ports: str | None, relay: str | None, as_json: bool
) -> None:
    """Issue a tether key for one machine and print it (the key alone goes to stdout)."""
    lifetime = parse_duration(expires)
    port_list = parse_ports(ports) if ports else None

    async def go() -> tuple[str, dict[str, object]]:
        async with _with_authority(data_dir) as authority:
            token, claims = await authority.issue_key(
                serial, lifetime=lifetime, ports=port_list, relay=relay
            )
            return token, claims.to_json()

    token, claims = run(go())
    if as_json:
        print_json({"key": token, **claims})
        return
    click.echo(token)
    err.print(
        f"Key {claims['key_id']} for {escape(serial)}: ports {','.join(map(str, claims['ports']))}, "  # type: ignore[call-overload]
        f"relay {claims['relay']}, expires {claims['expires_at']} ({format_duration(lifetime)})"
    )


@vendor.command("revoke-key")
@data_dir_option
@click.argument("key_id")
@click.option(
    "--reason", default="revoked by vendor", show_default=True, help="Why; shown to the customer."
)
@json_option
@handle_errors
def revoke_key(data_dir: Path, key_id: str, reason: str, as_json: bool) -> None:
    """Revoke a key: its tether is dropped on every relay within a second."""

    async def go() -> dict[str, object]:
        async with _with_authority(data_dir) as authority:
            issued = await authority.revoke_key(key_id, reason=reason)
            return {
                "key_id": issued.key_id,
                "serial": issued.serial,
                "revoked_at": issued.revoked_at,
            }

    result = run(go())
    if as_json:
        print_json(result)
    else:
        out.print(f"Revoked key {key_id} (machine {escape(str(result['serial']))}).")


@vendor.command("keys")
@data_dir_option
@click.option("--serial", help="Only keys for this serial.")
@json_option
@handle_errors
def list_keys(data_dir: Path, serial: str | None, as_json: bool) -> None:
    """List issued keys, newest first."""

    async def go() -> list[dict[str, object]]:
        async with _with_authority(data_dir) as authority:
            keys = await authority.store.keys.list(serial=serial)
            return [
                {
                    "key_id": k.key_id,
                    "serial": k.serial,
                    "expires_at": k.expires_at.isoformat(),
                    "used": k.bound_machine_key is not None,
                    "revoked": k.revoked_at is not None,
                }
                for k in keys
            ]

    rows = run(go())
    if as_json:
        print_json(rows)
        return
    for row in rows:
        flags = " ".join(f for f, on in (("used", row["used"]), ("revoked", row["revoked"])) if on)
        out.print(
            f"{row['key_id']}  {escape(str(row['serial']))}  expires {row['expires_at']}  {flags}"
        )


@vendor.group()
def engineer() -> None:
    """Manage the engineers who may connect."""


@engineer.command("add")
@data_dir_option
@click.argument("name")
@handle_errors
def engineer_add(data_dir: Path, name: str) -> None:
    """Add an engineer (lower-case letters, digits, '.', '_', '-')."""
    from tether.certs import check_engineer_name

    check_engineer_name(name)

    async def go() -> None:
        async with _with_authority(data_dir) as authority:
            await authority.store.engineers.add(name, authority.clock.now())

    run(go())
    out.print(
        f"Added engineer {name}. Sign their key: tether vendor sign --engineer {name} --pubkey KEY.pub"
    )


@engineer.command("remove")
@data_dir_option
@click.argument("name")
@handle_errors
def engineer_remove(data_dir: Path, name: str) -> None:
    """Remove an engineer; their live connections are cut at once."""

    async def go() -> None:
        async with _with_authority(data_dir) as authority:
            await authority.store.engineers.remove(name, now=authority.clock.now())

    run(go())
    out.print(f"Removed engineer {name}.")


@vendor.command()
@data_dir_option
@click.option(
    "--engineer", "engineer_name", required=True, help="The engineer the certificate names."
)
@click.option(
    "--pubkey",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The engineer's OpenSSH public key file (e.g. ~/.ssh/id_ed25519.pub).",
)
@click.option(
    "--ttl",
    default=str(int(DEFAULT_CERT_TTL.total_seconds() // 3600)) + "h",
    show_default=True,
    help="Validity, at most 7d.",
)
@click.option(
    "--out",
    "out_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the certificate here (e.g. ~/.ssh/id_ed25519-cert.pub) instead of stdout.",
)
@json_option
@handle_errors
def sign(
    data_dir: Path, engineer_name: str, pubkey: Path, ttl: str, out_file: Path | None, as_json: bool
) -> None:
    """Sign an engineer's public key with the vendor CA (an OpenSSH user certificate)."""
    lifetime = parse_duration(ttl)
    key = load_public_key(pubkey.read_bytes(), what=f"public key in {pubkey}")
    if key.get_algorithm().endswith("-cert-v01@openssh.com"):
        raise BadInput(f"{pubkey} is already a certificate; pass the plain public key")

    async def go() -> EngineerCertificate:
        async with _with_authority(data_dir) as authority:
            return await authority.sign(engineer_name, key, ttl=lifetime)

    cert = run(go())
    text = cert.openssh()
    if out_file is not None:
        out_file.write_text(text + "\n")
    if as_json:
        print_json(
            {
                "certificate": text,
                "engineer": cert.engineer,
                "principals": list(cert.principals),
                "serial": cert.serial,
                "valid_after": cert.valid_after.isoformat(),
                "valid_before": cert.valid_before.isoformat(),
            }
        )
    elif out_file is None:
        click.echo(text)
    err.print(
        f"Certificate for {engineer_name} valid until {cert.valid_before:%Y-%m-%d %H:%M} UTC "
        f"(principals: {', '.join(cert.principals)})"
    )
