"""``tether access recordings`` and ``tether access play ID``: recorded support sessions."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click
from rich.markup import escape

from tether.agent.recording.catalog import RecordingNotFound, list_recordings, read_cast
from tether.agent.recording.terminal_safety import TerminalFilter, discard_typeahead, safe_output
from tether.cli.common import agent_config_option, handle_errors, json_option, out, print_json
from tether.config import AgentConfig
from tether.durations import format_duration
from tether.errors import BadInput, NotReady


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)  # pragma: no cover


@click.command("recordings")
@agent_config_option
@json_option
@handle_errors
def recordings(config_path: Path, as_json: bool) -> None:
    """List recorded support sessions, oldest first.

    \b
    Each session of the support account is recorded (output only, never what was
    typed) with the engineer's name from their certificate. Play one with
    `tether access play ID`.
    """
    config = AgentConfig.load(config_path)
    try:
        items = list_recordings(config.recordings_dir)
    except PermissionError:
        raise NotReady(f"cannot read {config.recordings_dir}: run as root") from None
    if as_json:
        print_json([r.to_json() for r in items])
        return
    if not items:
        out.print(f"No recordings in {escape(str(config.recordings_dir))}.")
        return
    for r in items:
        duration = "live" if r.live else "?"
        if r.ended is not None:
            duration = format_duration(r.ended - r.started)
        if r.cut_off:
            duration += " (cut off)"
        what = r.command if r.command is not None else "(login shell)"
        status = "" if r.exit_status is None else f" exit {r.exit_status}"
        out.print(
            f"{r.id}  {r.started:%Y-%m-%d %H:%M:%S}  {escape(r.engineer):<12} {duration:>7}"
            f"  {_size(r.size):>9}  {r.kind:<7} {escape(what)}{status}"
        )
        for t in r.transfers:
            size = f" ({t.get('bytes')} bytes)" if "bytes" in t else ""
            target = f" -> {t.get('target')}" if t.get("target") else ""
            out.print(f"    {t.get('op')} {escape(str(t.get('path')))}{size}{escape(target)}")


def playback(cast: str, *, speed: float, max_idle: float | None) -> Iterator[tuple[float, str]]:
    """Yield ``(seconds to wait, output text)`` for each output event of an asciicast v2 text.

    Waits are divided by ``speed`` after being capped at ``max_idle`` (if given).
    """
    previous = 0.0
    for line in cast.splitlines()[1:]:
        try:
            at, kind, data = json.loads(line)
        except (ValueError, TypeError):
            continue
        if kind != "o" or not isinstance(data, str) or not isinstance(at, (int, float)):
            continue
        wait = max(0.0, float(at) - previous)
        previous = float(at)
        if max_idle is not None:
            wait = min(wait, max_idle)
        yield wait / speed, data


@click.command("play")
@agent_config_option
@click.argument("recording_id", metavar="ID")
@click.option(
    "--speed", type=float, default=1.0, show_default=True, help="Play faster (2) or slower (0.5)."
)
@click.option(
    "--max-idle",
    type=float,
    default=2.0,
    show_default=True,
    help="Shorten pauses longer than this many seconds (0: keep every pause).",
)
@click.option("--raw", is_flag=True, help="Print the recorded output at once, without timing.")
@click.option(
    "--cast", "as_cast", is_flag=True, help="Print the asciicast v2 file (for asciinema)."
)
@handle_errors
def play(
    config_path: Path, recording_id: str, speed: float, max_idle: float, raw: bool, as_cast: bool
) -> None:
    """Play a recorded session in this terminal, with its original timing.

    \b
    Examples:
      tether access play 20261125T031502Z-3f9c2a1b
      tether access play ID --speed 4 --max-idle 1
      tether access play ID --raw | less -R
    """
    if speed <= 0 or speed > 1000:
        raise BadInput("--speed must be above 0 and at most 1000")
    config = AgentConfig.load(config_path)
    try:
        cast = read_cast(config.recordings_dir, recording_id)
    except RecordingNotFound as exc:
        raise BadInput(f"{exc} (list them with `tether access recordings`)") from None
    except PermissionError:
        raise NotReady(f"cannot read {config.recordings_dir}: run as root") from None
    if as_cast:
        # Valid asciicast JSON holds no escape sequence; a forged file shown on a
        # terminal must not drive it either.
        sys.stdout.write(safe_output(cast) if sys.stdout.isatty() else cast)
        return
    # The engineer wrote the output: filtered so that it cannot make this terminal
    # answer into root's shell or set its clipboard (see terminal_safety).
    screen = TerminalFilter()
    try:
        for wait, text in playback(cast, speed=speed, max_idle=max_idle or None):
            if wait and not raw:
                sys.stdout.flush()
                time.sleep(wait)
            sys.stdout.write(screen.feed(text))
        sys.stdout.flush()
    finally:
        discard_typeahead()
