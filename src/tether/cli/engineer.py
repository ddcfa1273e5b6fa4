"""The engineer's commands: ``tether login``, ``ssh-config``, ``web SERIAL``, ``ls``.

State lives in ``~/.config/tether`` (``TETHER_ENGINEER_DIR`` overrides it); see
:mod:`tether.engineer.state`. Every command but ``login`` first checks that a login
exists and that its certificate has not expired (nor expires within a minute), and
says how to log in again otherwise (exit 1).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from tether.certs import DEFAULT_CERT_TTL
from tether.cli.common import err, handle_errors, json_option, out, print_json, run
from tether.clock import SYSTEM_CLOCK
from tether.durations import format_duration, parse_duration
from tether.engineer.client import SessionExpired, VendorUnreachable, check_vendor_url
from tether.engineer.login import Prompts, check_ttl, default_name, previous_settings
from tether.engineer.login import login as do_login
from tether.engineer.sshconfig import (
    config_input,
    include_argument,
    install_include,
    render_ssh_config,
    unique_serials,
)
from tether.engineer.state import SECRET_MODE, EngineerState, default_state_dir, format_utc
from tether.engineer.tethers import fetch_tethers, tether_json, tether_row
from tether.engineer.web import open_web
from tether.errors import BadInput
from tether.keys import check_serial


def _state() -> EngineerState:
    """The state directory (``TETHER_ENGINEER_DIR`` or ``~/.config/tether``)."""
    return EngineerState(default_state_dir())


def _read_secret(prompt: str, what: str) -> str:
    """Ask on the terminal without echo, or read one line when stdin is not a terminal."""
    if sys.stdin.isatty():
        return str(click.prompt(prompt, hide_input=True, err=True))
    line = sys.stdin.readline()
    if not line:
        raise BadInput(f"no {what} on standard input (give one line per secret)")
    return line.rstrip("\r\n")


def _ask_password(prompt: str) -> str:
    """The password: hidden prompt on a terminal, else one line of stdin."""
    return _read_secret(prompt, "password")


def _ask_totp(prompt: str) -> str:
    """The TOTP code: prompt on a terminal, else the next line of stdin."""
    if sys.stdin.isatty():
        return str(click.prompt(prompt, err=True))
    return _read_secret(prompt, "TOTP code")


def _ask_passphrase(path: Path) -> str:
    """The key's passphrase, hidden."""
    return _read_secret(f"Passphrase for {path}", "passphrase")


# --- login ------------------------------------------------------------------------


@click.command()
@click.option(
    "--vendor",
    "vendor_url",
    metavar="URL",
    help="The vendor service, e.g. https://tether.example.com (default: the last one used).",
)
@click.option(
    "--name", help="Your engineer name (default: the last one used, else your user name)."
)
@click.option(
    "--key",
    "key_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Your SSH private key (default: one generated for you in the state directory).",
)
@click.option(
    "--ttl",
    default=f"{int(DEFAULT_CERT_TTL.total_seconds() // 3600)}h",
    show_default=True,
    help="How long the certificate is valid, at most 7d.",
)
@json_option
@handle_errors
def login(
    vendor_url: str | None, name: str | None, key_path: Path | None, ttl: str, as_json: bool
) -> None:
    """Log in to the vendor service and get a short-lived SSH certificate.

    Asks for your password (and a TOTP code if your account has one); without a
    terminal, reads them as lines from standard input. Stores the certificate, the
    relay's host key and your settings; never prints the token.

    \b
    Then: tether ssh-config --install   (once), and   ssh SERIAL
    """
    lifetime = parse_duration(ttl)
    check_ttl(lifetime)
    state = _state()
    previous = previous_settings(state)
    vendor = vendor_url or (previous.vendor if previous else None)
    if not vendor:
        raise BadInput("give the vendor service's URL: tether login --vendor https://…")
    url, warning = check_vendor_url(vendor)
    if warning:
        err.print(f"[bold yellow]warning:[/] {escape(warning)}")
    same_vendor = previous if previous is not None and previous.vendor == url else None
    engineer = name or default_name(same_vendor)
    if key_path is None and previous is not None and previous.key != state.default_key_path:
        key_path = previous.key
    result = run(
        do_login(
            state,
            vendor=url,
            name=engineer,
            key_path=key_path,
            ttl=lifetime,
            prompts=Prompts(password=_ask_password, totp=_ask_totp),
            clock=SYSTEM_CLOCK,
        )
    )
    settings, cert = result.settings, result.certificate
    if as_json:
        print_json(
            {
                "engineer": settings.engineer,
                "vendor": settings.vendor,
                "relay": settings.relay,
                "support_account": settings.support_account,
                "key": str(settings.key),
                "certificate": str(settings.certificate),
                "key_generated": result.key.generated,
                "valid_after": cert.valid_after.isoformat(),
                "valid_before": cert.valid_before.isoformat(),
                "principals": list(cert.principals),
            }
        )
        return
    if result.key.generated:
        err.print(f"Generated a new SSH key for you: {result.key.path}")
    out.print(escape(result.summary()))
    if not state.ssh_config_path.exists():
        out.print("Next: `tether ssh-config --install` (once), then `ssh SERIAL`.")


# --- ssh-config -------------------------------------------------------------------


