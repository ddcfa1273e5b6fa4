"""Watching a live support session: the customer's side of the recorder's live stream.

The recorder of each running session listens on ``ID.live`` in the recordings
directory (:mod:`tether.agent.recording.recorder.live` describes the stream). This
module finds the live sessions, connects to one -- after checking that the socket
belongs to the support account that runs the session, and that the process at the
other end runs as that account -- and reads the stream as checked messages
(:func:`parse`). It only ever reads: nothing here can send a byte into a session.
``tether access watch`` and the page's live view both use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
import struct
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tether.agent.recording.catalog import (
    RecordingInfo,
    RecordingNotFound,
    cast_path,
    check_id,
    info_for,
    list_recordings,
)
from tether.agent.recording.recorder.live import live_path
from tether.errors import BadInput, NotReady

#: Longest line read from a stream (the recorder's longest is well below).
MAX_LINE = 4 << 20


@dataclass(frozen=True)
class Start:
    """The stream's first message: terminal size, seconds since the start, recent output."""

    cols: int
    rows: int
    time: float
    init: str

    def to_json(self) -> dict[str, Any]:
        return {"cols": self.cols, "rows": self.rows, "time": self.time, "init": self.init}


@dataclass(frozen=True)
class Output:
    """Output of the session (``kind`` ``o``) or a window size change (``r``, ``COLSxROWS``)."""

    time: float
    kind: str
    data: str

    def to_json(self) -> list[Any]:
        return [self.time, self.kind, self.data]


@dataclass(frozen=True)
class Transfers:
    """The files being moved now: ``{"op", "path", "bytes"}`` each (empty: none)."""

    files: tuple[dict[str, Any], ...]

    def describe(self) -> list[str]:
        """One line per file, for people (``upload /tmp/x (1234 bytes)``)."""
        lines = []
        for item in self.files:
            size = f" ({item['bytes']} bytes)" if "bytes" in item else ""
            lines.append(f"{item.get('op', '?')} {item.get('path', '?')}{size}")
        return lines


@dataclass(frozen=True)
class End:
    """The session ended, with its exit status (None if not known)."""

    status: int | None


@dataclass(frozen=True)
class Full:
    """The session has no room for another watcher: ``watchers`` follow it already."""

    watchers: int


Message = Start | Output | Transfers | End | Full


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _transfer(item: object) -> dict[str, Any] | None:
    if not isinstance(item, dict):
        return None
    op, path, size = item.get("op"), item.get("path"), item.get("bytes")
    if not isinstance(op, str) or not isinstance(path, str):
        return None
    kept: dict[str, Any] = {"op": op[:20], "path": path[:1000]}
    if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
        kept["bytes"] = size
    return kept


def parse(line: bytes) -> Message | None:
    """The message a stream line holds, or None for a line that is not one.

    The support account writes the stream: every field is checked for its type, so a
    forged line can neither break the reader nor smuggle anything else through.
    """
    try:
        value = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(value, list) and len(value) == 3:
        at, kind, data = value
        if _number(at) and kind in ("o", "r") and isinstance(data, str):
            return Output(float(at), kind, data)
        return None
    if not isinstance(value, dict):
        return None
    if "transfer" in value:
        items = value["transfer"] if isinstance(value["transfer"], list) else []
        return Transfers(tuple(t for t in map(_transfer, items[:10]) if t is not None))
    if "end" in value:
        status = value["end"].get("status") if isinstance(value["end"], dict) else None
        return End(status if isinstance(status, int) and not isinstance(status, bool) else None)
    if "full" in value:
        count = value["full"].get("watchers") if isinstance(value["full"], dict) else None
        if isinstance(count, int) and not isinstance(count, bool) and 0 < count <= 1000:
            return Full(count)
        return None
    cols, rows, at, init = (value.get(k) for k in ("cols", "rows", "time", "init"))
    if (
        isinstance(cols, int)
        and isinstance(rows, int)
        and 0 < cols <= 1000
        and 0 < rows <= 1000
        and _number(at)
        and isinstance(init, str)
    ):
        return Start(cols, rows, float(at), init)  # type: ignore[arg-type]
    return None


def live_sessions(directory: Path) -> list[RecordingInfo]:
    """The sessions running now (their recorder holds the recording's lock), oldest first."""
    return [info for info in list_recordings(directory) if info.live]


