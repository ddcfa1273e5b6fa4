"""The session recorder: sshd's ForceCommand for the support account (stdlib only).

sshd runs ``python -m tether.agent.recording.recorder --dir DIR --serial S …`` as the support
account for every session (ForceCommand), with the engineer's own request in
``SSH_ORIGINAL_COMMAND`` and, thanks to ``ExposeAuthInfo``, the engineer's certificate
in the file named by ``SSH_USER_AUTH``. The recorder:

1. creates the session's recording (:mod:`tether.agent.recording.catalog`) *before running
   anything*; if it cannot (directory missing or unwritable, disk full), it refuses
   the session with one line on stderr -- unless started with ``--fail open``, which
   runs the session unrecorded and says so on stderr and in syslog;
2. runs what was asked (:func:`~tether.agent.recording.recorder.context.plan_session`): on a terminal
   the login shell or ``shell -c COMMAND`` on a new pty of the same size and modes,
   passing window size changes on (SIGWINCH) and recording them; without a terminal
   the command with its stdin untouched and its stdout/stderr copied through; an
   SFTP subsystem through the real ``sftp-server`` with the packets followed; legacy
   ``scp -t/-f`` with the file names and sizes followed;
3. records output only (never typed input: it would hold passwords), up to
   ``--max-bytes``, as asciicast v2 flushed every second;
4. exits with the session's exit status (128+N when a signal N ended it).

A grant with limits adds ``--no-shell``, ``--files``, ``--max-time`` (and ``--no-sudo``,
only to tell the engineer): the recorder refuses what the grant does not allow with
the reason on stderr (:func:`~tether.agent.recording.recorder.context.apply_limits`)
and ends a session whose time is up (SIGHUP, then SIGKILL after :data:`KILL_GRACE`).

It holds an exclusive ``flock`` on its ``.cast.gz`` for its whole life: the agent
daemon knows a session is over when that lock is free, even if the recorder was
killed. This file runs under whatever Python sshd finds (often the system's): it uses
the standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pwd
import select
import signal
import subprocess
import sys
import termios
import time
import tty
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.agent.recording.recorder.cast import (
    header,
    new_recording_id,
    open_new,
)
from tether.agent.recording.recorder.consent import wait_for_consent
from tether.agent.recording.recorder.context import (
    ScpLog,
    SessionPlan,
    apply_limits,
    find_sftp_server,
    plan_session,
    read_engineer,
    scp_program,
    time_up_message,
)
from tether.agent.recording.recorder.options import REFUSED, USAGE, parse_args
from tether.agent.recording.recorder.sink import Recording, Sink, Unrecorded
from tether.agent.recording.recorder.terminal import (
    default_signals,
    exit_status,
    set_winsize,
    winsize,
    write_all,
)

if TYPE_CHECKING:
    from tether.agent.recording.recorder.sftp_log import SftpLog

#: Seconds a session whose time is up has to end after SIGHUP before it is killed.
KILL_GRACE = 2.0
_CHUNK = 65536


class _Signals:
    """Wakes the copy loop on SIGWINCH / SIGHUP / SIGTERM / SIGCHLD / SIGALRM (self-pipe).

    ``max_time`` (seconds, 0 for none) arms SIGALRM: the grant's longest session.
    """

    def __init__(self, max_time: int = 0) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.seen: set[int] = set()
        signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)
        for sig in (signal.SIGWINCH, signal.SIGHUP, signal.SIGTERM, signal.SIGCHLD, signal.SIGALRM):
            signal.signal(sig, self._note)
        self.max_time = max_time
        #: When the session, told to end (time is up), is killed if still there.
        self.kill_at: float | None = None
        if max_time > 0:
            signal.alarm(max_time)

    def time_up(self, say: int, group: int) -> None:
        """The grant's session length is reached: tell the engineer (on fd ``say``) and
        hang up process group ``group``; :meth:`enforce` kills it if it stays."""
        with contextlib.suppress(OSError):
            write_all(say, f"\r\ntether: {time_up_message(self.max_time)}\r\n".encode())
        with contextlib.suppress(OSError):
            os.killpg(group, signal.SIGHUP)
        self.kill_at = time.monotonic() + KILL_GRACE

    def enforce(self, group: int) -> None:
        """Kill process group ``group`` once the grace after :meth:`time_up` is over."""
        if self.kill_at is not None and time.monotonic() > self.kill_at:
            with contextlib.suppress(OSError):
                os.killpg(group, signal.SIGKILL)

    def _note(self, signum: int, frame: object) -> None:
        self.seen.add(signum)

    def take(self) -> set[int]:
        with contextlib.suppress(OSError):
            while os.read(self.read_fd, 512):
                pass
        seen, self.seen = self.seen, set()
        return seen


def run_pty(plan: SessionPlan, sink: Sink, columns: int, rows: int, max_time: int = 0) -> int:
    """Run ``plan`` on a new pty sized like ours, copying both ways; return its status.

    ``max_time`` (seconds, 0 for none) ends the session when it has run that long.
    """
    saved = termios.tcgetattr(0)
    master, slave = os.openpty()
    termios.tcsetattr(slave, termios.TCSANOW, saved)
    set_winsize(slave, columns, rows)
    signals = _Signals(max_time)
    pid = os.fork()
    if pid == 0:  # the session's process: new session, the new pty as its terminal
        try:
            os.close(master)
            os.setsid()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
            for fd in (0, 1, 2):
                os.dup2(slave, fd)
            if slave > 2:
                os.close(slave)
            signal.set_wakeup_fd(-1)
            default_signals()
            signal.signal(signal.SIGWINCH, signal.SIG_DFL)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.execv(plan.argv[0], [plan.argv0, *plan.argv[1:]])  # noqa: S606 - as sshd would
        except OSError as exc:
            os.write(2, f"tether: cannot run {plan.argv[0]}: {exc.strerror}\r\n".encode())
        os._exit(127)
    os.close(slave)
    os.set_blocking(master, False)
    tty.setraw(0, termios.TCSANOW)
    status: int | None = None
    try:
        status = _pty_loop(pid, master, signals, sink)
    finally:
        with contextlib.suppress(termios.error):
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
        os.close(master)
    return status


def _pty_loop(pid: int, master: int, signals: _Signals, sink: Sink) -> int:
    pending = bytearray()
    reading_stdin = True
    status: int | None = None
    drain_until: float | None = None
    while True:
        readers = [signals.read_fd, master]
        live = sink.live_fd()
        if live is not None:
            readers.append(live)
        if reading_stdin and len(pending) < 4 * _CHUNK:
            readers.append(0)
        writers = [master] if pending else []
        timeout = 0.05 if drain_until is not None else 1.0
        readable, writable, _ = select.select(readers, writers, [], timeout)
        for sig in signals.take():
            if sig == signal.SIGWINCH:
                with contextlib.suppress(OSError):
                    columns, rows = winsize(0)
                    set_winsize(master, columns, rows)
                    sink.resize(columns, rows)
            elif sig in (signal.SIGHUP, signal.SIGTERM):
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGHUP)
            elif sig == signal.SIGALRM:
                signals.time_up(1, pid)
        signals.enforce(pid)
        if master in readable:
            try:
                data = os.read(master, _CHUNK)
            except BlockingIOError:
                data = b""
            except OSError:  # EIO: every holder of the pty's other side is gone
                break
            if data:
                try:
                    write_all(1, data)
                except OSError:  # our terminal is gone: hang the session up
                    reading_stdin = False
                    with contextlib.suppress(OSError):
                        os.killpg(pid, signal.SIGHUP)
                sink.output(data)
                if drain_until is not None:
                    drain_until = time.monotonic() + 0.05
        if live is not None and live in readable:
            sink.accept_watchers()
        if 0 in readable:
            try:
                data = os.read(0, _CHUNK)
            except OSError:
                data = b""
            if data:
                pending += data
            else:
                reading_stdin = False
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGHUP)
        if master in writable and pending:
            try:
                pending = pending[os.write(master, pending) :]
            except BlockingIOError:
                pass
            except OSError:
                pending.clear()
        sink.tick()
        if status is None:
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                status = raw
                # Others may still hold the pty (a background job): take what is
                # already there, then end like sshd does when the shell exits.
                drain_until = time.monotonic() + 0.05
        if (
            drain_until is not None
            and time.monotonic() > drain_until
            and not (set(readable) - {live})
        ):
            break
    if status is None:
        _, status = os.waitpid(pid, 0)
    return exit_status(status)


def _copy_loop(
    proc: subprocess.Popen[bytes],
    streams: dict[int, tuple[int, Any]],
    stdin_to: int | None,
    on_input: Any,
    signals: _Signals,
    sink: Sink,
    moving: Callable[[], list[dict[str, Any]]] | None = None,
) -> None:
    """Copy each child pipe in ``streams`` (fd -> (our fd, callback)) until all are shut.

    With ``stdin_to``, our stdin is copied to that fd (its bytes passed to ``on_input``)
    and the fd closed at our stdin's end. ``sink.tick`` is called at least every second,
    so output recorded before a long quiet spell is flushed even if the session is
    killed; so is ``moving`` (the files being transferred now, for the live view).
    """
    open_out = dict(streams)
    reading_stdin = stdin_to is not None
    live = sink.live_fd()
    ticked = time.monotonic()
    while open_out or reading_stdin:
        readers = [signals.read_fd, *open_out]
        if reading_stdin:
            readers.append(0)
        if live is not None:
            readers.append(live)
        readable, _, _ = select.select(readers, [], [], 1.0)
        sink.tick()
        if live is not None and live in readable:
            sink.accept_watchers()
        now = time.monotonic()
        if moving is not None and (now - ticked >= 1.0 or live in readable):
            ticked = now
            sink.transfers(moving())
        for sig in signals.take():
            if sig in (signal.SIGHUP, signal.SIGTERM):
                with contextlib.suppress(OSError):
                    proc.send_signal(sig)
            elif sig == signal.SIGALRM:
                signals.time_up(2, proc.pid)
        signals.enforce(proc.pid)
        for fd in readable:
            if fd == live:
                continue
            if fd == 0 and stdin_to is not None:
                try:
                    data = os.read(0, _CHUNK)
                except OSError:
                    data = b""
                if data:
                    on_input(data)
                    try:
                        write_all(stdin_to, data)
                    except OSError:
                        data = b""
                if not data:
                    reading_stdin = False
                    with contextlib.suppress(OSError):
                        os.close(stdin_to)
            elif fd in open_out:
                ours, callback = open_out[fd]
                try:
                    data = os.read(fd, _CHUNK)
                except OSError:
                    data = b""
                if data:
                    callback(data)
                    try:
                        write_all(ours, data)
                    except OSError:  # our side is gone: let the program see a broken pipe
                        data = b""
                if not data:
                    del open_out[fd]
                    os.close(fd)
        if not open_out and proc.poll() is not None and reading_stdin:
            reading_stdin = False  # nobody left to read it
            with contextlib.suppress(OSError):
                os.close(stdin_to)  # type: ignore[arg-type]


def run_pipes(
    plan: SessionPlan,
    sink: Sink,
    sftp: SftpLog | None = None,
    scp: ScpLog | None = None,
    max_time: int = 0,
) -> int:
    """Run ``plan`` without a terminal; return its exit status.

    A command's stdin is its own (never read by the recorder); its stdout and stderr
    are copied through and recorded. sftp and scp sessions have their stdin proxied
    too, so the transfer can be followed; their data is not recorded. The program
    leads its own process group, so that ``max_time`` (seconds, 0 for none) ends all
    of it.
    """
    signals = _Signals(max_time)
    proxy_stdin = sftp is not None or scp is not None
    proc = subprocess.Popen(
        [plan.argv0, *plan.argv[1:]],
        executable=plan.argv[0],
        stdin=subprocess.PIPE if proxy_stdin else None,
        stdout=subprocess.PIPE,
        stderr=None if proxy_stdin else subprocess.PIPE,
        process_group=0,
    )
    if proc.stdout is None:  # pragma: no cover - stdout=PIPE always sets it
        raise OSError("no pipe from the session's program")
    out = os.dup(proc.stdout.fileno())
    proc.stdout.close()
    streams: dict[int, tuple[int, Any]]
    if sftp is not None:
        streams = {out: (1, sftp.server_data)}
        on_input: Any = sftp.client_data
    elif scp is not None:
        streams = {out: (1, scp.feed if plan.scp_mode == "f" else _ignore)}
        on_input = scp.feed if plan.scp_mode == "t" else _ignore
    else:
        if proc.stderr is None:  # pragma: no cover - stderr=PIPE always sets it
            raise OSError("no pipe from the session's program")
        err = os.dup(proc.stderr.fileno())
        proc.stderr.close()
        streams = {out: (1, sink.output), err: (2, sink.output)}
        on_input = _ignore
    stdin_to = None
    if proc.stdin is not None:
        stdin_to = os.dup(proc.stdin.fileno())
        proc.stdin.close()
    moving = sftp.moving if sftp is not None else scp.moving if scp is not None else None
    _copy_loop(proc, streams, stdin_to, on_input, signals, sink, moving)
    return _returncode(proc)


def _returncode(proc: subprocess.Popen[bytes]) -> int:
    code = proc.wait()
    return 128 - code if code < 0 else code


def _ignore(data: bytes) -> None:
    pass


def _failed(sink: Sink, error: str) -> None:
    """Note in the recording's metadata that its session failed (the agent counts these)."""
    if isinstance(sink, Recording):
        sink.meta["error"] = error[:500]


