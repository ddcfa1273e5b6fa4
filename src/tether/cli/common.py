"""What every command shares: error reporting, exit codes, JSON output, async running."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape

from tether.audit import Verification
from tether.errors import TetherError

T = TypeVar("T")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_OK, EXIT_REFUSED, EXIT_BAD_INPUT = 0, 1, 2


def fail(exc: TetherError) -> None:
    err.print(f"[bold red]error:[/] {escape(str(exc))}")
    sys.exit(exc.exit_code)


def handle_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Print our own errors as one clear line (no traceback) with a meaningful exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except TetherError as exc:
            fail(exc)
            raise  # unreachable: fail() exits

    return wrapper


def print_verification(verification: Verification, name: str = "Audit log") -> None:
    """Say whether a hash chain is intact, or what was tampered with, one line per problem.

    The same words for every log (``tether access log --verify``, ``tether vendor audit``)
    so that a person or a script reads them the same way.
    """
    if verification.ok:
        out.print(
            f"[green]{escape(name)} intact[/]: {verification.entries} entries, "
            f"chain head {verification.head[:16]}…"
        )
    for problem in verification.problems:
        out.print(f"[red]TAMPERED[/]: {escape(problem.message)}")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def env_path(name: str, default: str) -> Path:
    return Path(os.environ.get(name, default))


json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")

#: ``--log-format`` of the long-running parts: the same events, as logfmt or JSON lines.
log_format_option = click.option(
    "--log-format",
    "log_format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    envvar="TETHER_LOG_FORMAT",
    help="Log lines on stderr: text (event key=value) or json (one object per line, "
    "for Loki / Elasticsearch). Env: TETHER_LOG_FORMAT.",
)


agent_config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="TETHER_AGENT_CONFIG",
    default="/etc/tether/agent.toml",
    show_default=True,
    help="The agent's configuration file. Env: TETHER_AGENT_CONFIG.",
)


#: The vendor data directory, for every ``tether vendor …`` command.
data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="TETHER_VENDOR_DIR",
    default="/var/lib/tether-vendor",
    show_default=True,
    help="The vendor data directory (keys, CA, database, vendor.toml). Env: TETHER_VENDOR_DIR.",
)
