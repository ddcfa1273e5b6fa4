"""The ``tether`` command: one sub-command group per part, each loaded only when used.

Loading lazily keeps ``tether access disable`` quick to start: it must end live
sessions within a second of the admin pressing Enter.
"""

from __future__ import annotations

import importlib

import click

from tether import __version__, log

#: sub-command → "module:attribute"
COMMANDS = {
    "access": "tether.cli.access:access",
    "agent": "tether.cli.serve:agent",
    "demo": "tether.cli.demo:demo",
    "login": "tether.cli.engineer:login",
    "ls": "tether.cli.engineer:ls",
    "relay": "tether.cli.serve:relay",
    "ssh-config": "tether.cli.engineer:ssh_config",
    "vendor": "tether.cli.vendor:vendor",
    "web": "tether.cli.engineer:web",
}


class LazyGroup(click.Group):
    """A group whose sub-commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attribute = target.split(":")
        command = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="tether")
def main() -> None:
    """Tether: temporary, customer-controlled support access over SSH.

    \b
    Customer:  tether access enable --key KEY · status · disable · reset
    Vendor:    tether vendor init · issue-key · revoke-key · engineer add · sign
    Engineer:  tether login --vendor URL · ssh-config --install · web SERIAL · ls
    Services:  tether relay serve · tether agent serve
    Try it:    tether demo
    """
    # Structured lines go to the log, not before what a person reads; the services
    # (`agent serve`, `relay serve`, `vendor serve`) send theirs to stderr themselves.
    log.setup_command()