def _refuse(message: str) -> int:
    with contextlib.suppress(OSError):
        os.write(2, f"tether: session refused: {message}\r\n".encode())
    return REFUSED


def _trace_unrecorded(reason: str, engineer: str) -> None:
    """Leave a trace of a session that runs unrecorded (``--fail open``)."""
    with contextlib.suppress(OSError):
        os.write(2, f"tether: warning: this session is NOT recorded ({reason})\r\n".encode())
    with contextlib.suppress(Exception):
        import syslog

        syslog.openlog("tether-recorder", 0, syslog.LOG_AUTHPRIV)
        syslog.syslog(syslog.LOG_WARNING, f"support session of {engineer} NOT recorded: {reason}")


def _check(directory: Path) -> int:
    """Make and remove a file in ``directory`` as this account; say why not if it fails."""
    probe = directory / f".check-{os.getpid()}"
    try:
        os.close(open_new(str(probe)))
        os.unlink(probe)
    except OSError as exc:
        print(f"cannot record in {directory}: {exc.strerror or exc}", file=sys.stderr)
        return REFUSED
    return 0


def main(argv: list[str] | None = None) -> int:
    """Record one session as described in the module docstring; return its exit status."""
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        print(f"tether recorder: {exc}\n{USAGE}", file=sys.stderr)
        return REFUSED
    if args.dir is None:  # pragma: no cover - parse_args refuses it
        return REFUSED
    if args.check:
        return _check(args.dir)
    environ = dict(os.environ)
    account = pwd.getpwuid(os.getuid())
    command = environ.get("SSH_ORIGINAL_COMMAND") or None
    sftp_server = args.sftp_server or find_sftp_server()
    plan = plan_session(account.pw_shell, command, sftp_server)
    engineer = read_engineer(environ)
    on_tty = os.isatty(0) and plan.kind in ("shell", "command")
    columns, rows = winsize(0) if on_tty else (80, 24)
    now = datetime.now(UTC)
    recording_id = new_recording_id(now)
    meta: dict[str, Any] = {
        "version": 1,
        "id": recording_id,
        "status": "live",
        "engineer": engineer,
        "serial": args.serial,
        "account": account.pw_name,
        "kind": plan.kind,
        "command": command,
        "tty": on_tty,
        "started": now.isoformat(),
        "client": environ.get("SSH_CONNECTION", "").split(" ")[0],
        "pid": os.getpid(),
    }
    if args.consent_dir is not None:
        # In the first metadata already: the agent announces a login that waits.
        meta["consent"] = {"state": "waiting"}
    head = header(
        columns,
        rows,
        now.timestamp(),
        {"TERM": environ.get("TERM", ""), "SHELL": account.pw_shell},
        {k: meta[k] for k in ("id", "engineer", "serial", "account", "kind", "command")},
    )
    sink: Sink
    try:
        if not args.dir.is_dir():
            raise FileNotFoundError(errno.ENOENT, "no such directory", str(args.dir))
        sink = Recording(args.dir, meta, head, max(0, args.max_bytes))
    except OSError as exc:
        reason = f"cannot record ({exc.strerror or exc}: {args.dir})"
        if args.fail == "closed":
            return _refuse(reason)
        _trace_unrecorded(reason, engineer)
        sink = Unrecorded()
    if plan.kind == "sftp" and sftp_server is None:
        _failed(sink, "no sftp-server on this machine")
        sink.finish(REFUSED, [], ["no sftp-server on this machine"])
        return _refuse("no sftp-server found for SFTP")
    limited, refusal = apply_limits(
        plan, allow_shell=args.shell, files=args.files, scp=scp_program()
    )
    if limited is None:
        sink.finish(REFUSED, [], [f"refused: {refusal}"])
        return _refuse(refusal or "not allowed by this support grant")
    plan = limited
    if args.consent_dir is not None:
        decision = wait_for_consent(
            args.consent_dir,
            recording_id,
            args.consent_timeout,
            lambda text: write_all(2, text.encode()),
            admit_on_timeout=args.consent_on_timeout == "admit",
        )
        if isinstance(sink, Recording):
            sink.meta["consent"] = decision.to_json()
            with contextlib.suppress(OSError):
                sink.write_meta()
        if not decision.admitted:
            sink.finish(REFUSED, [], [f"refused by {decision.by}: {decision.reason}"])
            why = decision.reason if decision.by == "timeout" else "the customer refused it"
            if decision.reason and decision.by != "timeout":
                why += f" ({decision.reason})"
            return _refuse(why)
        with contextlib.suppress(OSError):
            write_all(2, b"\r\ntether: the customer admitted you\r\n")
    if on_tty and plan.kind == "shell" and args.limits():
        with contextlib.suppress(OSError):
            write_all(1, f"tether: this grant's limits: {'; '.join(args.limits())}\r\n".encode())
    transfers: list[dict[str, Any]] = []
    notes: list[str] = []
    status = REFUSED
    try:
        if plan.kind == "sftp":
            from tether.agent.recording.recorder.sftp_log import (
                SftpLog,  # only SFTP sessions pay for it
            )

            sftp = SftpLog()
            status = run_pipes(plan, sink, sftp=sftp, max_time=args.max_time)
            transfers = [t.to_json() for t in sftp.transfers]
            if sftp.dropped:
                notes.append(f"{sftp.dropped} more transfers not listed")
        elif plan.kind == "scp":
            scp = ScpLog("upload" if plan.scp_mode == "t" else "download")
            status = run_pipes(plan, sink, scp=scp, max_time=args.max_time)
            transfers = list(scp.files)
            if scp.dropped:
                notes.append(f"{scp.dropped} more files not listed")
        elif on_tty:
            status = run_pty(plan, sink, columns, rows, args.max_time)
        else:
            status = run_pipes(plan, sink, max_time=args.max_time)
    except OSError as exc:
        _failed(sink, f"session failed: {exc}")
        notes.append(f"session failed: {exc}")
        with contextlib.suppress(OSError):
            os.write(2, f"tether: cannot run the session: {exc}\r\n".encode())
        status = 127
    finally:
        sink.finish(status, transfers, notes)
    return status
