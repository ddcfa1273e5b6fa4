"""The sandbox's init: pid 1 of a private machine, run by ``unshare`` as root.

``Sandbox.start`` runs ``unshare --mount --net --pid --uts --fork --kill-child
--mount-proc python -m tether.sandbox.init --workdir W ...``. In its fresh namespaces this
process builds the machine and then waits:

1. Mounts become private (nothing propagates back to the host).
2. **/etc is a full private copy.** A copy of the host's /etc (without its sshd host keys
   and config) is made in ``W/root/etc`` and bound over /etc. Binding single files
   (/etc/passwd, /etc/shadow, ...) is *not* enough: ``useradd`` and friends write
   ``/etc/passwd+`` and ``rename()`` it over /etc/passwd (EBUSY on a mount point), and
   take ``/etc/passwd.lock`` by ``link()`` next to it. With all of /etc on one private
   mount these behave exactly as on a real machine, and so do /etc/sudoers.d, /etc/ssh,
   /etc/tether, /etc/cron.d and /etc/systemd/system (the last three start empty).
3. **Private directories** (``layout.PRIVATE_DIRS``: /home, /run, /var/log, /var/lib/tether,
   /root/.ssh, ...) are empty directories under ``W/root`` bound over those paths, so
   users' homes, sshd's pid file and privsep dir, and every log land in the workdir. When
   the host lacks a mount point (e.g. /var/lib/tether on a fresh machine) its parent is
   replaced by a stand-in directory (``W/shadow/...``) that holds a bind of each of the
   host's entries plus the new, private one — the host itself is never written to.
   /run is a plain directory rather than a tmpfs so that the host can read it too (pid
   files, the uplink sockets) without entering the namespace. With ``--private-tmp``
   /tmp and /var/tmp (``layout.TMP_DIRS``) get the same treatment, last: they may hide
   the workdir itself, so their sources are opened first and bound through
   ``/proc/self/fd``, and the ``ready`` file is written through a descriptor of the
   workdir opened before any mount.
4. The host name is set; ``lo`` is brought up. The network namespace has no other
   interface, so nothing outside can connect in.
5. sshd: a stock-like Debian ``sshd_config`` (``Include`` of an empty
   ``sshd_config.d``, ``UsePAM yes``, ``ListenAddress 127.0.0.1``, ``PidFile
   /run/sshd.pid``, ``LogLevel VERBOSE``), fresh host keys (``ssh-keygen -A``) and the
   real ``/usr/sbin/sshd -D -e``, its lines written to ``/var/log/sshd.log`` with their time, waited for until it has written its pid
   file (it does so once it listens).
6. The inside uplink forwarder (see :mod:`tether.sandbox.uplink`) for each uplink port.
7. ``W/ready`` is written; then init reaps orphans until stdin reaches EOF (the host
   process closed it, or died) or SIGTERM arrives. It stops its children and exits;
   the kernel then kills whatever is left in the pid namespace.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import grp
import json
import os
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from tether.sandbox import layout

_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 0x40000
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = "/usr/bin/ssh-keygen"

SSHD_CONFIG = """\
# Written by tether.sandbox: Debian's stock sshd_config, less its comments, for a
# sandboxed machine (listens on its private loopback only).
Include /etc/ssh/sshd_config.d/*.conf

ListenAddress 127.0.0.1
Port 22
PidFile {pid_file}
LogLevel VERBOSE

KbdInteractiveAuthentication no
UsePAM {use_pam}

X11Forwarding yes
PrintMotd no
AcceptEnv LANG LC_*
Subsystem sftp /usr/lib/openssh/sftp-server
"""

_libc = ctypes.CDLL(None, use_errno=True)


def log(message: str) -> None:
    """Write one line to init's log (stderr, which the host points at ``init.log``)."""
    print(f"{time.strftime('%H:%M:%S')} init: {message}", file=sys.stderr, flush=True)


def mount(source: str | None, target: str, flags: int, fstype: str | None = None) -> None:
    """Call mount(2); raise ``OSError`` naming the mount on failure."""
    result: int = _libc.mount(
        source.encode() if source else None,
        target.encode(),
        fstype.encode() if fstype else None,
        ctypes.c_ulong(flags),
        None,
    )
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def bind(source: Path | str, target: str) -> None:
    """Bind ``source`` (with its submounts) over ``target``."""
    mount(str(source), target, _MS_BIND | _MS_REC)


class Mounter:
    """Mounts private trees, making missing mount points without touching the host."""

    def __init__(self, workdir: Path) -> None:
        self.root = workdir / layout.ROOT_DIRNAME
        self.shadow = workdir / layout.SHADOW_DIRNAME
        self.private: list[str] = []
        self.shadowed: dict[str, set[str]] = {}

    def _writable(self, inside: str) -> bool:
        """Whether creating ``inside`` writes to the workdir rather than the host."""
        if any(inside == p or inside.startswith(p + "/") for p in self.private):
            return True
        for parent, host_entries in self.shadowed.items():
            if inside.startswith(parent.rstrip("/") + "/"):
                first = inside[len(parent.rstrip("/")) + 1 :].split("/", 1)[0]
                return first not in host_entries
        return False

    def _shadow(self, inside_dir: str) -> None:
        """Replace ``inside_dir`` by a stand-in holding binds of all its entries."""
        stand_in = self.shadow / inside_dir.lstrip("/")
        stand_in.mkdir(parents=True, exist_ok=True)
        info = os.stat(inside_dir)
        os.chmod(stand_in, stat.S_IMODE(info.st_mode))
        os.chown(stand_in, info.st_uid, info.st_gid)
        names: set[str] = set()
        with os.scandir(inside_dir) as entries:
            for entry in entries:
                names.add(entry.name)
                target = stand_in / entry.name
                if entry.is_symlink():
                    os.symlink(os.readlink(entry.path), target)
                    continue
                if entry.is_dir():
                    target.mkdir()
                else:
                    target.touch()
                bind(entry.path, str(target))
        bind(stand_in, inside_dir)
        self.shadowed[inside_dir] = names
        log(f"{inside_dir}: replaced by a stand-in to add a mount point")

    def ensure_dir(self, inside: str) -> None:
        """Make directory ``inside`` exist in this mount namespace only."""
        if os.path.isdir(inside):
            return
        parent = os.path.dirname(inside)
        self.ensure_dir(parent)
        if not self._writable(inside):
            self._shadow(parent)
        os.mkdir(inside, 0o755)

    def _source(self, inside: str, host_info: os.stat_result | None) -> Path:
        """Make the workdir's directory for ``inside``, with the host directory's mode."""
        source = self.root / inside.lstrip("/")
        source.mkdir(parents=True, exist_ok=True)
        if host_info is not None:
            os.chmod(source, stat.S_IMODE(host_info.st_mode))
            os.chown(source, host_info.st_uid, host_info.st_gid)
        else:
            os.chmod(source, layout.PRIVATE_DIR_DEFAULT_MODES.get(inside, 0o755))
        self.ensure_dir(inside)
        return source

    def private_dir(self, inside: str, host_info: os.stat_result | None) -> None:
        """Bind a fresh directory of the workdir over ``inside``."""
        bind(self._source(inside, host_info), inside)
        self.private.append(inside)

    def private_dirs_hiding_the_workdir(
        self, insides: Sequence[str], host_info: dict[str, os.stat_result | None]
    ) -> None:
        """Like :meth:`private_dir` for each of ``insides``, where a mount may hide the workdir.

        Every source is opened before the first mount and bound through its descriptor,
        so a workdir under /tmp still provides /var/tmp after /tmp is covered.
        """
        opened = [
            (os.open(self._source(inside, host_info[inside]), os.O_PATH | os.O_DIRECTORY), inside)
            for inside in insides
        ]
        for fd, inside in opened:
            try:
                bind(f"/proc/self/fd/{fd}", inside)
            finally:
                os.close(fd)
            self.private.append(inside)


def python_under(hidden: Sequence[str]) -> list[tuple[int, str]]:
    """This Python and Tether's code, where a private /tmp would hide them: opened now.

    The machine runs the agent and the CLI with the host's interpreter (a checkout and
    its venv under /tmp are common); :func:`show_again` binds them back once /tmp is
    private, at the same paths.
    """
    import tether

    wanted = {sys.prefix, sys.base_prefix, str(Path(tether.__file__).resolve().parents[1])}
    kept = []
    for path in sorted(wanted):
        if any(path == d or path.startswith(d.rstrip("/") + "/") for d in hidden):
            kept.append((os.open(path, os.O_PATH | os.O_DIRECTORY), path))
    return kept


def show_again(kept: Sequence[tuple[int, str]]) -> None:
    """Bind what :func:`python_under` opened back at its own path."""
    for fd, path in kept:
        try:
            os.makedirs(path, exist_ok=True)
            bind(f"/proc/self/fd/{fd}", path)
        finally:
            os.close(fd)


def copy_etc(root: Path, hostname: str) -> None:
    """Copy the host's /etc to ``root/etc`` and adapt it to the sandboxed machine."""
    etc = root / "etc"
    etc.mkdir(parents=True)
    os.chmod(etc, 0o755)  # noqa: S103 - /etc is world-readable on every machine
    entries = sorted(e for e in os.listdir("/etc") if e != "ssh")
    subprocess.run(["cp", "-a", "--", *(f"/etc/{e}" for e in entries), str(etc)], check=True)
    ssh = etc / "ssh"
    ssh.mkdir(mode=0o755)
    (ssh / "sshd_config.d").mkdir(mode=0o755)
    for name in ("ssh_config", "ssh_config.d", "moduli"):
        if os.path.lexists(f"/etc/ssh/{name}"):
            subprocess.run(["cp", "-a", "--", f"/etc/ssh/{name}", str(ssh)], check=True)
    for inside in layout.EMPTY_ETC_DIRS:
        path = root / inside.lstrip("/")
        if path.is_dir() and not path.is_symlink():
            subprocess.run(["rm", "-rf", "--", str(path)], check=True)
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
    (etc / "hostname").write_text(hostname + "\n")
    hosts = etc / "hosts"
    text = hosts.read_text() if hosts.exists() and not hosts.is_symlink() else ""
    with contextlib.suppress(FileNotFoundError):
        hosts.unlink()
    hosts.write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n" + text)
    os.chmod(hosts, 0o644)


def link_up(name: str = "lo") -> None:
    """Bring interface ``name`` up (SIOCSIFFLAGS; no dependency on iproute2)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH22x", name.encode(), 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH22x", name.encode(), flags | _IFF_UP))


def prepare_run() -> None:
    """Create the usual contents of a fresh /run."""
    os.makedirs("/run/lock", exist_ok=True)
    os.chmod("/run/lock", 0o1777)  # noqa: S103 - sticky and world-writable, as on Debian
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    os.makedirs(layout.UPLINK_SOCKET_DIR, mode=0o755, exist_ok=True)
    utmp = Path("/run/utmp")
    utmp.touch()
    with contextlib.suppress(KeyError):
        os.chown(utmp, 0, grp.getgrnam("utmp").gr_gid)
    os.chmod(utmp, 0o664)


def wait_for_pid_file(process: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait until sshd has written its pid file, which it does once it listens.

    (Watching the pid file rather than connecting keeps probes out of sshd's log.)
    """
    pid_file = Path(layout.SSHD_PID_FILE)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited with status {process.returncode}")
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(pid_file.read_text().split()[0]) == process.pid:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"sshd did not start listening in {timeout} s")
        time.sleep(0.01)


def start_sshd(use_pam: bool) -> int:
    """Configure and start sshd; return its pid once it answers."""
    config = SSHD_CONFIG.format(pid_file=layout.SSHD_PID_FILE, use_pam="yes" if use_pam else "no")
    Path("/etc/ssh/sshd_config").write_text(config)
    subprocess.run([SSH_KEYGEN, "-A"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([SSHD, "-t"], check=True)
    # sshd -E writes no time on its lines; a machine's journal does. sshd logs to
    # stderr (-e) and each line is written with the time it arrived, as journalctl's
    # short-iso form does (sshd names no pid on stderr, so none is made up).
    process = subprocess.Popen(
        [SSHD, "-D", "-e"],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    if process.stderr is None:  # pragma: no cover - stderr=PIPE always sets it
        raise RuntimeError("no pipe from sshd")
    threading.Thread(
        target=stamp_lines, args=(process.stderr, Path(layout.SSHD_LOG_FILE)), daemon=True
    ).start()
    wait_for_pid_file(process, timeout=10)
    log(f"sshd running, pid {process.pid}")
    return process.pid


def stamp_lines(source: IO[bytes], target: Path) -> None:
    """Append each line of ``source`` to ``target`` as ``ISO-TIME HOST sshd: LINE``."""
    host = socket.gethostname()
    with target.open("ab", buffering=0) as out:
        for raw in source:
            at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+0000")
            out.write(f"{at} {host} sshd: ".encode() + raw.rstrip(b"\r\n") + b"\n")


def start_uplink(ports: Sequence[int]) -> int:
    """Start the inside uplink forwarder; return its pid once it listens."""
    argv = [sys.executable, "-m", "tether.sandbox.uplink", "inside"]
    argv += ["--socket-dir", layout.UPLINK_SOCKET_DIR]
    for port in ports:
        argv += ["--port", str(port)]
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    if process.stdout is None:  # pragma: no cover - stdout=PIPE always sets it
        raise RuntimeError("no pipe to the uplink forwarder")
    ready, _, _ = select.select([process.stdout], [], [], 10)
    line = process.stdout.readline().decode().strip() if ready else ""
    process.stdout.close()
    if line != layout.READY_LINE:
        raise RuntimeError(f"inside uplink forwarder did not start (said {line!r})")
    log(f"uplink forwarder running for ports {list(ports)}, pid {process.pid}")
    return process.pid


def reap() -> list[int]:
    """Collect every exited child (init adopts orphans); return their pids."""
    pids: list[int] = []
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return pids
        if pid == 0:
            return pids
        pids.append(pid)


def serve_until_stopped(children: Sequence[int]) -> None:
    """Reap orphans until stdin is closed or SIGTERM/SIGINT/SIGHUP, then stop children."""
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    stdin = sys.stdin.fileno()
    while not stopping:
        with contextlib.suppress(InterruptedError):
            ready, _, _ = select.select([stdin], [], [], 0.5)
            if ready and not os.read(stdin, 4096):
                break
        reap()
    log("stopping")
    alive = set(children)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 2
    while alive and time.monotonic() < deadline:
        alive -= set(reap())
        alive = {pid for pid in alive if os.path.exists(f"/proc/{pid}")}
        time.sleep(0.02)


def build(args: argparse.Namespace) -> list[int]:
    """Build the machine (steps 1-6 of the module docstring); return children to stop."""
    workdir: Path = args.workdir
    mount(None, "/", _MS_REC | _MS_PRIVATE)
    root = workdir / layout.ROOT_DIRNAME
    tmp_dirs = layout.TMP_DIRS if args.private_tmp else ()
    host_info = {
        p: os.stat(p) if os.path.isdir(p) else None for p in (*layout.PRIVATE_DIRS, *tmp_dirs)
    }
    copy_etc(root, args.hostname)
    bind(root / "etc", layout.ETC)
    mounter = Mounter(workdir)
    mounter.private.append(layout.ETC)
    for inside in layout.PRIVATE_DIRS:
        mounter.private_dir(inside, host_info[inside])
    python = python_under(tmp_dirs)
    mounter.private_dirs_hiding_the_workdir(tmp_dirs, host_info)
    show_again(python)
    socket.sethostname(args.hostname)
    link_up("lo")
    prepare_run()
    log(f"mounts ready; hostname {args.hostname}")
    children = []
    if args.sshd:
        children.append(start_sshd(args.use_pam))
    if args.uplink_port:
        children.append(start_uplink(args.uplink_port))
    return children


def write_ready(workdir: int, children: Sequence[int]) -> None:
    """Write ``ready`` (the children to stop) into the workdir open as ``workdir``, atomically."""
    staging = layout.READY_NAME + ".tmp"
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=workdir)
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps({"children": list(children)}))
    os.rename(staging, layout.READY_NAME, src_dir_fd=workdir, dst_dir_fd=workdir)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line (run by ``Sandbox.start`` through ``unshare``)."""
    parser = argparse.ArgumentParser(prog="python -m tether.sandbox.init")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--hostname", required=True)
    parser.add_argument("--uplink-port", type=int, action="append", default=[])
    parser.add_argument("--no-sshd", dest="sshd", action="store_false")
    parser.add_argument("--no-pam", dest="use_pam", action="store_false")
    parser.add_argument("--private-tmp", action="store_true")
    args = parser.parse_args(argv)
    if os.getpid() != 1:
        log("refusing to run outside a fresh pid namespace (not pid 1)")
        return 2
    try:
        # Opened before any mount: a private /tmp may hide the workdir from view.
        workdir = os.open(args.workdir, os.O_RDONLY | os.O_DIRECTORY)
        children = build(args)
        write_ready(workdir, children)
        log("ready")
    except Exception:
        log("failed:\n" + traceback.format_exc())
        return 1
    serve_until_stopped(children)
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
