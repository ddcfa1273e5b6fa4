"""``tether access …``: the customer's commands; they work without the daemon or web page."""

from __future__ import annotations

import ipaddress
import sys
import time
from datetime import timedelta
from pathlib import Path

import click
from rich.markup import escape

from tether.agent.access import AccessManager, PasswordChoice
from tether.agent.control import ask_daemon
from tether.agent.machine.limits import FileTransfer, Limits
from tether.agent.state import AccessMode, AccessState, AccessStatus, CloseReason
from tether.agent.status import (
    TunnelState,
    describe_access,
    describe_agent,
    describe_closer,
    describe_tunnel,
)
from tether.cli.access_recordings import play, recordings
from tether.cli.common import agent_config_option, err, handle_errors, json_option, out, print_json
from tether.clock import SYSTEM_CLOCK
from tether.config import AgentConfig
from tether.durations import format_duration, parse_duration
from tether.errors import BadInput, NotReady


def _daemon(config: AgentConfig, cmd: str) -> dict[str, object] | None:
    return ask_daemon(config.run_dir / "agent.sock", cmd)


def _password_choice(prompt: bool) -> PasswordChoice:
    if not prompt:
        return PasswordChoice()
    if not sys.stdin.isatty():
        # Scripts pipe the password in; it never appears on a command line.
        return PasswordChoice(own=sys.stdin.readline().rstrip("\n"))
    chosen: str = click.prompt(
        "Password for the support account", hide_input=True, confirmation_prompt=True, err=True
    )
    return PasswordChoice(own=chosen)


def _sources(text: str) -> tuple[str, ...]:
    """``--from``'s addresses/networks, refused here in the flag's own name if one is bad."""
    sources = tuple(a.strip() for a in text.split(",") if a.strip())
    for source in sources:
        try:
            ipaddress.ip_network(source, strict=False)
        except ValueError:
            raise BadInput(
                f"--from: {source!r} is not an IP address or network "
                "(give e.g. --from 192.0.2.0/24,198.51.100.7)"
            ) from None
    return sources


@click.group()
def access() -> None:
    """Open, close and inspect support access on this machine."""


