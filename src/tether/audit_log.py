"""The hash-chained audit log kept in a file (the agent's; relays and the vendor use the database).

The chain format and its verification are pure code in :mod:`tether.audit`; this
module adds the file: appends under an exclusive ``flock`` (so the CLI and the
daemon never fork the chain), ``O_APPEND`` + ``fsync``, mode 0600, and reading the
last entry from the end of the file so an append costs the same on a long log.
"""

from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from tether.audit import (
    _READ_CHUNK,
    AuditEntry,
    AuditFormatError,
    FieldValue,
    Verification,
    chain_entry,
    check_event,
    verify,
)
from tether.audit import GENESIS as GENESIS
from tether.clock import SYSTEM_CLOCK, Clock


class AuditLog:
    """The agent's log: a JSON-lines file, appended with ``O_APPEND`` + ``fsync``, mode 0600.

    :meth:`append` holds an exclusive ``flock`` on the file while it reads the last entry
    and writes the next one, so two processes (the CLI and the daemon) or two threads
    never fork the chain. Reading the last entry seeks from the end of the file: the cost
    of an append does not grow with the log. Readers take a shared lock.

    A log whose last line was cut short (a crash mid-write) keeps working: the next
    append starts on a new line and chains onto the last readable entry, and
    :meth:`verify` reports the cut line as malformed.
    """

    def __init__(self, path: Path, *, clock: Clock = SYSTEM_CLOCK) -> None:
        """Use the log at ``path`` (created on the first append), timed by ``clock``."""
        self._path = Path(path)
        self._clock = clock

    @property
    def path(self) -> Path:
        """Where the log lives."""
        return self._path

    def append(self, event: str, /, **fields: FieldValue) -> AuditEntry:
        """Write one entry at the end of the chain and return it.

        :raises ValueError: a bad event name or field, or a secret-looking field
            (``password``, ``key``, ``token``, ``secret`` as a name or suffix): pass
            identifiers, not secrets.
        :raises OSError: the file cannot be created or written.
        """
        check_event(event, fields)
        self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            fd = os.open(self._path, flags | os.O_CREAT | os.O_EXCL, 0o600)
            created = True
        except FileExistsError:
            fd = os.open(self._path, flags)
            created = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise OSError(f"{self._path} is not a regular file")
            if stat.S_IMODE(info.st_mode) != 0o600:
                os.fchmod(fd, 0o600)
            last, torn = _last_entry(fd, info.st_size)
            entry = chain_entry(last, event, fields, self._clock.now())
            data = ("\n" if torn else "") + entry.to_json_line() + "\n"
            _write_all(fd, data.encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            _fsync_dir(self._path.parent)
        return entry

    def head(self) -> tuple[int, str]:
        """Return ``(seq, hash)`` of the last readable entry; ``(0, GENESIS)`` if none."""
        fd = self._open_for_reading()
        if fd is None:
            return 0, GENESIS
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            last, _ = _last_entry(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        return (last.seq, last.hash) if last else (0, GENESIS)

    def entry_hash(self, seq: int) -> str | None:
        """Return the ``hash`` the file holds now for entry ``seq``; ``None`` if it has none.

        Reads from the end of the file and stops at the first entry numbered below ``seq``,
        so asking about a recent entry costs little on a long log. This is what the agent
        answers when the vendor checks that the log still holds an entry it reported.
        """
        fd = self._open_for_reading()
        if fd is None:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            for line in _lines_backwards(fd, os.fstat(fd).st_size):
                try:
                    entry = AuditEntry.from_json_line(line.decode("utf-8"))
                except (AuditFormatError, UnicodeDecodeError):
                    continue
                if entry.seq == seq:
                    return entry.hash
                if entry.seq < seq:
                    return None
        finally:
            os.close(fd)
        return None

    def read_lines(self) -> list[str]:
        """Return every line of the file, damaged ones included ([] if there is no file)."""
        fd = self._open_for_reading()
        if fd is None:
            return []
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            with os.fdopen(os.dup(fd), "rb") as f:
                data = f.read()
        finally:
            os.close(fd)
        lines = data.split(b"\n")
        if lines[-1] == b"":
            lines.pop()
        return [line.decode("utf-8", errors="replace") for line in lines]

    def entries(self, *, skip_damaged: bool = False) -> list[AuditEntry]:
        """Return every entry in file order.

        :param skip_damaged: leave out lines that cannot be read instead of raising (to
            show what is left of a damaged log next to :meth:`verify`'s problems).
        :raises AuditFormatError: a line cannot be read (unless ``skip_damaged``);
            :meth:`verify` lists every problem of a damaged log instead of the first.
        """
        out: list[AuditEntry] = []
        for lineno, line in enumerate(self.read_lines(), start=1):
            try:
                out.append(AuditEntry.from_json_line(line))
            except AuditFormatError as exc:
                if skip_damaged:
                    continue
                raise AuditFormatError(
                    f"{self._path}, line {lineno}: {exc}; verify the log to see every problem"
                ) from None
        return out

    def verify(self, expected_head: tuple[int, str] | None = None) -> Verification:
        """Check the file's chain; see :func:`verify` for what is detected and what is not."""
        return verify(self.read_lines(), expected_head=expected_head)

    def _open_for_reading(self) -> int | None:
        try:
            return os.open(self._path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None


def _pread_exact(fd: int, size: int, offset: int) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise OSError("the audit log shrank while it was being read")
    return data


def _lines_backwards(fd: int, size: int) -> Iterator[bytes]:
    """Yield the non-empty lines of the first ``size`` bytes of ``fd``, last line first."""
    pos, partial = size, b""
    while pos > 0:
        step = min(_READ_CHUNK, pos)
        pos -= step
        parts = (_pread_exact(fd, step, pos) + partial).split(b"\n")
        partial = parts[0]
        yield from (p for p in reversed(parts[1:]) if p)
    if partial:
        yield partial


def _last_entry(fd: int, size: int) -> tuple[AuditEntry | None, bool]:
    """Return the last readable entry and whether the file lacks its final newline."""
    if size == 0:
        return None, False
    torn = _pread_exact(fd, 1, size - 1) != b"\n"
    for line in _lines_backwards(fd, size):
        try:
            return AuditEntry.from_json_line(line.decode("utf-8")), torn
        except (AuditFormatError, UnicodeDecodeError):
            continue
    return None, torn


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(path: Path) -> None:
    """Make a new file's directory entry durable (best effort)."""
    try:
        dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
