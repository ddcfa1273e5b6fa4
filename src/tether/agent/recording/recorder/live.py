"""The live view's source: the recorder streams a session's output to watchers (stdlib only).

While a session runs, its recorder listens on a Unix socket next to the recording,
``ID.live`` (:func:`live_path`), created mode 0600 by the support account: only root
(the customer's ``tether access watch`` and the agent's page) and the account itself
can connect. A watcher that connects gets JSON lines:

- first ``{"cols": C, "rows": R, "time": T, "init": TEXT}``: the terminal's size, the
  seconds since the session started, and the last :data:`RECENT` bytes of output, so
  a watcher joining late sees the screen as it stands (this is the *reset* message of
  asciinema-player's ``eventsource`` driver, which the page feeds these lines to);
- then each event as the recording has it: ``[T, "o", TEXT]`` for output,
  ``[T, "r", "COLSxROWS"]`` for a window size change;
- ``{"transfer": [{"op": "upload", "path": P, "bytes": N}, ...]}`` when the files an
  SFTP or scp session is moving change (checked once a second);
- last ``{"end": {"status": N}}`` when the session has ended.

A watcher turned away because :data:`MAX_WATCHERS` watch already gets only
``{"full": {"watchers": N}}`` before the socket closes.

Watchers never slow the session down. The recorder writes to the engineer first and
to watchers after; their sockets are non-blocking, and a watcher whose socket buffer
is full is disconnected rather than waited for (it may connect again, and starts over
from the recent output). A watcher cannot type into the session: the recorder never
reads from a watcher's socket, and shuts it for reading as soon as it accepts it, so
anything a watcher sends fails (``EPIPE``) and reaches nothing.

The account owns the socket, as it owns the recording while the session runs: a
watcher checks that its peer runs as that account (``SO_PEERCRED``), never as another
user; what the stream shows is as trustworthy as the recording itself.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Suffix of a live session's socket, next to its ``.cast.gz``.
LIVE_SUFFIX = ".live"
#: Bytes of recent output a watcher joining late is sent first.
RECENT = 64 * 1024
#: Most watchers of one session at a time (more are turned away).
MAX_WATCHERS = 8
#: Send buffer per watcher: what a watcher may lag behind before it is disconnected.
SEND_BUFFER = 512 * 1024
#: Longest socket path ``bind``/``connect`` take (108 with the terminating NUL).
_SUN_PATH_MAX = 107


def live_path(directory: Path, recording_id: str) -> Path:
    """The live session's socket."""
    return directory / f"{recording_id}{LIVE_SUFFIX}"


def socket_address(path: Path) -> tuple[str, int | None]:
    """An address ``bind``/``connect`` accept for ``path``, and a descriptor to close after.

    A path longer than a socket address may be is reached through its directory,
    opened ``O_PATH``: ``/proc/self/fd/N/NAME``.
    """
    text = str(path)
    if len(text.encode()) <= _SUN_PATH_MAX:
        return text, None
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    return f"/proc/self/fd/{fd}/{path.name}", fd


def _line(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


class LiveFeed:
    """The recorder's listening socket and its watchers (see the module docstring).

    :param path: the socket to create (:func:`live_path`); refused if it exists.
    :param columns: the terminal's width at the start.
    :param rows: its height.
    :param clock: monotonic seconds, the same the recording's times count from.
    """

    def __init__(
        self,
        path: Path,
        columns: int,
        rows: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.columns, self.rows = columns, rows
        self._clock = clock
        self._start = clock()
        self._recent = bytearray()
        self._watchers: list[socket.socket] = []
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._transfers: list[dict[str, Any]] = []
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        address, fd = socket_address(path)
        mask = os.umask(0o177)  # born 0600: no moment when others could connect
        try:
            self._listener.bind(address)
            self._listener.listen(MAX_WATCHERS)
        except OSError:
            self._listener.close()
            raise
        finally:
            os.umask(mask)
            if fd is not None:
                os.close(fd)
        self._listener.setblocking(False)

    def fileno(self) -> int:
        """The listening socket (readable when a watcher connects)."""
        return self._listener.fileno()

    @property
    def watched(self) -> bool:
        """Whether anyone watches now."""
        return bool(self._watchers)

    def _elapsed(self) -> float:
        return round(self._clock() - self._start, 6)

    def accept(self) -> None:
        """Take the watchers waiting to connect (call when :meth:`fileno` is readable)."""
        while True:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            try:
                # Never read: a watcher cannot send anything into the session.
                conn.shutdown(socket.SHUT_RD)
                if len(self._watchers) >= MAX_WATCHERS:
                    # Say why before closing: a watcher told nothing connects again at once.
                    with contextlib.suppress(OSError):
                        full = _line({"full": {"watchers": len(self._watchers)}})
                        conn.send(full, socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT)
                    conn.close()
                    continue
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
                conn.setblocking(False)
            except OSError:
                conn.close()
                continue
            text = bytes(self._recent).decode("utf-8", errors="replace").lstrip("\ufffd")
            hello = {"cols": self.columns, "rows": self.rows, "time": self._elapsed()}
            hello["init"] = text  # type: ignore[assignment]
            data = _line(hello)
            if self._transfers:
                data += _line({"transfer": self._transfers})
            self._watchers.append(conn)
            self._send(data)

    def output(self, data: bytes) -> None:
        """The session wrote ``data`` (the engineer has it already)."""
        recent = self._recent
        recent += data
        if len(recent) > RECENT:
            del recent[: len(recent) - RECENT]
        if self._watchers:
            text = self._decoder.decode(data)
            if text:
                self._send(_line([self._elapsed(), "o", text]))
        elif self._decoder.getstate()[0]:
            self._decoder.reset()  # nobody watches: no half character to carry

    def resize(self, columns: int, rows: int) -> None:
        """The engineer's window is now ``columns`` x ``rows``."""
        self.columns, self.rows = columns, rows
        if self._watchers:
            self._send(_line([self._elapsed(), "r", f"{columns}x{rows}"]))

    def transfers(self, current: list[dict[str, Any]]) -> None:
        """The files being moved now (sent when they changed)."""
        if current != self._transfers:
            self._transfers = current
            if self._watchers:
                self._send(_line({"transfer": current}))

    def _send(self, data: bytes) -> None:
        kept = []
        for conn in self._watchers:
            try:
                sent = conn.send(data, socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT)
            except OSError:  # gone, or too far behind (EAGAIN): never waited for
                sent = -1
            if sent == len(data):
                kept.append(conn)
            else:  # a line cut short would corrupt the stream: this watcher starts over
                conn.close()
        self._watchers = kept

    def close(self, status: int | None) -> None:
        """The session ended with ``status``: tell the watchers, remove the socket."""
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        self._send(_line({"end": {"status": status}}))
        for conn in self._watchers:
            with contextlib.suppress(OSError):
                conn.close()
        self._watchers = []
        self._listener.close()
