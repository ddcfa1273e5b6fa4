"""The support account for :mod:`tether.agent.machine`: create, lock, remove, kill sessions.

Everything goes through the shadow tools (``useradd``, ``usermod``, ``chage``,
``chpasswd``, ``userdel``) and procps (``pgrep``, ``pkill``); only the account named
with :data:`~tether.agent.machine.effects.ACCOUNT_COMMENT` as its GECOS is ever changed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import re
import signal
import stat
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tether import log
from tether.agent.machine.effects import ACCOUNT_COMMENT, MachineError
from tether.agent.machine.files import Runner, fsync_dir, make_dir, output_of, remove_file

logger = logging.getLogger("tether.agent.machine")

#: How long :func:`kill_sessions` keeps killing before it gives up.
KILL_WINDOW = 1.0
#: ``userdel`` exit status: the user is still logged in / has processes.
_USERDEL_IN_USE = 8
#: ``userdel`` exit status: no such user.
_USERDEL_NO_USER = 6
_NO_LOGIN_SHELLS = ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false", "/usr/bin/false", "")


def lookup(account: str) -> pwd.struct_passwd | None:
    """Return the passwd entry of ``account``, or None if there is none."""
    try:
        return pwd.getpwnam(account)
    except KeyError:
        return None


def is_ours(entry: pwd.struct_passwd) -> bool:
    """Tell whether an account is Tether's (its GECOS is exactly ACCOUNT_COMMENT)."""
    return entry.pw_gecos == ACCOUNT_COMMENT


def conflict_message(account: str) -> str:
    """The refusal for a customer's own account that has the support account's name."""
    return (
        f"an account named {account} already exists and is not Tether's; "
        "choose another support_account in agent.toml"
    )


def other_login_user(account: str) -> str | None:
    """Pick one ordinary user with a login shell (lowest uid >= 1000), not ``account``.

    Its effective sshd settings are compared before and after opening, next to root's.
    """
    candidates = [
        entry
        for entry in pwd.getpwall()
        if 1000 <= entry.pw_uid < 65534
        and entry.pw_name != account
        and not is_ours(entry)
        and entry.pw_shell not in _NO_LOGIN_SHELLS
    ]
    return min(candidates, key=lambda e: e.pw_uid).pw_name if candidates else None


def expiry_date(expires_at: datetime) -> str:
    """The shadow expiry date for access ending at ``expires_at`` (``YYYY-MM-DD``).

    An account that expires "on day D" is unusable from the start of D (UTC), so the
    date is the day *after* ``expires_at``'s UTC date; the certificate and the timer
    end access at the exact time, the expiry date is the backstop.
    """
    return (expires_at.astimezone(UTC).date() + timedelta(days=1)).isoformat()


#: The title of sshd's privileged monitor process: one per connection of an account.
_TITLE = re.compile(r"sshd(?:-session)?: (?P<account>[a-z_][a-z0-9_-]{0,31}) \[priv\]")


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()


