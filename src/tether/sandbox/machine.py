"""The host side of a sandbox: start, enter and stop a private "customer machine".

A :class:`Sandbox` is a set of Linux namespaces (mount, network, pid, UTS) made by
``unshare`` whose pid 1 is :mod:`tether.sandbox.init`. Inside, ``useradd``, ``sudo`` and a
real stock ``sshd`` run against a private copy of /etc and private /home, /run, /var/log,
/var/lib/tether... kept in the caller's workdir; the host's files are never written. The
machine has only a loopback interface; optional *uplinks* (:mod:`tether.sandbox.uplink`)
let it connect out to chosen ports of the host's 127.0.0.1 (e.g. a relay).

Lifetime: init and the host-side forwarder each read a pipe from this process and quit
at EOF, so they end with ``stop()`` *or* when this process dies. When init ends,
``unshare --kill-child`` and the pid namespace take every process inside with it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, overload

import tether
from tether.errors import NotReady
from tether.sandbox import layout

SSHD = "/usr/sbin/sshd"
_NEEDED_TOOLS = ("unshare", "nsenter", "setpriv", "cp")
_SANE_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
_UNSHARE_FLAGS = ("--mount", "--net", "--pid", "--uts", "--fork", "--kill-child", "--mount-proc")
_NSENTER_FLAGS = ("-m", "-n", "-p", "-u")


class SandboxUnavailable(NotReady):
    """A sandbox cannot be made on this host; the message says why and what to do."""


@functools.cache
def _probe_namespaces() -> str | None:
    try:
        result = subprocess.run(
            ["unshare", *_UNSHARE_FLAGS, "true"], capture_output=True, text=True, timeout=15
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot run unshare: {exc}"
    if result.returncode != 0:
        return f"namespaces are not permitted here (unshare: {result.stderr.strip()})"
    return None


def sandbox_unavailable_reason(*, need_sshd: bool = True) -> str | None:
    """Return why no sandbox can be made here, or ``None`` if one can.

    Checks: Linux, root, util-linux tools (``unshare``, ``nsenter``, ``setpriv``), the
    OpenSSH server (unless ``need_sshd`` is false) and a trial ``unshare`` of the
    namespaces a sandbox uses (cached for the life of the process).
    """
    if not sys.platform.startswith("linux"):
        return f"sandboxes need Linux namespaces (this is {sys.platform})"
    if os.geteuid() != 0:
        return f"sandboxes need root (running as uid {os.geteuid()}); run as root"
    missing = [tool for tool in _NEEDED_TOOLS if shutil.which(tool, path=_path()) is None]
    if missing:
        return f"{', '.join(missing)} not found; install util-linux and coreutils"
    if need_sshd and not (os.access(SSHD, os.X_OK) and shutil.which("ssh-keygen", path=_path())):
        return f"OpenSSH server not found ({SSHD}); apt-get install openssh-server"
    return _probe_namespaces()


def _path(current: str | None = None) -> str:
    """Return ``current`` (default: this process's PATH) with the usual dirs appended."""
    parts = [p for p in (current or os.environ.get("PATH", "")).split(os.pathsep) if p]
    return os.pathsep.join(parts + [p for p in _SANE_PATH if p not in parts])


def _environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the environment for processes inside: given or ours, sane PATH, tether importable."""
    result = dict(os.environ if env is None else env)
    result["PATH"] = _path(result.get("PATH"))
    src = str(Path(tether.__file__).resolve().parent.parent)
    paths = [p for p in result.get("PYTHONPATH", "").split(os.pathsep) if p]
    result["PYTHONPATH"] = os.pathsep.join([*paths, src] if src not in paths else paths)
    return result


def _read_line(stream: IO[bytes], timeout: float) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline().decode(errors="replace").strip() if ready else ""


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                status = (entry / "status").read_text()
                if f"\nPPid:\t{pid}\n" in status:
                    found.append(int(entry.name))
    return found


def _gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" in status


class Sandbox:
    """A private machine on this host (see the module docstring).

    Args:
        workdir: where everything the sandbox writes goes (created if missing; must not
            hold a previous sandbox, and must not be under /etc, /home, /run...).
        hostname: the machine's host name (e.g. its serial number).
        uplink_ports: host loopback TCP ports the machine may connect to at the same
            port on its own 127.0.0.1.
        start_sshd: start the stock sshd on the machine's 127.0.0.1:22.
        use_pam: ``UsePAM yes`` (Debian's default) in the machine's sshd_config.
        private_tmp: give the machine its own /tmp and /var/tmp, as a real machine has
            (``tether demo``: an engineer's ``scp FILE SERIAL:/tmp/`` stays on the
            machine). Off by default so that tests can hand the machine files from
            their tmp_path; with it, paths under the host's /tmp are not seen inside.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        hostname: str = "machine",
        uplink_ports: Sequence[int] = (),
        start_sshd: bool = True,
        use_pam: bool = True,
        private_tmp: bool = False,
    ) -> None:
        self.workdir = layout.check_workdir(Path(workdir))
        self.hostname = layout.check_hostname(hostname)
        ports = sorted(set(uplink_ports))
        for port in ports:
            if not 0 < port < 65536:
                raise ValueError(f"uplink port {port} is not a TCP port")
        if start_sshd and 22 in ports:
            raise ValueError("uplink port 22 would clash with the machine's own sshd")
        self.uplink_ports: tuple[int, ...] = tuple(ports)
        self.start_sshd = start_sshd
        self.use_pam = use_pam
        self.private_tmp = private_tmp
        self._unshare: subprocess.Popen[bytes] | None = None
        self._uplink: subprocess.Popen[bytes] | None = None
        self._logs: list[IO[bytes]] = []
        self._pid: int | None = None

    # -- life cycle -----------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> None:
        """Build the machine and wait until it is ready (sshd answering, uplinks up).

        Raises:
            SandboxUnavailable: this host cannot make sandboxes (not root, no unshare...).
            RuntimeError: the machine failed to come up; the message holds init's log.
        """
        reason = sandbox_unavailable_reason(need_sshd=self.start_sshd)
        if reason is not None:
            raise SandboxUnavailable(reason)
        if self._unshare is not None:
            raise RuntimeError("this sandbox was already started")
        root = self.workdir / layout.ROOT_DIRNAME
        if root.exists():
            raise RuntimeError(f"{self.workdir} already holds a sandbox; remove it first")
        self.workdir.mkdir(parents=True, exist_ok=True)
        sockets = root / layout.UPLINK_SOCKET_DIR.lstrip("/")
        sockets.mkdir(parents=True)
        deadline = time.monotonic() + timeout
        try:
            if self.uplink_ports:
                self._start_host_uplink(sockets, timeout)
            self._start_init()
            self._wait_ready(deadline)
        except BaseException:
            self.stop()
            raise

    def _open_log(self, name: str) -> IO[bytes]:
        log = (self.workdir / name).open("ab")
        self._logs.append(log)
        return log

    def _start_host_uplink(self, sockets: Path, timeout: float) -> None:
        argv = [sys.executable, "-m", "tether.sandbox.uplink", "host", "--exit-on-stdin-eof"]
        argv += ["--socket-dir", str(sockets)]
        for port in self.uplink_ports:
            argv += ["--port", str(port)]
        self._uplink = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._open_log(layout.UPLINK_HOST_LOG_NAME),
            env=_environment(),
            cwd="/",
            start_new_session=True,
        )
        if self._uplink.stdout is None:  # pragma: no cover - stdout=PIPE always sets it
            raise RuntimeError("no pipe to the host uplink forwarder")
        line = _read_line(self._uplink.stdout, timeout)
        if line != layout.READY_LINE:
            log = (self.workdir / layout.UPLINK_HOST_LOG_NAME).read_text(errors="replace")
            raise RuntimeError(f"host uplink forwarder did not start:\n{log}")

    def _start_init(self) -> None:
        argv = ["unshare", *_UNSHARE_FLAGS, sys.executable, "-m", "tether.sandbox.init"]
        argv += ["--workdir", str(self.workdir), "--hostname", self.hostname]
        for port in self.uplink_ports:
            argv += ["--uplink-port", str(port)]
        if not self.start_sshd:
            argv.append("--no-sshd")
        if not self.use_pam:
            argv.append("--no-pam")
        if self.private_tmp:
            argv.append("--private-tmp")
        log = self._open_log(layout.INIT_LOG_NAME)
        self._unshare = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=log,
            env=_environment(),
            cwd="/",
            start_new_session=True,
        )

    def _wait_ready(self, deadline: float) -> None:
        if self._unshare is None:  # pragma: no cover - called after _start_init
            raise RuntimeError("sandbox not started")
        ready = self.workdir / layout.READY_NAME
        while not ready.exists():
            if self._unshare.poll() is not None:
                raise RuntimeError(
                    f"sandbox init exited with status {self._unshare.returncode}:\n"
                    + self.init_log()
                )
            if time.monotonic() > deadline:
                raise RuntimeError("sandbox did not become ready in time:\n" + self.init_log())
            time.sleep(0.02)
        children = _children(self._unshare.pid)
        if len(children) != 1:
            raise RuntimeError(f"cannot find the sandbox's init (children: {children})")
        self._pid = children[0]

    def stop(self) -> None:
        """Stop the machine: every process inside and the host forwarder end.

        Safe to call more than once, and on a sandbox that failed to start. The workdir
        stays (logs, homes...) and can be removed afterwards.
        """
        for process, grace in ((self._unshare, 5.0), (self._uplink, 2.0)):
            if process is None:
                continue
            if process.stdin is not None and not process.stdin.closed:
                with contextlib.suppress(OSError):
                    process.stdin.close()
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                # unshare blocks SIGTERM; SIGKILL makes --kill-child kill init, which
                # takes the whole pid namespace down.
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
        if self._pid is not None:
            deadline = time.monotonic() + 5
            while not _gone(self._pid) and time.monotonic() < deadline:
                time.sleep(0.01)
        for log in self._logs:
            log.close()
        self._logs.clear()
        self._pid = None

    def __enter__(self) -> Sandbox:
        """Start the sandbox (if not yet started) and return it."""
        if self._unshare is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the sandbox."""
        self.stop()

    # -- state ----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the machine is up (started, not stopped, init alive)."""
        return self._pid is not None and self._unshare is not None and self._unshare.poll() is None

    @property
    def pid(self) -> int:
        """Host pid of the namespace init (pid 1 inside), for ``nsenter -t``."""
        if self._pid is None:
            raise RuntimeError("the sandbox is not running")
        return self._pid

    @property
    def sshd_pid(self) -> int | None:
        """Host pid of the machine's sshd listener, or ``None`` if it is not running.

        (Inside, the pid is in ``/run/sshd.pid``.) The pid is the same after a SIGHUP
        reload, which re-executes sshd in place.
        """
        if not (self.running and self.start_sshd):
            return None
        try:
            inner = int(self.host_path(layout.SSHD_PID_FILE).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return self._host_pid(inner)

    def _host_pid(self, inner: int) -> int | None:
        """Map a pid inside the sandbox to its pid on the host."""
        try:
            namespace = os.readlink(f"/proc/{self.pid}/ns/pid")
        except OSError:
            return None
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if os.readlink(entry / "ns" / "pid") != namespace:
                    continue
                for line in (entry / "status").read_text().splitlines():
                    if line.startswith("NSpid:") and line.split()[-1] == str(inner):
                        return int(entry.name)
        return None

    def init_log(self) -> str:
        """Return the init's log (how the machine was built, and any failure)."""
        with contextlib.suppress(OSError):
            return (self.workdir / layout.INIT_LOG_NAME).read_text(errors="replace")
        return ""

    def sshd_log(self) -> str:
        """Return the contents of the machine's /var/log/sshd.log ("" if none yet)."""
        with contextlib.suppress(OSError):
            return self.host_path(layout.SSHD_LOG_FILE).read_text(errors="replace")
        return ""

    def host_path(self, inside_path: str) -> Path:
        """Return where ``inside_path`` (in a private tree) is kept on the host.

        Private trees: /etc (a copy), /home, /root/.ssh, /run, /var/lib/sudo,
        /var/lib/tether, /var/log, /var/mail, and with ``private_tmp`` /tmp and
        /var/tmp. Reading there needs no ``nsenter``.

        Raises:
            ValueError: ``inside_path`` is shared with the host or not absolute.
        """
        return layout.host_path(self.workdir, inside_path, private_tmp=self.private_tmp)

    # -- running things inside -------------------------------------------------------

    def command(self, argv: Sequence[str], *, cwd: str | None = None) -> list[str]:
        """Return ``argv`` wrapped to run inside the machine (for your own ``Popen``).

        The command runs in the machine's namespaces (``nsenter``), in ``cwd`` inside
        (default ``/``), and gets SIGTERM if the wrapper is killed (``setpriv
        --pdeathsig``; lost across set-uid programs), so ``Popen.terminate()`` works.
        """
        wrapper = ["nsenter", "-t", str(self.pid), *_NSENTER_FLAGS]
        if cwd is not None:
            wrapper.append(f"--wdns={cwd}")
        return [*wrapper, "--", "setpriv", "--pdeathsig", "TERM", "--", *argv]

    @overload
    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | str | None = None,
        timeout: float = 60,
        check: bool = False,
        env: Mapping[str, str] | None = None,
        text: Literal[True] = True,
        cwd: str | None = None,
    ) -> subprocess.CompletedProcess[str]: ...

    @overload
    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | str | None = None,
        timeout: float = 60,
        check: bool = False,
        env: Mapping[str, str] | None = None,
        text: Literal[False],
        cwd: str | None = None,
    ) -> subprocess.CompletedProcess[bytes]: ...

    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | str | None = None,
        timeout: float = 60,
        check: bool = False,
        env: Mapping[str, str] | None = None,
        text: bool = True,
        cwd: str | None = None,
    ) -> subprocess.CompletedProcess[str] | subprocess.CompletedProcess[bytes]:
        """Run ``argv`` inside the machine and capture its output.

        ``env`` defaults to this process's environment; either way PATH gets the usual
        system directories and PYTHONPATH the ``tether`` package, so ``sys.executable
        -m tether...`` works inside. With ``check`` a failure raises
        ``CalledProcessError`` (its output is captured).
        """
        if text and isinstance(input, bytes):
            input = input.decode()
        elif not text and isinstance(input, str):
            input = input.encode()
        return subprocess.run(
            self.command(argv, cwd=cwd),
            input=input,
            capture_output=True,
            timeout=timeout,
            check=check,
            env=_environment(env),
            text=text,
        )

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside the machine; ``kwargs`` go to ``subprocess.Popen``.

        ``cwd`` is a directory inside the machine; ``env`` is completed as in :meth:`run`.
        """
        cwd = kwargs.pop("cwd", None)
        kwargs["env"] = _environment(kwargs.get("env"))
        return subprocess.Popen(self.command(argv, cwd=None if cwd is None else str(cwd)), **kwargs)

    def signal_sshd(self, signum: int = signal.SIGHUP) -> None:
        """Send ``signum`` (default SIGHUP: reload) to the machine's sshd."""
        pid = self.sshd_pid
        if pid is None:
            raise RuntimeError("sshd is not running in the sandbox")
        os.kill(pid, signum)
