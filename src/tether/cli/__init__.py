"""The ``tether`` command: one sub-command group per part."""

from __future__ import annotations

import click

from tether import __version__
from tether.cli.access import access
from tether.cli.serve import agent, relay
from tether.cli.vendor import vendor


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="tether")
def main() -> None:
    """Tether: temporary, customer-controlled support access over SSH.

    \b
    Customer:  tether access enable --key KEY · status · disable · reset
    Vendor:    tether vendor init · issue-key · revoke-key · engineer add · sign
    Services:  tether relay serve · tether agent serve
    Try it:    tether demo
    """


main.add_command(access)
main.add_command(agent)
main.add_command(relay)
main.add_command(vendor)
