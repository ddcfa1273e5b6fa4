"""``tether demo``: the whole system on this machine."""

from __future__ import annotations

import asyncio
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import click

from tether.cli.common import handle_errors


@click.command()
@click.option(
    "--dir",
    "workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the demo's files here (default: a temporary directory removed at exit).",
)
@click.option(
    "--relays",
    type=click.IntRange(1, 5),
    default=1,
    show_default=True,
    help="Relays to run. More than one: a fleet on PostgreSQL behind HAProxy "
    "(both from the installed Debian packages).",
)
@click.option("-v", "--verbose", is_flag=True, help="Show every part's log lines.")
@handle_errors
def demo(workdir: Path | None, relays: int, verbose: bool) -> None:
    """Run vendor, relay, a sandboxed customer machine (real sshd + agent) and an engineer.

    Needs root (the customer machine is a Linux namespace sandbox) and OpenSSH
    (scripts/demo installs it). Prints the ssh commands to try, and the addresses and
    passwords of the customer's admin page and the vendor console; Ctrl-C ends it all.

    With --relays 3 the same commands work against a fleet: PostgreSQL, three relays
    (each its own id, linked relay to relay) and HAProxy in front; the default stays
    one relay on SQLite.
    """
    from tether.demo import run_demo
    from tether.sandbox import SandboxUnavailable, sandbox_unavailable_reason

    reason = sandbox_unavailable_reason()
    if reason is not None:
        raise SandboxUnavailable(f"the demo needs a sandboxed machine, but {reason}")
    # The demo's progress is its output (stdout); only trouble goes to stderr, so a
    # healthy demo prints nothing there.
    form = logging.Formatter("%(name)s: %(message)s" if verbose else "  %(message)s")
    progress = logging.StreamHandler(sys.stdout)
    progress.setFormatter(form)
    progress.addFilter(lambda record: record.levelno < logging.WARNING)
    trouble = logging.StreamHandler(sys.stderr)
    trouble.setFormatter(form)
    trouble.setLevel(logging.WARNING)
    root = logging.getLogger("tether")
    root.handlers[:] = [progress, trouble]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("tether.demo").setLevel(logging.INFO)
    root.propagate = False
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    temporary = workdir is None
    path = Path(tempfile.mkdtemp(prefix="tether-demo-")) if workdir is None else workdir
    path.mkdir(parents=True, exist_ok=True)
    try:
        asyncio.run(run_demo(path, relays))
    except KeyboardInterrupt:
        pass
    finally:
        if temporary:
            shutil.rmtree(path, ignore_errors=True)
    click.echo("Demo stopped; everything it started is gone.")
