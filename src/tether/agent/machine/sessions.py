"""Live support sessions on this machine, and ending one of them.

Each SSH login of the support account is one privileged sshd monitor process, titled
``sshd: ACCOUNT [priv]`` (``sshd-session: …`` from OpenSSH 9.8 on), owned by root and
running sshd's own binary; its unprivileged child is titled ``ACCOUNT@pts/N`` or
``ACCOUNT@notty``. The monitor holds the client's TCP connection, whose source port
pairs it with sshd's ``Accepted … from ADDR port N …`` log line, which names the
engineer by the certificate's key id (:mod:`tether.agent.logins`). When the log does not
have that line any more the session is still listed, with the engineer unknown.

Only processes that pass all three checks (title, root, sshd's binary) are listed or
can be ended: a process of the support account that renames itself to look like a
monitor is not root and is ignored, so nobody can make the page kill something else.
Ending a session kills the monitor and every process below it (the shell, ``sudo``
and what it ran); sshd then closes the connection. Processes an engineer detached
from the session (``setsid``, double fork) survive that; closing access kills them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import signal
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from stat import S_ISREG as stat_is_regular

from tether.agent.logins import LoginEvent, LoginSources, read_logins
from tether.agent.machine.account import _alive, _cmdline, _pids, _stat_fields
from tether.agent.machine.account import is_session_monitor as _is_monitor
from tether.config import AgentConfig
from tether.errors import NotReady

_CHILD = re.compile(r"sshd(?:-session)?: (?P<account>[a-z_][a-z0-9_-]{0,31})@(?P<tty>\S+)")
_SOCKET = re.compile(r"socket:\[(\d+)\]")


@dataclass(frozen=True)
class SupportSession:
    """One live SSH session of the support account.

    :ivar pid: sshd's monitor process for the connection (what :func:`end_session` takes).
    :ivar since: when the connection was accepted (the monitor's start time, UTC).
    :ivar engineer: the certificate's key id from sshd's log, ``None`` if not found.
    :ivar source: the client address sshd saw (``127.0.0.1`` through a tether).
    :ivar source_port: the client's TCP port (pairs the session with the log line).
    :ivar port: the machine's port the session came in on (22 for SSH).
    :ivar tty: ``pts/N`` for an interactive shell, ``notty`` for a command or forwarding.
    """

    pid: int
    since: datetime | None
    engineer: str | None
    source: str | None
    source_port: int | None
    port: int
    tty: str | None


def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise NotReady("cannot read the boot time from /proc/stat")


def _started(pid: int, boot: float) -> datetime | None:
    fields = _stat_fields(pid)
    # starttime is field 22 of /proc/PID/stat; fields here start at field 3 (state).
    if len(fields) < 20:
        return None
    ticks = int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return datetime.fromtimestamp(boot + ticks, UTC).replace(microsecond=0)


def _peer(pid: int) -> tuple[str, int, int] | None:
    """The (remote address, remote port, local port) of the monitor's TCP connection."""
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in os.scandir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if m := _SOCKET.fullmatch(os.readlink(fd.path)):
                    inodes.add(m[1])
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[9] in inodes and cols[3] == "01":  # ESTABLISHED
                local_port = int(cols[1].rsplit(":", 1)[1], 16)
                address, port = cols[2].rsplit(":", 1)
                return _address(address), int(port, 16), local_port
    return None


def _address(hex_text: str) -> str:
    raw = bytes.fromhex(hex_text)
    # /proc/net/tcp* print each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(words)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _children(parents: dict[int, list[int]], pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        for child in parents.get(current, ()):
            out.append(child)
            todo.append(child)
    return out


def _process_tree() -> dict[int, list[int]]:
    parents: dict[int, list[int]] = {}
    for pid in _pids():
        fields = _stat_fields(pid)
        if len(fields) > 1:
            parents.setdefault(int(fields[1]), []).append(pid)
    return parents


def _engineer_for(events: list[LoginEvent], source: str, port: int) -> LoginEvent | None:
    for event in reversed(events):
        if event.kind == "login" and event.source == source and event.port == port:
            return event
    return None


def list_sessions(config: AgentConfig) -> list[SupportSession]:
    """The support account's live SSH sessions, oldest first (reads /proc and sshd's log)."""
    account, sshd = config.support_account, config.paths.sshd
    monitors = [pid for pid in _pids() if _is_monitor(pid, account, sshd)]
    if not monitors:
        return []
    boot = _boot_time()
    starts = [t for t in (_started(pid, boot) for pid in monitors) if t is not None]
    # Only the log since the oldest live session began (the page asks every few seconds).
    since = min(starts) - timedelta(minutes=1) if len(starts) == len(monitors) else None
    events = read_logins(account, sources=LoginSources(sshd_log=config.sshd_log), since=since)
    tree = _process_tree()
    sessions: list[SupportSession] = []
    for pid in monitors:
        peer = _peer(pid)
        login = _engineer_for(events, peer[0], peer[1]) if peer else None
        tty = None
        for child in tree.get(pid, ()):
            if (m := _CHILD.fullmatch(_cmdline(child))) and m["account"] == account:
                tty = m["tty"]
        sessions.append(
            SupportSession(
                pid=pid,
                since=_started(pid, boot),
                engineer=login.engineer if login else None,
                source=peer[0] if peer else None,
                source_port=peer[1] if peer else None,
                port=peer[2] if peer else 22,
                tty=tty,
            )
        )
    return sorted(sessions, key=lambda s: (s.since or datetime.min.replace(tzinfo=UTC), s.pid))


def end_session(config: AgentConfig, pid: int, *, within: float = 1.0) -> SupportSession:
    """End the support session whose sshd monitor is ``pid``; return what it was.

    Raises :class:`NotReady` if ``pid`` is not (or no longer) a support session.
    Kills the monitor and everything below it with SIGKILL and waits up to ``within``
    seconds for them to be gone.
    """
    found = next((s for s in list_sessions(config) if s.pid == pid), None)
    if found is None:
        raise NotReady(f"there is no live support session {pid} (it may have ended already)")
    victims = [pid, *_children(_process_tree(), pid)]
    for victim in victims:
        with contextlib.suppress(OSError):
            os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + within
    while any(_alive(v) for v in victims) and time.monotonic() < deadline:
        time.sleep(0.01)
    return found


#: The kernel's table of file locks (proc(5)): who holds which inode's lock.
PROC_LOCKS = Path("/proc/locks")


def recorder_of(recording: Path) -> int | None:
    """The process that holds the recorder's lock on ``recording`` (its ``.cast.gz``).

    A recorder takes an exclusive ``flock`` on its recording when it creates it and
    keeps it until the session ends, and the kernel says which process took it. The
    recording's metadata names a pid too, but the support account can rewrite that file
    (and could point the page's End session at another of its sessions); it cannot take
    a lock the recorder holds. None: no live recorder holds it (or ``recording`` is not
    a regular file).
    """
    try:
        st = os.stat(recording, follow_symlinks=False)
        table = PROC_LOCKS.read_text()
    except OSError:
        return None
    if not stat_is_regular(st.st_mode):
        return None
    for line in table.splitlines():
        # "1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234567 0 EOF"; a waiter has "->".
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK" or fields[3] != "WRITE" or "->" in fields:
            continue
        pid, where = fields[4], fields[5]
        # Inode numbers repeat across file systems: the holder must have this file open.
        if (
            pid.isdigit()
            and where.rsplit(":", 1)[-1] == str(st.st_ino)
            and _holds_open(int(pid), (st.st_dev, st.st_ino))
        ):
            return int(pid)
    return None


def _holds_open(pid: int, file: tuple[int, int]) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            st = os.stat(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == file:
            return True
    return False


def monitor_of(pid: int, monitors: set[int], *, depth: int = 8) -> int | None:
    """The sshd monitor in ``monitors`` that ``pid`` runs under, if any.

    Walks up the parents of ``pid`` at most ``depth`` steps; only a monitor that
    :func:`list_sessions` verified can be the answer. For a recording, ``pid`` is
    :func:`recorder_of`'s.
    """
    for _ in range(depth):
        if pid in monitors:
            return pid
        fields = _stat_fields(pid)
        if len(fields) < 2 or not fields[1].isdigit() or int(fields[1]) <= 1:
            return None
        pid = int(fields[1])
    return None