@click.command("ssh-config")
@click.option(
    "--write", is_flag=True, help="Write ~/.config/tether/ssh_config instead of printing it."
)
@click.option(
    "--install",
    is_flag=True,
    help="Write it and add `Include` for it to ~/.ssh/config (once, after a backup).",
)
@click.option(
    "--serial",
    "serials",
    multiple=True,
    metavar="SERIAL",
    help="Add a machine besides the live tethers (repeatable).",
)
@json_option
@handle_errors
def ssh_config(write: bool, install: bool, serials: tuple[str, ...], as_json: bool) -> None:
    """An OpenSSH configuration so that `ssh SERIAL`, scp and sftp go through the relay.

    One `Host tether-relay` block (your certificate, the relay's pinned host key)
    and one block per machine: the live tethers from the vendor service plus any
    --serial. Stock OpenSSH reads it; nothing is wrapped. With --json: the machines,
    the configuration's text and what was written where.
    """
    state = _state()
    session = state.session(SYSTEM_CLOCK)
    for serial in serials:
        check_serial(serial)
    warning: str | None = None
    try:
        live = [t.serial for t in run(fetch_tethers(session))]
    except (VendorUnreachable, SessionExpired) as exc:
        if not serials:
            raise
        warning = str(exc)
        err.print(
            f"[bold yellow]warning:[/] {escape(str(exc))}\n"
            "Writing the configuration for the --serial machines only."
        )
        live = []
    machines = unique_serials([*live, *serials])
    text = render_ssh_config(config_input(session), machines)
    report: dict[str, object] = {"machines": machines, "config": text, "path": None}
    if warning is not None:
        report["warning"] = warning
    if not (write or install):
        if as_json:
            print_json(report)
        else:
            click.echo(text, nl=False)
        return
    path = state.ssh_config_path
    state.write(path, text.encode(), SECRET_MODE)
    report["path"] = str(path)
    if install:
        result = install_include(path, home=Path.home(), now=SYSTEM_CLOCK.now())
        report["include"] = {
            "config": str(result.config),
            "line": result.line,
            "changed": result.changed,
            "backup": str(result.backup) if result.backup else None,
        }
    if as_json:
        print_json(report)
        return
    listed = ", ".join(machines) if machines else "none yet; run this again when one is tethered"
    out.print(f"Wrote {escape(str(path))} (machines: {escape(listed)})")
    if install:
        if not result.changed:
            out.print(f"{result.config} already includes it.")
        else:
            backup = f" (backup: {result.backup})" if result.backup else ""
            out.print(f"Added `{escape(result.line)}` to {result.config}{escape(backup)}")
    else:
        out.print(
            "Add this line at the top of ~/.ssh/config (or run `tether ssh-config --install`):\n"
            f"  Include {escape(include_argument(path, Path.home()))}"
        )
    if machines:
        out.print(f"Then: ssh {escape(machines[0])}")


# --- web --------------------------------------------------------------------------


@click.command()
@click.argument("serial")
@click.option(
    "--port",
    default=443,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="The machine's port (its web UI).",
)
@click.option(
    "--local-port",
    default=0,
    type=click.IntRange(0, 65535),
    help="The local port on 127.0.0.1 (default: any free one).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one line of JSON (url, scheme, local_port, ...) once the port is open.",
)
@handle_errors
def web(serial: str, port: int, local_port: int, as_json: bool) -> None:
    """Open a local port to a machine's web UI through the relay and print its URL.

    The URL says https:// or http:// by what the machine's port serves. Runs until
    Ctrl-C, or until your certificate expires.
    """
    state = _state()
    session = state.session(SYSTEM_CLOCK)
    check_serial(serial)
    settings = session.settings

    async def go() -> None:
        """Forward until Ctrl-C, the certificate's end or the relay dropping us."""
        async with open_web(
            session,
            serial,
            port,
            local_port=local_port,
            ask_passphrase=_ask_passphrase if sys.stdin.isatty() else None,
        ) as forward:
            until = session.certificate.valid_before
            if as_json:
                # One line, flushed: a script reads it while the forwarding runs.
                line = {
                    "url": forward.url,
                    "scheme": forward.scheme,
                    "local_port": forward.local_port,
                    "serial": serial,
                    "port": port,
                    "relay": settings.relay,
                    "until": until.isoformat(),
                }
                click.echo(json.dumps(line))
                sys.stdout.flush()
                await forward.run_until(until, SYSTEM_CLOCK, vendor=settings.vendor)
                return
            out.print(forward.url)
            left = format_duration(session.certificate.valid_before - SYSTEM_CLOCK.now())
            out.print(
                f"Forwarding to {escape(serial)}:{port} through the relay at {settings.relay} "
                f"(until {format_utc(session.certificate.valid_before)}, in {left}). "
                "Ctrl-C to close."
            )
            await forward.run_until(
                session.certificate.valid_before, SYSTEM_CLOCK, vendor=settings.vendor
            )

    try:
        run(go())
    except KeyboardInterrupt:
        err.print("Closed.")


# --- ls ---------------------------------------------------------------------------


@click.command("ls")
@json_option
@handle_errors
def ls(as_json: bool) -> None:
    """List live tethers: serial, since, time left, ports, engineers connected, description."""
    state = _state()
    session = state.session(SYSTEM_CLOCK)
    tethers = run(fetch_tethers(session))
    now = SYSTEM_CLOCK.now()
    if as_json:
        print_json([tether_json(t, now) for t in tethers])
        return
    if not tethers:
        out.print("No live tethers.")
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("SERIAL", "SINCE", "EXPIRES IN", "PORTS", "ENGINEERS", "DESCRIPTION"):
        table.add_column(column)
    for tether in tethers:
        row = tether_row(tether, now)
        table.add_row(
            *(
                escape(x)
                for x in (
                    row.serial,
                    row.since,
                    row.expires_in,
                    row.ports,
                    row.engineers,
                    row.description,
                )
            )
        )
    out.print(table)