@access.command()
@agent_config_option
@click.option(
    "--key", "key_text", help="The tether key from the vendor ('-' reads it from standard input)."
)
@click.option(
    "--key-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read the key from a file.",
)
@click.option(
    "--request",
    "request_text",
    help="One-click: describe the problem; the vendor sends a key (21 days) once approved. "
    "'-' reads it from standard input.",
)
@click.option(
    "--direct",
    is_flag=True,
    help="No relay: let the vendor's engineers log in directly over the network.",
)
@click.option(
    "--from",
    "allow_from",
    help="With --direct: only from these addresses/networks, e.g. 192.0.2.0/24,198.51.100.7.",
)
@click.option(
    "--duration", help="Close sooner than the key's expiry / the 7-day direct default, e.g. 4h, 2d."
)
@click.option(
    "--password-prompt",
    is_flag=True,
    help="Choose the support account's password yourself (asked without echo, or one line on stdin).",
)
@click.option(
    "--no-expire",
    is_flag=True,
    help="With --direct: never close by itself (like the console script). Not recommended.",
)
@click.option(
    "--no-shell",
    is_flag=True,
    help="No interactive login and no commands: file transfer (sftp/scp) only.",
)
@click.option(
    "--files",
    type=click.Choice([f.value for f in FileTransfer]),
    default=FileTransfer.BOTH.value,
    show_default=True,
    help="File transfer with sftp/scp: both ways, off, download only or upload only.",
)
@click.option("--no-sudo", is_flag=True, help="No administrator rights (no sudo).")
@click.option("--max-session", help="End each session after this long, e.g. 30m, 1h.")
@click.option(
    "--consent",
    type=click.Choice(["none", "ask"]),
    default="none",
    show_default=True,
    help="ask: each login waits until you admit it (tether access admit / refuse).",
)
@click.option(
    "--consent-timeout",
    help="With --consent ask: refuse a login nobody admitted within this long (default 5m).",
)
@click.option(
    "--auto-admit-after",
    help="With --consent ask: admit a login nobody refused within this long, e.g. 2m.",
)
@json_option
@handle_errors
def enable(
    config_path: Path,
    key_text: str | None,
    key_file: Path | None,
    request_text: str | None,
    direct: bool,
    allow_from: str | None,
    duration: str | None,
    password_prompt: bool,
    no_expire: bool,
    no_shell: bool,
    files: str,
    no_sudo: bool,
    max_session: str | None,
    consent: str,
    consent_timeout: str | None,
    auto_admit_after: str | None,
    as_json: bool,
) -> None:
    """Open support access: with a tether key the vendor sent you, or --direct.

    The key is checked on this machine first (signature, serial, expiry); a bad key
    changes nothing. Spaces and line breaks from e-mail are ignored. Opening creates
    the support account and lets sshd trust the vendor's engineers for it alone;
    closing (disable, or expiry) removes all of it again.

    Unless --password-prompt is given, the account gets a random password that only
    the vendor can read (sealed to the vendor's key).

    --no-shell, --files, --no-sudo and --max-session limit what the grant allows; the
    machine enforces them (sshd, sudoers and the session recorder) and the engineer
    sees them before logging in.
    """
    ways = (key_text is not None) + (key_file is not None) + (request_text is not None) + direct
    if ways != 1:
        raise BadInput(
            "say how to open access, one way: --key KEY (or --key -, --key-file FILE), "
            '--request "problem description", or --direct'
        )
    if not direct and (allow_from or no_expire):
        raise BadInput(
            "--from and --no-expire apply only to --direct (a tether key always expires)"
        )
    if (consent_timeout or auto_admit_after) and consent != "ask":
        raise BadInput("--consent-timeout and --auto-admit-after apply only with --consent ask")
    if consent_timeout and auto_admit_after:
        raise BadInput("choose --consent-timeout (then refuse) or --auto-admit-after, not both")
    wait = consent_timeout or auto_admit_after
    limits = Limits(
        shell=not no_shell,
        files=FileTransfer(files),
        sudo=not no_sudo,
        max_session=parse_duration(max_session) if max_session else None,
        consent=consent == "ask",
        auto_admit=auto_admit_after is not None,
        **({"consent_timeout": parse_duration(wait)} if wait else {}),
    )
    config = AgentConfig.load(config_path)
    manager = AccessManager(config)
    span = parse_duration(duration) if duration else None
    if direct:
        sources = _sources(allow_from or "")
        if no_expire:
            err.print(
                "[bold red]WARNING: --no-expire: nothing will close support access by itself.[/]"
            )
            err.print("[bold red]It stays open until you run `tether access disable`.[/]")
        state = manager.enable_direct(
            by="cli",
            duration=span,
            allow_from=sources,
            no_expire=no_expire,
            password=_password_choice(password_prompt),
            limits=limits,
        )
        refused_ports: tuple[int, ...] = ()
    else:
        if key_file is not None:
            key_text = key_file.read_text(encoding="utf-8", errors="replace")
        elif key_text == "-":
            key_text = sys.stdin.read()
        elif request_text is not None:
            description = sys.stdin.read() if request_text == "-" else request_text
            key_text = _ask_vendor(config, description, tuple(limits.describe()))
        if key_text is None:
            raise BadInput("no key given")
        state, offer = manager.enable_with_key(
            key_text,
            by="cli",
            duration=span,
            password=_password_choice(password_prompt),
            limits=limits,
        )
        refused_ports = offer.refused_ports
    daemon = _daemon(config, "reconcile")
    tunnel: object = None
    if state.mode == AccessMode.TETHER and daemon is not None:
        # Open here is not open yet: only the relay knows whether the key is good
        # (not used by another machine, not revoked). Wait for its verdict.
        if not as_json:
            err.print(f"Waiting for relay {escape(state.relay or '?')}'s verdict on the key…")
        state, tunnel = _await_verdict(config, manager, state.grant_id)
    if as_json:
        print_json(
            {
                "access": state.to_json(with_key=False),
                "daemon_running": daemon is not None,
                "tunnel": tunnel,
            }
        )
    else:
        _print_enabled(config, state, daemon is not None, tunnel, refused_ports)
        if password_prompt and state.is_open and state.password_withdrawn:
            out.print(
                "The support account now has your password; the vendor's sealed copy of the "
                "generated one is withdrawn."
            )
    if not state.is_open:
        sys.exit(1)


#: How long `enable` waits for the relay's verdict beyond one connection attempt.
VERDICT_GRACE = 5.0
_VERDICT_FOR_NOW = (TunnelState.CONNECTED.value, TunnelState.RECONNECTING.value)


