"""Terminal and process plumbing of the recorder (standard library only).

Window sizes, complete writes to a non-blocking descriptor, exit statuses as a shell
reports them, and the signal dispositions a session's programs expect.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import termios


def winsize(fd: int) -> tuple[int, int]:
    """Return (columns, rows) of the terminal on ``fd``."""
    rows, columns, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    return columns or 80, rows or 24


def set_winsize(fd: int, columns: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [], 1.0)
            continue
        view = view[written:]


def exit_status(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def default_signals() -> None:
    """Undo what Python did to signal dispositions, for the session's programs."""
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
