"""Session recording for :mod:`tether.agent.machine`: the recorder's command and its directory.

sshd runs the recorder (:mod:`tether.agent.recording.recorder.session`) as the support account, with a
cleared environment, through the account's shell. So its command line names an
absolute Python the account can execute and puts Tether's package on ``PYTHONPATH``
explicitly; the recorder needs nothing but the standard library, so any Python 3.11+
will do when the agent's own interpreter lives where the account cannot reach it
(a virtualenv under ``/root``, say).

The directory is root's, group the support account's, mode 1730: the account may add
files and rewrite its own (it must, to record), may not list or read the others'
recordings, and sticky keeps it from removing them. That is a speed bump, not a wall:
the support account has sudo.
"""

from __future__ import annotations

import functools
import os
import shutil
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

import tether
from tether.agent.machine.effects import MachineError, RecorderSpec
from tether.agent.machine.files import Journal, Runner, output_of, remove_dir_if_empty

#: The recordings directory's mode: owner root (rwx), the account's group (wx), sticky.
DIRECTORY_MODE = 0o1730
#: Interpreters tried after the agent's own when the account cannot run that one.
FALLBACK_PYTHONS = (Path("/usr/bin/python3"), Path("/usr/local/bin/python3"))


def others_can_use(path: Path) -> bool:
    """Tell whether any user may reach and use ``path`` (every directory up to it is
    searchable by others; the file itself readable and, if a program, executable)."""
    try:
        resolved = path.resolve(strict=True)
    except OSError:
        return False
    for candidate in {path.absolute(), resolved}:
        for parent in candidate.parents:
            try:
                if not parent.stat().st_mode & stat.S_IXOTH:
                    return False
            except OSError:
                return False
    info = resolved.stat()
    needed = stat.S_IXOTH | (stat.S_IROTH if stat.S_ISDIR(info.st_mode) else 0)
    return info.st_mode & needed == needed


def choose_python(
    configured: Path | None, candidates: Sequence[Path] = FALLBACK_PYTHONS
) -> Path | None:
    """Return the Python the recorder runs under: ``configured``, else the agent's own
    if others can run it, else the first fallback they can (None if there is none)."""
    if configured is not None:
        return configured
    for path in (Path(sys.executable), *candidates):
        if path.is_absolute() and others_can_use(path):
            return path
    return None


def package_root() -> Path:
    """The directory holding the ``tether`` package (what goes on ``PYTHONPATH``)."""
    return Path(tether.__file__).resolve().parent.parent


#: The recorder's package, as path parts under the directory holding ``tether``.
RECORDER_PACKAGE = ("tether", "agent", "recording", "recorder")
#: Where, in the agent's state directory, a copy of the recorder's code goes
#: when the installed package is out of the support account's reach.
LIBRARY_DIR = "recorder-lib"


def library_for(state_dir: Path) -> Path | None:
    """Where the recorder imports Tether from: ``None`` if the installed package will do.

    sshd runs the recorder as the support account, which cannot read a package in a
    private place (a source checkout or virtualenv under a 0700 directory); then
    :func:`install_library` puts a copy of the code in ``STATE_DIR/recorder-lib``.
    """
    if others_can_use(package_root() / "tether"):
        return None
    return state_dir / LIBRARY_DIR