def _await_verdict(
    config: AgentConfig, manager: AccessManager, grant_id: str | None
) -> tuple[AccessState, object]:
    """Wait until the relay admitted or refused the key (or gave no answer in time).

    Returns the access state then (closed, with the relay's reason, if it refused)
    and the daemon's last tunnel status. A relay that cannot be reached gives no
    verdict: the first failed attempt ends the wait (the agent keeps trying).
    """
    deadline = time.monotonic() + config.tether.connect_timeout + VERDICT_GRACE
    while True:
        state = manager.state()
        reply = _daemon(config, "status")
        tunnel = reply.get("tunnel") if reply else None
        if not state.is_open or state.grant_id != grant_id or reply is None:
            return state, tunnel
        seen = tunnel.get("state") if isinstance(tunnel, dict) else None
        # Admitted, or not reached (the agent retries; no verdict is coming soon). A
        # refusal is waited out until the agent has closed access again.
        if seen in _VERDICT_FOR_NOW or time.monotonic() >= deadline:
            return state, tunnel
        time.sleep(0.1)


def _print_enabled(
    config: AgentConfig,
    state: AccessState,
    daemon_running: bool,
    tunnel: object,
    refused_ports: tuple[int, ...],
) -> None:
    now = SYSTEM_CLOCK.now()
    if not state.is_open:
        out.print(describe_access(state, config.serial, now))
        err.print(
            "[bold red]error:[/] the relay refused the key: "
            f"{escape(state.close_detail or 'no reason given')}; support access was closed again"
        )
        return
    out.print(describe_access(state, config.serial, now))
    out.print(f"Limits:   {escape(state.limits.summary())}")
    if refused_ports:
        err.print(
            f"warning: not opening port(s) {', '.join(map(str, refused_ports))}: not allowed on this machine"
        )
    if state.mode != AccessMode.TETHER:
        from tether.agent.machine.service import installed_closer

        timer = None if daemon_running else installed_closer(config)
        out.print(
            f"Agent:    {describe_agent(daemon_running, describe_closer(daemon_running, timer))}"
        )
        return
    if not daemon_running:
        err.print(
            "warning: the tether agent is not running, so nothing connects yet: start it "
            "(systemctl start tether-agent, or `tether agent serve`)"
        )
        return
    out.print(f"Tether:   {describe_tunnel(True, tunnel, now)}")
    if not (isinstance(tunnel, dict) and tunnel.get("state") == TunnelState.CONNECTED.value):
        err.print(
            "warning: the relay has not admitted the key yet; the agent keeps trying and "
            "`tether access status` shows progress"
        )


@access.command()
@agent_config_option
@json_option
@handle_errors
def disable(config_path: Path, as_json: bool) -> None:
    """Close support access now: sessions end, the account and sshd changes are removed."""
    config = AgentConfig.load(config_path)
    manager = AccessManager(config)
    before = manager.state()
    state = manager.close(CloseReason.CUSTOMER, by="cli")
    _daemon(config, "reconcile")
    if as_json:
        print_json(
            {
                "access": state.to_json(with_key=False),
                "was_open": before.status != AccessStatus.CLOSED,
            }
        )
    elif before.status != AccessStatus.CLOSED:
        out.print("Support access closed.")
        for note in state.close_notes:
            err.print(f"[bold yellow]warning:[/] {escape(note)}")
    else:
        out.print("Support access was already closed.")


@access.command()
@agent_config_option
@json_option
@handle_errors
def expire(config_path: Path, as_json: bool) -> None:
    """Close access if its time is up (run every minute by a systemd timer or cron)."""
    config = AgentConfig.load(config_path)
    manager = AccessManager(config)
    repaired = manager.recover()
    if as_json:
        print_json({"closed": repaired is not None, "what": repaired})
    elif repaired:
        out.print(repaired.capitalize() + ".")
    _daemon(config, "reconcile")


@access.command()
@agent_config_option
@json_option
@handle_errors
def reset(config_path: Path, as_json: bool) -> None:
    """Reconnect the tether now (after a network change, or to skip a backoff wait)."""
    config = AgentConfig.load(config_path)
    state = AccessManager(config).state()
    if not state.is_open or state.mode != AccessMode.TETHER:
        raise NotReady("no tether is open; there is nothing to reconnect")
    if _daemon(config, "reset") is None:
        raise NotReady("the tether agent is not running (start it: systemctl start tether-agent)")
    if as_json:
        print_json({"reconnecting": True, "relay": state.relay})
        return
    out.print("Reconnecting the tether now.")


