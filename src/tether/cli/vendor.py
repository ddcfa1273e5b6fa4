"""``tether vendor …``: set up the vendor side, run the vendor service, issue and revoke
keys, sign certificates, manage engineers, machines and one-click cases."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

import click
from rich.markup import escape

from tether import log
from tether.certs import DEFAULT_CERT_TTL, EngineerCertificate, load_public_key
from tether.cli.common import (
    data_dir_option,
    err,
    handle_errors,
    json_option,
    log_format_option,
    out,
    print_json,
    run,
)
from tether.cli.vendor_audit import audit
from tether.cli.vendor_cases import cases, machine
from tether.cli.vendor_common import CLI_ACTOR, with_authority
from tether.cli.vendor_fleet import relay
from tether.config import VendorConfig
from tether.durations import format_duration, parse_duration
from tether.errors import BadInput
from tether.keys import check_serial, format_address, parse_address, parse_ports
from tether.store import Store
from tether.tasks import TaskSet
from tether.vendor_service.authority import init_data_dir, load_vendor_config


@click.group()
def vendor() -> None:
    """The vendor side: the vendor service, keys, certificates, engineers, cases, audit."""


vendor.add_command(audit)
vendor.add_command(cases)
vendor.add_command(machine)
vendor.add_command(relay)


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
    serial = check_serial(serial)
    lifetime = parse_duration(expires)
    port_list = parse_ports(ports) if ports else None

    async def go() -> tuple[str, dict[str, object]]:
        async with with_authority(data_dir) as authority:
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
        async with with_authority(data_dir) as authority:
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
        async with with_authority(data_dir) as authority:
            keys = await authority.store.keys.list(serial=serial)
            return [
                {
                    "key_id": k.key_id,
                    "serial": k.serial,
                    "expires_at": k.expires_at.isoformat(),
                    "used": k.bound_machine_key is not None,
                    "revoked": k.revoked_at is not None and not k.spent,
                    # The machine closed the access it opened: each key works once.
                    "spent": k.spent,
                }
                for k in keys
            ]

    rows = run(go())
    if as_json:
        print_json(rows)
        return
    for row in rows:
        flags = " ".join(f for f in ("used", "spent", "revoked") if row[f])
        out.print(
            f"{row['key_id']}  {escape(str(row['serial']))}  expires {row['expires_at']}  {flags}"
        )


@vendor.group()
def engineer() -> None:
    """Manage the engineers who may connect."""


def _read_password(name: str) -> str:
    """A new password: from a hidden prompt on a terminal, else one line of stdin."""
    from tether.vendor_service.api_credentials import check_password

    if sys.stdin.isatty():
        password = click.prompt(
            f"Password for {name}", hide_input=True, confirmation_prompt=True, err=True
        )
    else:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise BadInput("no password on stdin: send one line (or run on a terminal)")
    return check_password(str(password))


@engineer.command("add")
@data_dir_option
@click.argument("name")
@click.option("--admin", is_flag=True, help="May manage keys, machines and engineers.")
@click.option(
    "--password-prompt",
    is_flag=True,
    help="Set a vendor-service password (hidden prompt, or one line of stdin; never argv).",
)
@json_option
@handle_errors
def engineer_add(
    data_dir: Path, name: str, admin: bool, password_prompt: bool, as_json: bool
) -> None:
    """Add an engineer (lower-case letters, digits, '.', '_', '-')."""
    from tether.certs import check_engineer_name
    from tether.vendor_service.api_credentials import hash_password

    check_engineer_name(name)
    password_hash = hash_password(_read_password(name)) if password_prompt else None

    async def go() -> None:
        async with with_authority(data_dir) as authority:
            await authority.store.engineers.add(
                name, authority.clock.now(), admin=admin, password_hash=password_hash
            )
            await authority.record("engineer.added", engineer=name, admin=admin, by=CLI_ACTOR)

    run(go())
    if as_json:
        print_json({"engineer": name, "admin": admin, "password_set": password_hash is not None})
        return
    role = "admin" if admin else "engineer"
    out.print(
        f"Added {role} {name}. They log in with `tether login`"
        + ("" if password_hash else " once a password is set (--password-prompt)")
        + f", or sign their key: tether vendor sign --engineer {name} --pubkey KEY.pub"
    )


@engineer.command("totp")
@data_dir_option
@click.argument("name")
@click.option("--off", is_flag=True, help="Turn one-time codes off for this engineer.")
@json_option
@handle_errors
def engineer_totp(data_dir: Path, name: str, off: bool, as_json: bool) -> None:
    """Give an engineer a new TOTP secret and print its otpauth:// URI (shown only once)."""
    from tether.vendor_service.api_credentials import new_totp_secret, totp_uri

    secret = None if off else new_totp_secret()

    async def go() -> str:
        async with with_authority(data_dir) as authority:
            if await authority.store.engineers.get(name) is None:
                raise BadInput(f"no engineer named {name!r}")
            await authority.store.engineers.set_totp(name, secret)
            event = "engineer.totp_disabled" if secret is None else "engineer.totp_enabled"
            await authority.record(event, engineer=name, by=CLI_ACTOR)
            return authority.config.vendor

    vendor_name = run(go())
    uri = (
        None if secret is None else totp_uri(secret, engineer=name, issuer=f"{vendor_name} Tether")
    )
    if as_json:
        # The URI is the new secret, shown this once, as without --json.
        print_json({"engineer": name, "totp": uri is not None, "otpauth_uri": uri})
        return
    if uri is None:
        out.print(f"One-time codes are off for {name}.")
        return
    click.echo(uri)
    err.print(
        f"Give this URI to {name} for their authenticator app; it is not shown again. "
        "Logins now need the current code."
    )


