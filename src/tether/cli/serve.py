"""Long-running parts: ``tether relay serve`` and ``tether agent serve``."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import click

from tether import log
from tether.cli.common import (
    agent_config_option,
    handle_errors,
    json_option,
    log_format_option,
    print_json,
    run,
)
from tether.config import AgentConfig, RelayConfig
from tether.errors import Refused
from tether.tuning import (
    freeze_startup_heap,
    lazy_packet_logs,
    prompt_thread_handoffs,
    tune_allocator,
)


@click.group()
def relay() -> None:
    """The relay: the only internet-facing part, run by the vendor."""


@relay.command("serve")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="TETHER_RELAY_CONFIG",
    default="/etc/tether/relay.toml",
    show_default=True,
    help="The relay's configuration. Env: TETHER_RELAY_CONFIG.",
)
@click.option("--listen", help="Override the listen address (HOST:PORT; port 0 picks a free port).")
@click.option("-v", "--verbose", is_flag=True, help="Log debugging details.")
@log_format_option
@handle_errors
def relay_serve(config_path: Path, listen: str | None, verbose: bool, log_format: str) -> None:
    """Run a relay until interrupted (SIGTERM / Ctrl-C drop every tether cleanly)."""
    from dataclasses import replace

    from tether.keys import parse_address
    from tether.relay.server import Relay
    from tether.store import Store

    log.setup(logging.DEBUG if verbose else logging.INFO, fmt=log_format)
    tune_allocator()
    lazy_packet_logs()
    prompt_thread_handoffs()
    config = RelayConfig.load(config_path)
    if listen:
        config = replace(config, listen=parse_address(listen, what="listen address", any_port=True))

    async def go() -> None:
        store = await Store.open(config.database)
        server = Relay(config, store)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await server.start()
            freeze_startup_heap()
            if log_format == "text":  # JSON logs: stderr holds nothing but JSON lines
                click.echo(f"relay listening on {config.listen[0]}:{server.port}", err=True)
            stopping = asyncio.ensure_future(stop.wait())
            failing = asyncio.ensure_future(server.fatal.wait())
            await asyncio.wait({stopping, failing}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            failing.cancel()
        finally:
            await server.aclose()
            await store.aclose()
        if server.fatal.is_set():
            raise Refused(server.fatal_reason)

    run(go())


@click.group()
def agent() -> None:
    """The agent daemon on a customer's machine."""


@agent.command("serve")
@agent_config_option
@click.option("-v", "--verbose", is_flag=True, help="Log debugging details.")
@log_format_option
@handle_errors
def agent_serve(config_path: Path, verbose: bool, log_format: str) -> None:
    """Run the agent: holds the tether while access is open, closes it on time."""
    from tether.agent.daemon import AgentDaemon

    log.setup(logging.DEBUG if verbose else logging.INFO, fmt=log_format)
    tune_allocator()
    lazy_packet_logs()
    config = AgentConfig.load(config_path)
    run(AgentDaemon(config).serve())


def _set_web_password(config: AgentConfig) -> None:
    """Ask for the admin page's password (never on the command line) and store its hash."""
    import sys

    from tether.agent.web.auth import AdminPassword

    if sys.stdin.isatty():
        chosen: str = click.prompt(
            "Password for the admin web page", hide_input=True, confirmation_prompt=True, err=True
        )
    else:
        # Scripts pipe it in: one line on standard input.
        chosen = sys.stdin.readline().rstrip("\n")
    AdminPassword(config.web_password_path).set(chosen)
    click.echo(f"Admin page password set ({config.web_password_path}).", err=True)


@agent.command("install")
@agent_config_option
@click.option(
    "--web-password",
    is_flag=True,
    help="Also set the admin web page's password (asked without echo, or one line on stdin).",
)
@json_option
@handle_errors
def agent_install(config_path: Path, web_password: bool, as_json: bool) -> None:
    """Install the agent as a service and the every-minute expiry check (systemd or cron).

    The admin web page (``[web]`` in the configuration, http://127.0.0.1:8700/ by
    default) needs a password: give --web-password here, run ``tether agent
    web-password`` later, or set it on the first visit from the machine itself.
    """
    import sys

    from tether.agent.machine.service import install

    config = AgentConfig.load(config_path)
    if web_password:
        _set_web_password(config)
    report = install(config, [sys.executable, "-m", "tether"])
    if as_json:
        print_json({"scheduler": report.scheduler, "files": [str(f) for f in report.files]})
        return
    click.echo(f"Installed with {report.scheduler}: " + ", ".join(str(f) for f in report.files))
    click.echo("Support access now closes on time even if the agent daemon stops.")


@agent.command("web-password")
@agent_config_option
@json_option
@handle_errors
def agent_web_password(config_path: Path, as_json: bool) -> None:
    """Set or change the admin web page's password (asked without echo, or one line on stdin).

    Sessions already logged in stay until they end; restart the agent to end them now.
    """
    config = AgentConfig.load(config_path)
    _set_web_password(config)
    if as_json:
        print_json({"password_set": True, "password_file": str(config.web_password_path)})