@access.command()
@agent_config_option
@json_option
@handle_errors
def status(config_path: Path, as_json: bool) -> None:
    """Show whether support access is open, until when, and the tether's state."""
    config = AgentConfig.load(config_path)
    state = AccessManager(config).state()
    reply = _daemon(config, "status")
    tunnel = reply.get("tunnel") if reply else None
    from tether.agent.layers import armed_layers
    from tether.agent.machine.service import installed_closer

    running = reply is not None
    found = armed_layers(config, state, daemon_running=running) if state.is_open else []
    if as_json:
        from tether.agent.metrics import read_facts

        connected = isinstance(tunnel, dict) and tunnel.get("state") == TunnelState.CONNECTED.value
        facts = read_facts(config, state, connected, SYSTEM_CLOCK.now())
        print_json(
            {
                "serial": config.serial,
                "access": state.to_json(with_key=False),
                "daemon_running": running,
                "tunnel": tunnel,
                "layers": [layer.to_json() for layer in found],
                # The numbers node_exporter's textfile carries ([metrics] textfile).
                "facts": facts.to_json(),
            }
        )
        return
    closer = describe_closer(running, None if running else installed_closer(config))
    out.print(describe_access(state, config.serial, SYSTEM_CLOCK.now(), closer))
    if state.status == AccessStatus.CLOSED:
        for note in state.close_notes:
            out.print(f"Note:     {escape(note)}")
    if state.is_open:
        out.print(f"Limits:   {escape(state.limits.summary())}")
        if state.limits.consent:
            from tether.agent.consent import waiting_logins

            for info in waiting_logins(config):
                out.print(
                    f"Waiting:  {info.id} ({escape(info.engineer)}, {info.kind}): "
                    "tether access admit / refuse"
                )
    if state.is_open and state.mode == AccessMode.TETHER:
        out.print(f"Tether:   {describe_tunnel(running, tunnel, SYSTEM_CLOCK.now())}")
    elif state.is_open:
        out.print(f"Agent:    {describe_agent(running, closer)}")
    for i, layer in enumerate(found):
        head = "Closes on time by:" if i == 0 else ""
        mark = "armed    " if layer.armed else "NOT armed"
        out.print(f"{head:<19}{mark} {layer.name}: {escape(layer.detail)}")


def _ask_vendor(config: AgentConfig, description: str, limits: tuple[str, ...] = ()) -> str:
    """One-click: wait for the vendor's key, showing elapsed time; Ctrl-C cancels."""
    import asyncio
    import time

    from tether.agent.identity import load_or_create_machine_key
    from tether.agent.request import request_key
    from tether.protocol import CaseUpdate

    machine_key = load_or_create_machine_key(config.machine_key_path)
    started = time.monotonic()
    waiting: list[str] = ["Contacting the vendor"]

    with err.status(waiting[0] + "…") as spinner:

        def show(update: CaseUpdate) -> None:
            if update.status == "pending":
                waiting[0] = f"Case {update.case_id}: waiting for the vendor to approve"

        async def wait() -> str:
            task = asyncio.ensure_future(
                request_key(config, machine_key, description, on_update=show, limits=limits)
            )
            while not task.done():
                await asyncio.wait({task}, timeout=1)
                elapsed = format_duration(timedelta(seconds=time.monotonic() - started))
                spinner.update(f"{waiting[0]} — {elapsed} (Ctrl-C cancels)")
            return task.result()

        try:
            key = asyncio.run(wait())
        except KeyboardInterrupt:
            err.print("Cancelled: the support request was withdrawn.")
            raise SystemExit(1) from None
    elapsed = format_duration(timedelta(seconds=time.monotonic() - started))
    err.print(f"The vendor issued a key after {elapsed}.")
    return key


# `check` and `log` live in their own module to keep this one small.
from tether.cli.access_consent import admit, refuse  # noqa: E402
from tether.cli.access_info import check, log_command  # noqa: E402
from tether.cli.access_watch import watch  # noqa: E402

access.add_command(check)
access.add_command(log_command)
access.add_command(recordings)
access.add_command(play)
access.add_command(admit)
access.add_command(refuse)
access.add_command(watch)
