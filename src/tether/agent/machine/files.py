"""Plumbing for :mod:`tether.agent.machine`: running tools, atomic writes, undo journal.

Nothing here knows about sshd or accounts. Commands run from an argument list (never a
shell) with a C locale and a PATH that has the sbin directories; a tool that is missing
or hangs comes back as a failed :class:`subprocess.CompletedProcess` rather than an
exception, so that every caller handles failure in one way. Files are replaced
atomically (temporary file in the same directory, ``fsync``, ``rename``), and a
:class:`Journal` remembers what one call changed so that it can be undone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tether import log

logger = logging.getLogger("tether.agent.machine")

#: Seconds any one tool may take before it counts as failed.
COMMAND_TIMEOUT = 60.0
_SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Runner(Protocol):
    """Runs one command; :func:`run_command` is the real one, tests may pass a fake.

    The command's stdout and stderr are captured as text. ``input`` is written to its
    stdin (this is how a password reaches ``chpasswd``: never through ``argv``).
    """

    def __call__(
        self, argv: Sequence[str], *, input: str | None = None
    ) -> subprocess.CompletedProcess[str]: ...


def run_command(
    argv: Sequence[str], *, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (no shell) and capture its output; never raise for a failing tool.

    A missing program comes back with return code 127 and a timeout with 124, each
    with an explanation in ``stderr``.
    """
    env = {"PATH": _SBIN_PATH, "LC_ALL": "C", "LANG": "C"}
    args = list(argv)
    try:
        result = subprocess.run(
            args,
            input=input,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            env=env,
            stdin=None if input is not None else subprocess.DEVNULL,
            check=False,
        )
    except FileNotFoundError as exc:
        return subprocess.CompletedProcess(args, 127, "", f"{args[0]}: not found ({exc})")
    except OSError as exc:
        return subprocess.CompletedProcess(args, 126, "", f"{args[0]}: cannot run ({exc})")
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(
            args, 124, "", f"{args[0]}: no answer within {COMMAND_TIMEOUT:.0f} s"
        )
    # argv never holds a secret (a password goes through stdin), so it may be logged.
    log.event(logger, "machine.command", level=logging.DEBUG, argv=args, status=result.returncode)
    return result


def output_of(result: subprocess.CompletedProcess[str]) -> str:
    """Return what a failed tool said (stderr, else stdout), on one trimmed string."""
    text = (result.stderr or "").strip() or (result.stdout or "").strip()
    return text or f"exit status {result.returncode}"


def read_bytes(path: Path) -> bytes | None:
    """Return the contents of ``path``, or None if it does not exist."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` durable (best effort)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(
    path: Path,
    data: bytes,
    mode: int,
    *,
    owner: tuple[int, int] | None = None,
    validate: Callable[[Path], None] | None = None,
) -> bool:
    """Replace ``path`` with ``data`` atomically; return False if it already held it.

    The new content goes to a hidden temporary file next to ``path`` (its name starts
    with a dot and contains dots, so neither sudo's ``@includedir`` nor sshd's
    ``Include *.conf`` ever reads it), gets ``mode`` (and ``owner`` if given), is
    synced, handed to ``validate`` (which raises to refuse it) and renamed over
    ``path``. A symlink at ``path`` is followed: its target is replaced.
    """
    target = Path(os.path.realpath(path))
    with contextlib.suppress(FileNotFoundError):
        info = target.stat()
        same_owner = owner is None or (info.st_uid, info.st_gid) == owner
        if same_owner and stat.S_IMODE(info.st_mode) == mode and target.read_bytes() == data:
            return False
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            if owner is not None:
                os.fchown(handle.fileno(), *owner)
            os.fsync(handle.fileno())
        if validate is not None:
            validate(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(target.parent)
    return True


def remove_file(path: Path) -> bool:
    """Delete ``path``; return False if it was already gone."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    fsync_dir(path.parent)
    return True


def make_dir(path: Path, mode: int) -> bool:
    """Create directory ``path`` (and parents) with ``mode``; return False if it existed."""
    if path.is_dir():
        return False
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    return True


def remove_dir_if_empty(path: Path) -> bool:
    """Remove directory ``path`` if it exists and is empty; return whether it did."""
    try:
        path.rmdir()
    except (FileNotFoundError, OSError):
        return False
    return True


@dataclass(frozen=True)
class _Saved:
    path: Path
    data: bytes | None
    mode: int
    owner: tuple[int, int]


class Journal:
    """What one call changed, so that it can be undone in reverse order."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], object]]] = []
        self._saved: set[Path] = set()

    def add(self, what: str, undo: Callable[[], object]) -> None:
        """Remember how to undo one change (``what`` names it in the log)."""
        self._steps.append((what, undo))

    def save_file(self, path: Path) -> None:
        """Remember ``path``'s current content (or absence) before the first change to it."""
        if path in self._saved:
            return
        self._saved.add(path)
        try:
            info = path.stat()
            saved = _Saved(
                path, path.read_bytes(), stat.S_IMODE(info.st_mode), (info.st_uid, info.st_gid)
            )
        except FileNotFoundError:
            saved = _Saved(path, None, 0, (0, 0))
        self.add(f"restore {path}", lambda: _restore(saved))

    def rollback(self) -> list[str]:
        """Undo every remembered change, newest first; return what could not be undone."""
        failures: list[str] = []
        for what, undo in reversed(self._steps):
            try:
                undo()
            except Exception as exc:  # keep undoing the rest whatever one step does
                failures.append(f"{what}: {exc}")
                log.event(
                    logger,
                    "machine.rollback.failed",
                    level=logging.ERROR,
                    step=what,
                    error=str(exc),
                )
            else:
                log.event(logger, "machine.rollback.step", level=logging.DEBUG, step=what)
        self._steps.clear()
        self._saved.clear()
        return failures


def _restore(saved: _Saved) -> None:
    if saved.data is None:
        remove_file(saved.path)
    else:
        write_atomic(saved.path, saved.data, saved.mode, owner=saved.owner)