def install_library(target: Path, state_dir: Path, journal: Journal) -> None:
    """Copy the recorder's package to ``target`` (root's; readable and searchable by all).

    The recorder imports nothing but the standard library and its own package, so only
    that package goes, with the ``__init__`` of each package above it.

    The copy replaces any earlier one whole (a staging directory renamed into place),
    and every directory from ``state_dir`` down is made searchable by others. A copy
    this call created is removed again by ``journal`` if opening access fails.
    """
    staging = target.with_name(target.name + ".new")
    retired = target.with_name(target.name + ".old")
    for leftover in (staging, retired):
        shutil.rmtree(leftover, ignore_errors=True)
    source = package_root()
    for depth in range(1, len(RECORDER_PACKAGE)):
        package = Path(*RECORDER_PACKAGE[:depth])
        (staging / package).mkdir(parents=True)
        shutil.copyfile(source / package / "__init__.py", staging / package / "__init__.py")
    shutil.copytree(
        source / Path(*RECORDER_PACKAGE),
        staging / Path(*RECORDER_PACKAGE),
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    for path in (staging, *staging.rglob("*")):
        os.chown(path, 0, 0)
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    existed = target.exists()
    if existed:
        target.rename(retired)
    staging.rename(target)
    shutil.rmtree(retired, ignore_errors=True)
    if not existed:
        journal.add(f"remove {target}", functools.partial(shutil.rmtree, target, True))
    for parent in target.parents:
        if parent == state_dir or state_dir in parent.parents:
            mode = stat.S_IMODE(parent.stat().st_mode)
            if not mode & stat.S_IXOTH:
                os.chmod(parent, mode | stat.S_IXOTH)
                journal.add(f"restore {parent}", functools.partial(os.chmod, parent, mode))


def recorder_command(
    *,
    python: Path,
    directory: Path,
    serial: str,
    fail_open: bool,
    max_bytes: int,
    sftp_server: Path | None = None,
    root: Path | None = None,
) -> str:
    """Return the recorder's ForceCommand line.

    Raises:
        MachineError: a path holds a blank, quote, ``#`` or backslash (sshd and the
            shell would split or mangle it).
    """
    words = [
        "/usr/bin/env",
        "PYTHONSAFEPATH=1",
        f"PYTHONPATH={root or package_root()}",
        str(python),
        "-s",
        "-m",
        "tether.agent.recording.recorder",
        "--dir",
        str(directory),
        "--serial",
        serial,
        "--fail",
        "open" if fail_open else "closed",
        "--max-bytes",
        str(max_bytes),
    ]
    if sftp_server is not None:
        words += ["--sftp-server", str(sftp_server)]
    for word in words:
        if not word or any(c in word for c in " \t\n\"'#\\$`;&|<>()*?[]{}~"):
            raise MachineError(
                f"the session recorder cannot be run from {word!r}: the path has a blank, "
                "quote or shell character; move it or set [recording] python/dir"
            )
    return " ".join(words)


def prepare_directory(directory: Path, gid: int, state_dir: Path, journal: Journal) -> None:
    """Create (or fix) the recordings directory: root, group ``gid``, mode 1730.

    If it lies in the agent's own state directory, that directory is made searchable
    (not listable) by others so the account can reach it; the files there stay 0600.
    Each change is undone by ``journal`` if opening access fails later; recordings
    already in the directory are never touched.
    """
    if directory.is_symlink():
        raise MachineError(f"the recordings directory {directory} is a symlink; refusing it")
    missing = [p for p in (directory, *directory.parents) if not p.exists()]
    for path in reversed(missing):
        path.mkdir()
        journal.add(f"remove {path}", functools.partial(remove_dir_if_empty, path))
    if not missing:
        info = directory.stat()
        mode, owner = stat.S_IMODE(info.st_mode), (info.st_uid, info.st_gid)
        journal.add(f"restore {directory}", lambda: _restore(directory, mode, owner))
    os.chown(directory, 0, gid)
    os.chmod(directory, DIRECTORY_MODE)
    for parent in directory.parents:
        if parent == state_dir or state_dir in parent.parents:
            info = parent.stat()
            if not info.st_mode & stat.S_IXOTH:
                mode = stat.S_IMODE(info.st_mode)
                os.chmod(parent, mode | stat.S_IXOTH)
                journal.add(f"restore {parent}", functools.partial(os.chmod, parent, mode))


def _restore(path: Path, mode: int, owner: tuple[int, int]) -> None:
    os.chown(path, *owner)
    os.chmod(path, mode)


def check_as_account(run: Runner, account: str, spec: RecorderSpec) -> str | None:
    """Start the recorder as ``account`` in check mode; return None or why it cannot record."""
    argv = ["setpriv", f"--reuid={account}", f"--regid={account}", "--init-groups", "--"]
    argv += ["/bin/sh", "-c", f"{spec.command} --check"]
    result = run(argv)
    return None if result.returncode == 0 else output_of(result) or f"status {result.returncode}"
