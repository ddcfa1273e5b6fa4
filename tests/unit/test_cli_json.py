"""Every `tether` command a script could call answers in JSON with --json (SPEC)."""

from __future__ import annotations

from collections.abc import Iterator

import click

from tether.cli import main

#: The commands without --json, each with why a script has no use for it.
NO_JSON = {
    "tether demo": "runs the whole system until Ctrl-C and talks to a person",
    "tether agent serve": "a daemon: it logs, one event per line",
    "tether relay serve": "a daemon: it logs, one event per line",
    "tether vendor serve": "a daemon: it logs, one event per line",
    "tether access play": "replays a session on a terminal; --cast is its machine form",
}


def _commands(command: click.Command, name: str) -> Iterator[tuple[str, click.Command]]:
    """Every command under ``command`` that does something itself (groups that list too)."""
    ctx = click.Context(command, info_name=name)
    if not isinstance(command, click.Group) or command.invoke_without_command:
        yield name, command
    if isinstance(command, click.Group):
        for sub in command.list_commands(ctx):
            found = command.get_command(ctx, sub)
            assert found is not None, f"{name} {sub}"
            yield from _commands(found, f"{name} {sub}")


def _has_json(command: click.Command) -> bool:
    return any(isinstance(p, click.Option) and "--json" in p.opts for p in command.params)


def test_every_command_a_script_could_call_has_json() -> None:
    commands = dict(_commands(main, "tether"))
    missing = sorted(n for n, c in commands.items() if n not in NO_JSON and not _has_json(c))
    assert missing == []
    assert set(NO_JSON) <= set(commands)  # the exceptions are real commands
    assert {"tether vendor cases approve", "tether vendor cases deny"} <= set(commands)