def _uid(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _pids() -> Iterator[int]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            yield int(entry.name)


def is_session_monitor(pid: int, account: str, sshd: Path) -> bool:
    """Tell whether ``pid`` is sshd's privileged monitor of one connection of ``account``."""
    match = _TITLE.fullmatch(_cmdline(pid))
    if match is None or match["account"] != account or _uid(pid) != 0 or not _alive(pid):
        return False
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    # OpenSSH 9.8+ runs sessions from a sibling binary (sshd-session) next to sshd.
    real = os.path.realpath(sshd)
    return exe == real or (Path(exe).parent == Path(real).parent and "sshd" in Path(exe).name)


class Accounts:
    """The shadow tools, for one machine."""

    def __init__(self, run: Runner) -> None:
        self._run = run

    def _check(self, argv: list[str], what: str, *, input: str | None = None) -> None:
        result = self._run(argv, input=input)
        if result.returncode != 0:
            raise MachineError(f"{what} failed: {output_of(result)}")

    def create(self, account: str, expires: str | None) -> None:
        """``useradd`` the support account (home, bash, Tether's GECOS, expiry)."""
        argv = ["useradd", "--create-home", "--shell", "/bin/bash", "--comment", ACCOUNT_COMMENT]
        if expires is not None:
            argv += ["--expiredate", expires]
        self._check([*argv, account], f"creating account {account} (useradd)")
        log.event(logger, "machine.account.created", account=account, expires=expires)

    def set_expiry(self, account: str, expires: str | None) -> None:
        """Set (or clear, for None) the account's expiry date."""
        self._check(
            ["chage", "--expiredate", expires if expires is not None else "-1", account],
            f"setting the expiry date of {account} (chage)",
        )

    def set_password(self, account: str, password: str | None) -> None:
        """Set the password through ``chpasswd``'s stdin, or make it unusable (``*``).

        ``*`` rather than a ``!`` lock: with ``UsePAM no`` sshd refuses a locked
        account even for certificate logins.
        """
        if password is None:
            self._check(
                ["usermod", "--password", "*", account], f"clearing the password of {account}"
            )
            return
        self._check(
            ["chpasswd"],
            f"setting the password of {account} (chpasswd)",
            input=f"{account}:{password}\n",
        )
        log.event(logger, "machine.account.password_set", account=account)

    def remove_new(self, account: str) -> None:
        """Remove an account this call has just created (rollback)."""
        self._check(["userdel", "--remove", account], f"removing account {account}")

    def lock(self, account: str) -> list[str]:
        """Lock the password and expire the account; return problems met.

        One ``usermod``: this runs before the account's sessions are killed, and every
        process started here delays the moment they are gone.
        """
        result = self._run(["usermod", "--lock", "--expiredate", "1", account])
        if result.returncode != 0:
            return [f"usermod --lock --expiredate failed: {output_of(result)}"]
        return []

    def delete(self, account: str, *, remove_home: bool) -> int:
        """``userdel`` the account; return its exit status."""
        argv = ["userdel", *(["--remove"] if remove_home else []), account]
        result = self._run(argv)
        if result.returncode not in (0, _USERDEL_NO_USER):
            log.event(
                logger,
                "machine.account.userdel_failed",
                level=logging.WARNING,
                account=account,
                status=result.returncode,
                error=output_of(result),
            )
        return result.returncode

    def archive_home(
        self, entry: pwd.struct_passwd, archive_dir: Path, notes: list[str]
    ) -> tuple[Path | None, bool]:
        """Archive the account's home as a 0600 tar.gz in ``archive_dir``.

        Returns the archive (None if there was no home to archive) and whether
        ``userdel --remove`` may delete the home: not if archiving failed, nor if the
        "home" is not a directory owned by the account.
        """
        home = Path(entry.pw_dir)
        try:
            info = home.lstat()
        except FileNotFoundError:
            return None, True
        if not stat.S_ISDIR(info.st_mode) or home == Path("/") or info.st_uid != entry.pw_uid:
            notes.append(f"home {home} is not a directory of {entry.pw_name}; kept, not archived")
            return None, False
        make_dir(archive_dir, 0o700)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        archive = _new_file(archive_dir, f"{entry.pw_name}-{stamp}", ".tar.gz")
        argv = ["tar", "--create", "--gzip", f"--file={archive}", "--one-file-system"]
        argv += ["--numeric-owner", f"--directory={home.parent}", "--", home.name]
        result = self._run(argv)
        if result.returncode not in (0, 1):  # 1: a file changed while it was read
            remove_file(archive)
            notes.append(f"archiving {home} failed ({output_of(result)}); the home was kept")
            return None, False
        fsync_dir(archive_dir)
        log.event(logger, "machine.account.home_archived", account=entry.pw_name, archive=archive)
        return archive, True

    # -- sessions -------------------------------------------------------------------

    def _pgrep(self, flag: str, account: str) -> set[int]:
        result = self._run(["pgrep", flag, account])
        return {int(word) for word in result.stdout.split() if word.isdigit()}

    def processes(
        self, account: str, uid: int, sshd: Path, sessions: set[int]
    ) -> tuple[set[int], set[int]]:
        """Live processes of the account: (by effective/real uid, the others).

        The others were started from the account's sessions under another uid
        (``sudo``): they carry its audit login uid (set by ``pam_loginuid``), or
        belong to a session led by one of its processes. ``sessions`` collects those
        session ids, so they are still known once their leaders are dead. sshd's own
        privileged monitor is left out: it exits when its child dies.
        """
        by_uid = {p for p in self._pgrep("-u", account) | self._pgrep("-U", account) if _alive(p)}
        sessions.update(p for p in by_uid if _session(p) == p)
        others: set[int] = set()
        me = os.getpid()
        sshd_exe = os.path.realpath(sshd)
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) in by_uid or int(entry.name) == me:
                continue
            pid = int(entry.name)
            if _session(pid) in sessions or (_loginuid(pid) == uid and _exe(pid) != sshd_exe):
                others.add(pid)
        return by_uid, others

    def kill_sessions(self, account: str, sshd: Path) -> int:
        """Kill every process of the account (Tether's only); return how many sessions ended.

        ``pkill -KILL`` by effective and by real uid, plus SIGKILL to the processes its
        sessions started as another user (see :meth:`processes`), in a loop until none is left or
        :data:`KILL_WINDOW` has passed. sshd's per-connection monitor then ends the
        connection by itself.
        """
        entry = lookup(account)
        if entry is None:
            return 0
        if not is_ours(entry):
            log.event(logger, "machine.sessions.not_ours", level=logging.WARNING, account=account)
            return 0
        if entry.pw_uid == 0 or sum(e.pw_uid == entry.pw_uid for e in pwd.getpwall()) > 1:
            # Killing by this uid would hit root's or another account's processes.
            log.event(
                logger,
                "machine.sessions.shared_uid",
                level=logging.CRITICAL,
                account=account,
                uid=entry.pw_uid,
            )
            raise MachineError(
                f"account {account} shares uid {entry.pw_uid} with another account; "
                "its sessions were not killed -- remove it by hand"
            )
        # What the customer is told is how many sessions (connections) ended, not how
        # many processes they had: one sshd monitor per connection.
        connections = {pid for pid in _pids() if is_session_monitor(pid, account, sshd)}
        killed: set[int] = set()
        sessions: set[int] = set()
        deadline = time.monotonic() + KILL_WINDOW
        while True:
            by_uid, others = self.processes(account, entry.pw_uid, sshd, sessions)
            if not by_uid and not others:
                break
            if time.monotonic() > deadline:
                log.event(
                    logger,
                    "machine.sessions.survivors",
                    level=logging.ERROR,
                    account=account,
                    pids=sorted(by_uid | others),
                )
                break
            if by_uid:
                self._run(["pkill", "-KILL", "-u", account])
                self._run(["pkill", "-KILL", "-U", account])
            for pid in others:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            killed |= by_uid | others
            time.sleep(0.01)
        if killed:
            log.event(
                logger,
                "machine.sessions.killed",
                account=account,
                sessions=len(connections),
                processes=len(killed),
            )
        return len(connections)


def _new_file(directory: Path, stem: str, suffix: str) -> Path:
    """Create a new empty 0600 file ``stem[-N]suffix`` in ``directory``; return it."""
    for n in range(100):
        path = directory / (f"{stem}{suffix}" if n == 0 else f"{stem}-{n}{suffix}")
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            continue
        return path
    raise MachineError(f"cannot create a new file named {stem}… in {directory}")


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: state, ppid, pgrp, session, ..."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return []


def _alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie waiting to be reaped."""
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] != "Z"


def _session(pid: int) -> int | None:
    """The session id of a live process (None if gone or a zombie)."""
    fields = _stat_fields(pid)
    return int(fields[3]) if len(fields) > 3 and fields[0] != "Z" else None


def _loginuid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/loginuid").read_text())
    except (OSError, ValueError):
        return None


def _exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None
