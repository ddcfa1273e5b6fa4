"""``tether access watch [SESSION]``: follow a live support session in this terminal."""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click
from rich.markup import escape

from tether.agent.recording.catalog import cast_path, is_live
from tether.agent.recording.follow import (
    End,
    Full,
    Output,
    Start,
    Transfers,
    connect,
    follow,
    pick_live,
)
from tether.agent.recording.terminal_safety import (
    TerminalFilter,
    discard_typeahead,
    printable,
)
from tether.cli.common import agent_config_option, err, handle_errors, json_option
from tether.config import AgentConfig
from tether.errors import NotReady

#: How long a watcher that fell behind (and was let go by the recorder) tries to reconnect,
#: and how long one turned away (no room, or the stream closed before it started) retries.
RECONNECT_FOR = 3.0
#: Pause before trying again after a stream that ended before it started.
RETRY_PAUSE = 0.5


@click.command("watch")
@agent_config_option
@click.argument("session", required=False)
@json_option
@handle_errors
def watch(config_path: Path, session: str | None, as_json: bool) -> None:
    """Follow a running support session's output here, read-only, as it happens.

    \b
    SESSION is its id (tether access recordings lists them); needed only when
    several sessions run. What you type here never reaches the session. Ctrl-C
    stops watching; the session goes on (end it on the page, or close access).
    File transfers in progress are shown with their name and size. With --json, the
    stream itself: one JSON value per line, as the recorder sends it (the screen so
    far, then [seconds, "o", output] / [seconds, "r", "COLSxROWS"], {"transfer": [...]},
    and {"end": {"status": N}}).
    """
    config = AgentConfig.load(config_path)
    info = pick_live(config.recordings_dir, session)
    if as_json:
        try:
            for message in _messages(config.recordings_dir, info.id, again=False):
                sys.stdout.write(json.dumps(_as_json(message)) + "\n")
                sys.stdout.flush()
        except KeyboardInterrupt:
            pass
        return
    what = escape(info.command or ("interactive shell" if info.kind == "shell" else info.kind))
    err.print(
        f"Watching {escape(info.engineer)}'s session {info.id} ({what}), read-only. "
        "Ctrl-C stops watching; the session goes on."
    )
    try:
        status = _watch(config.recordings_dir, info.id)
    except KeyboardInterrupt:
        sys.stdout.flush()
        err.print("\nStopped watching; the session goes on.")
        return
    finally:
        discard_typeahead()
    sys.stdout.flush()
    ended = "" if status is None else f" (exit status {status})"
    err.print(f"\nThe session ended{ended}.")


def _as_json(message: Start | Output | Transfers | End) -> object:
    if isinstance(message, Start | Output):
        return message.to_json()
    if isinstance(message, Transfers):
        return {"transfer": list(message.files)}
    return {"end": {"status": message.status}}


def _messages(
    directory: Path, recording_id: str, *, again: bool
) -> Iterator[Start | Output | Transfers | End]:
    """The stream's messages, connecting again when it stops without an end.

    A stream cut off after it started (the recorder let a watcher that fell behind go)
    is joined again at once, if ``again``. One that ended before it started -- the
    session has no room for another watcher, or its recorder closes at once -- is
    tried again after :data:`RETRY_PAUSE`, never in a tight loop that would load the
    session's process, for :data:`RECONNECT_FOR` seconds in all; then a session still
    full is a ``NotReady``.
    """
    conn: socket.socket | None = connect(directory, recording_id)
    busy: Full | None = None
    retry_until: float | None = None
    while conn is not None:
        started = False
        for message in follow(conn):
            if isinstance(message, Full):
                if busy is None:
                    err.print(f"{message.watchers} watchers already follow this session; retrying")
                busy = message
                continue  # the recorder closes next
            if isinstance(message, Start):
                started, busy, retry_until = True, None, None
            yield message
            if isinstance(message, End):
                return
        if started:
            if not again:
                return
            conn = _reconnect(directory, recording_id, time.monotonic() + RECONNECT_FOR, 0.0)
        else:
            if retry_until is None:
                retry_until = time.monotonic() + RECONNECT_FOR
            conn = _reconnect(directory, recording_id, retry_until, RETRY_PAUSE)
    if busy is not None and is_live(cast_path(directory, recording_id)):
        raise NotReady(
            f"{busy.watchers} watchers already follow session {recording_id}; "
            "try again when one of them stops watching"
        )


def _watch(directory: Path, recording_id: str) -> int | None:
    """Print the stream until the session ends; return its exit status.

    The engineer writes the output: it goes through a :class:`TerminalFilter`, so that
    it cannot make this terminal answer (into root's shell) or set its clipboard.
    """
    redraw = False
    screen = TerminalFilter()
    for message in _messages(directory, recording_id, again=True):
        if isinstance(message, Start):
            if redraw:  # we fell behind and start over: clear, then redraw
                sys.stdout.write("\x1b[H\x1b[2J")
            screen.reset()  # a new stream: nothing half seen carries over
            sys.stdout.write(screen.feed(message.init))
            redraw = True
        elif isinstance(message, Output):
            if message.kind == "o":
                sys.stdout.write(screen.feed(message.data))
        elif isinstance(message, Transfers):
            sys.stdout.flush()
            for line in message.describe():
                err.print(f"transferring: {escape(printable(line))}")
        elif isinstance(message, End):
            return message.status
        sys.stdout.flush()
    # The stream stopped without an end and could not be joined again: the session
    # was killed, or is ending.
    return None


def _reconnect(
    directory: Path, recording_id: str, deadline: float, pause: float
) -> socket.socket | None:
    """Connect again after ``pause`` seconds, until ``deadline``; None if it cannot be."""
    time.sleep(pause)
    while is_live(cast_path(directory, recording_id)) and time.monotonic() <= deadline:
        try:
            return connect(directory, recording_id)
        except NotReady:
            time.sleep(0.2)
    return None