@engineer.command("remove")
@data_dir_option
@click.argument("name")
@json_option
@handle_errors
def engineer_remove(data_dir: Path, name: str, as_json: bool) -> None:
    """Remove an engineer; their live connections are cut at once."""

    async def go() -> None:
        async with with_authority(data_dir) as authority:
            await authority.store.engineers.remove(name, now=authority.clock.now())
            await authority.record("engineer.removed", engineer=name, by=CLI_ACTOR)

    run(go())
    if as_json:
        print_json({"engineer": name, "removed": True})
        return
    out.print(f"Removed engineer {name}.")


@vendor.command()
@data_dir_option
@json_option
@handle_errors
def migrate(data_dir: Path, as_json: bool) -> None:
    """Bring the vendor database's schema up to this version of Tether (idempotent).

    The Debian package runs it on upgrade, before the vendor service and relays restart;
    relays refuse a database whose schema is older than their own.
    """
    config = load_vendor_config(data_dir)

    async def go() -> tuple[str, str | None, str]:
        async with await Store.open(config.database, migrate=False) as store:
            before = await store.schema_revision()
            await store.upgrade()
            return store.url_for_display, before, await store.schema_revision() or "none"

    # The display form of the URL: a PostgreSQL password in it is never printed.
    database, before, after = run(go())
    if as_json:
        print_json({"database": database, "from": before, "to": after})
        return
    if before == after:
        out.print(f"Database schema already current ({after}).")
    else:
        out.print(f"Database schema upgraded from {before or 'none'} to {after}.")


@vendor.command()
@data_dir_option
@click.option(
    "--listen",
    default="127.0.0.1:8080",
    show_default=True,
    help="HOST:PORT for the HTTP API (port 0: any free port; the URL is printed).",
)
@log_format_option
@handle_errors
def serve(data_dir: Path, listen: str, log_format: str) -> None:
    """Run the vendor service: HTTP API and console for engineers and admins, one-click requests.

    One-click requests follow request_policy in vendor.toml: "hold" (the default) waits
    for an engineer to approve or deny each case (console, API, or `tether vendor cases
    approve ID`, seeing the machine key's fingerprint); "auto" issues a key at once to a
    machine its serial is already bound to (a request for an unbound serial still waits
    for an engineer). Stops cleanly on Ctrl-C or SIGTERM.
    """
    from tether.vendor_service.service import bind_listener

    address = parse_address(listen, what="listen address", any_port=True)
    config = load_vendor_config(data_dir)
    sock = bind_listener(address)  # a port in use: one clear error before anything starts
    log.setup(fmt=log_format)
    run(_serve(config, address, sock))


async def _serve(config: VendorConfig, listen: tuple[str, int], sock: socket.socket) -> None:
    from tether.vendor_service.service import VendorService

    store = await Store.open(config.database)
    try:
        service = VendorService(config, store, listen=listen, sock=sock)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, service.request_stop)
        tasks = TaskSet()
        serving = tasks.spawn(service.serve(), "vendor.service")
        ready = tasks.spawn(service.wait_ready(), "vendor.ready")
        await asyncio.wait({serving, ready}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done() and not serving.done():
            click.echo(
                f"Vendor service on {service.url} — OpenAPI at {service.url}/openapi.json "
                f"(one-click policy: {config.request_policy}; database {store.url_for_display})"
            )
            sys.stdout.flush()
        try:
            await serving
        finally:
            await tasks.aclose()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    finally:
        sock.close()
        await store.aclose()
    click.echo(f"Vendor service on {format_address(*listen)} stopped.")


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
        async with with_authority(data_dir) as authority:
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