def pick_live(directory: Path, session: str | None) -> RecordingInfo:
    """The live session ``session`` names, or the only one when it is None.

    Raises :class:`~tether.errors.NotReady` when nothing runs, ``BadInput`` (listing
    them) when several run and none was named, ``RecordingNotFound`` for an unknown id.
    """
    try:
        running = live_sessions(directory)
    except PermissionError:
        raise NotReady(f"cannot read {directory}: run as root") from None
    if session is None:
        if len(running) == 1:
            return running[0]
        if not running:
            raise NotReady("no support session is running now (tether access recordings)")
        names = ", ".join(f"{i.id} ({i.engineer}, {i.command or i.kind})" for i in running)
        raise BadInput(f"several support sessions are running; name one: {names}")
    check_id(session)
    found = next((i for i in running if i.id == session), None)
    if found is None:
        known = info_for(directory, session)
        if known.ended is not None or known.cut_off:
            raise RecordingNotFound(
                f"session {session} has ended; replay it with tether access play {session}"
            )
        listed = ", ".join(i.id for i in running) or "none"
        raise RecordingNotFound(f"no running session {session} (running now: {listed})")
    return found


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def connect(directory: Path, recording_id: str) -> socket.socket:
    """Connect to a live session's stream (blocking); raise ``NotReady`` if it cannot be.

    The socket must be a socket (not a link) owned by the recording's owner, and the
    process answering must run as that owner: a support account that swapped in a
    link to some other service's socket is not followed. The support account owns the
    directory entry and may swap it at any moment: the entry is opened once
    (``O_PATH | O_NOFOLLOW``), and what was checked is what is connected to, through
    ``/proc/self/fd``.
    """
    check_id(recording_id)
    path = live_path(directory, recording_id)
    try:
        owner = cast_path(directory, recording_id).lstat().st_uid
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotReady(
            f"session {recording_id} has no live stream (it ended, or it started before "
            "this version of Tether)"
        ) from None
    except PermissionError:
        raise NotReady(f"cannot read {directory}: run as root") from None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        found = os.fstat(fd)
        if not stat.S_ISSOCK(found.st_mode) or found.st_uid != owner:
            raise NotReady(f"{path} is not the live stream of session {recording_id}")
        conn.settimeout(5)
        conn.connect(f"/proc/self/fd/{fd}")
        if _peer_uid(conn) != owner:
            raise NotReady(f"the live stream of session {recording_id} is not its recorder's")
        # Nothing is ever sent: the recorder shut its side for reading anyway.
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(None)
    except PermissionError:
        conn.close()
        raise NotReady(f"cannot watch session {recording_id}: run as root") from None
    except (ConnectionRefusedError, FileNotFoundError, TimeoutError):
        conn.close()
        raise NotReady(f"session {recording_id} is ending; there is nothing to watch") from None
    except BaseException:
        conn.close()
        raise
    finally:
        os.close(fd)
    return conn


def follow(conn: socket.socket) -> Iterator[Message]:
    """The messages of a connected stream until it ends (blocking reads)."""
    with contextlib.closing(conn), conn.makefile("rb") as stream:
        while True:
            line = stream.readline(MAX_LINE)
            if not line:
                return
            message = parse(line)
            if message is not None:
                yield message


class Closers(Protocol):
    """Where an open stream registers how to end it (the page ends them all on stop)."""

    def add(self, closer: Callable[[], None]) -> None: ...

    def discard(self, closer: Callable[[], None]) -> None: ...


async def follow_async(
    directory: Path, recording_id: str, closers: Closers | None = None
) -> AsyncGenerator[Message, None]:
    """Connect to ``recording_id``'s stream and yield its messages until it ends.

    With ``closers``, the connection is registered there while open: calling its
    closer ends the stream as if the session had stopped talking.
    """
    conn = await asyncio.to_thread(connect, directory, recording_id)
    conn.setblocking(False)
    reader, writer = await asyncio.open_unix_connection(sock=conn, limit=MAX_LINE)
    if closers is not None:
        closers.add(writer.close)
    try:
        while True:
            try:
                line = await reader.readline()
            except (ValueError, asyncio.LimitOverrunError):
                return  # a line longer than any the recorder writes: not a stream
            if not line:
                return
            message = parse(line)
            if message is not None:
                yield message
    finally:
        if closers is not None:
            closers.discard(writer.close)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
