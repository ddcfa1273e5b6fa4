"""``tether access …``: the customer's commands; they work without the daemon or web page."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.markup import escape

from tether.agent.access import AccessManager
from tether.agent.control import ask_daemon
from tether.agent.state import AccessState
from tether.agent.status import TunnelStatus
from tether.cli.common import err, handle_errors, json_option, out, print_json
from tether.clock import SYSTEM_CLOCK
from tether.config import AgentConfig
from tether.durations import format_duration
from tether.errors import BadInput, NotReady

agent_config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="TETHER_AGENT_CONFIG",
    default="/etc/tether/agent.toml",
    show_default=True,
    help="The agent's configuration file. Env: TETHER_AGENT_CONFIG.",
)


def _daemon(config: AgentConfig, cmd: str) -> dict[str, object] | None:
    return ask_daemon(config.run_dir / "agent.sock", cmd)


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
@json_option
@handle_errors
def enable(config_path: Path, key_text: str | None, key_file: Path | None, as_json: bool) -> None:
    """Open support access with a tether key the vendor sent you.

    The key is checked on this machine first (signature, serial, expiry); a bad key
    changes nothing. Spaces and line breaks from e-mail are ignored.
    """
    if (key_text is None) == (key_file is None):
        raise BadInput("give the key with --key KEY, --key - (standard input) or --key-file FILE")
    if key_file is not None:
        key_text = key_file.read_text(encoding="utf-8", errors="replace")
    elif key_text == "-":
        key_text = sys.stdin.read()
    assert key_text is not None
    config = AgentConfig.load(config_path)
    manager = AccessManager(config)
    state, offer = manager.enable_with_key(key_text, by="cli")
    daemon = _daemon(config, "reconcile")
    if as_json:
        print_json({"access": state.to_json(with_key=False), "daemon_running": daemon is not None})
        return
    now = SYSTEM_CLOCK.now()
    assert state.expires_at is not None
    out.print(
        f"Support access open until {state.expires_at:%Y-%m-%d %H:%M} UTC "
        f"({format_duration(state.expires_at - now)} left), ports {', '.join(map(str, offer.ports))}."
    )
    if offer.refused_ports:
        err.print(
            f"warning: not opening port(s) {', '.join(map(str, offer.refused_ports))}: not allowed on this machine"
        )
    if daemon is None:
        err.print(
            "warning: the tether agent is not running, so nothing connects yet: start it "
            "(systemctl start tether-agent, or `tether agent serve`)"
        )
    else:
        out.print(
            f"Connecting to relay {escape(offer.claims.relay)}; `tether access status` shows progress."
        )


@access.command()
@agent_config_option
@json_option
@handle_errors
def disable(config_path: Path, as_json: bool) -> None:
    """Close support access now: the tether and every session through it end."""
    config = AgentConfig.load(config_path)
    from tether.agent.state import CloseReason

    before = AccessManager(config).state()
    state = AccessManager(config).close(CloseReason.CUSTOMER, by="cli")
    _daemon(config, "reconcile")
    if as_json:
        print_json({"access": state.to_json(with_key=False), "was_open": before.is_open})
    elif before.is_open:
        out.print("Support access closed.")
    else:
        out.print("Support access was already closed.")


@access.command()
@agent_config_option
@handle_errors
def reset(config_path: Path) -> None:
    """Reconnect the tether now (after a network change, or to skip a backoff wait)."""
    config = AgentConfig.load(config_path)
    if not AccessManager(config).state().is_open:
        raise NotReady("support access is closed; there is no tether to reconnect")
    if _daemon(config, "reset") is None:
        raise NotReady("the tether agent is not running (start it: systemctl start tether-agent)")
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
    if as_json:
        print_json(
            {
                "serial": config.serial,
                "access": state.to_json(with_key=False),
                "daemon_running": reply is not None,
                "tunnel": tunnel,
            }
        )
        return
    out.print(describe_access(state, config.serial))
    if state.is_open:
        out.print(f"Tether:   {describe_tunnel(reply is not None, tunnel)}")


def describe_access(state: AccessState, serial: str) -> str:
    now = SYSTEM_CLOCK.now()
    if state.is_open and state.expires_at is not None and state.expires_at <= now:
        return (
            f"Support access on {serial}: past its expiry ({state.expires_at:%Y-%m-%d %H:%M} UTC); "
            "the agent closes it as soon as it runs"
        )
    if state.is_open and state.expires_at is not None:
        return (
            f"Support access on {serial}: open until {state.expires_at:%Y-%m-%d %H:%M} UTC "
            f"({format_duration(state.expires_at - now)} left), ports {', '.join(map(str, state.ports))}"
        )
    line = f"Support access on {serial}: closed"
    if state.closed_at is not None and state.close_reason is not None:
        line += f" ({state.close_reason.value} at {state.closed_at:%Y-%m-%d %H:%M} UTC"
        line += f": {state.close_detail})" if state.close_detail else ")"
    return line


def describe_tunnel(daemon_running: bool, tunnel: object) -> str:
    if not daemon_running:
        return "agent not running (start it: systemctl start tether-agent, or `tether agent serve`)"
    if not isinstance(tunnel, dict):
        return "not connected"
    try:
        status = TunnelStatus.from_json(tunnel)
    except (ValueError, KeyError, TypeError):
        return "agent sent an unreadable status"
    return status.describe(SYSTEM_CLOCK.now())
