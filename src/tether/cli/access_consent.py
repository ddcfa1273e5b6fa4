"""``tether access admit / refuse``: the customer's decision on a waiting support login."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from tether.agent.consent import decide
from tether.cli.common import agent_config_option, handle_errors, json_option, out, print_json
from tether.config import AgentConfig


@click.command()
@agent_config_option
@click.argument("session", required=False)
@json_option
@handle_errors
def admit(config_path: Path, session: str | None, as_json: bool) -> None:
    """Let a waiting support login in (SESSION: its id; needed only if several wait)."""
    info, waited = decide(AgentConfig.load(config_path), session, admit=True, by="cli")
    if as_json:
        print_json(
            {"session": info.id, "engineer": info.engineer, "admitted": True, "waited": waited}
        )
        return
    out.print(f"Admitted {escape(info.engineer)}'s login {info.id} (waited {waited:.0f} s).")


@click.command()
@agent_config_option
@click.argument("session", required=False)
@click.option("--reason", default="", help="Told to the engineer, kept in the audit log.")
@json_option
@handle_errors
def refuse(config_path: Path, session: str | None, reason: str, as_json: bool) -> None:
    """Turn a waiting support login away (SESSION: its id; needed only if several wait)."""
    info, waited = decide(
        AgentConfig.load(config_path), session, admit=False, by="cli", reason=reason
    )
    if as_json:
        print_json(
            {"session": info.id, "engineer": info.engineer, "admitted": False, "waited": waited}
        )
        return
    out.print(f"Refused {escape(info.engineer)}'s login {info.id} (waited {waited:.0f} s).")
