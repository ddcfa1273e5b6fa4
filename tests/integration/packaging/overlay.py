"""A throw-away copy of this host to install packages into: an overlay of ``/`` in private
namespaces, chrooted into.

``unshare`` (as :class:`tether.sandbox.Sandbox` uses it) makes mount, network, pid and
UTS namespaces; inside, a tmpfs holds an overlayfs whose lower layer is the host's root
filesystem and whose upper layer takes every write (``apt-get install`` into /opt, /usr,
/etc, /var/lib/dpkg...), so nothing reaches the host and everything goes when the
namespace ends. The machine has its own loopback only, its own /proc, /run and /dev
(bound from the host), and no systemd: tests start services as their units would.

Lifetime: pid 1 of the namespace is a small Python reading this process's pipe; :meth:`stop`
(or this process dying) closes it, and the pid namespace takes every process with it.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tether.sandbox import sandbox_unavailable_reason

#: The environment of every command inside: a login's, never this test process's (no
#: PYTHONPATH or virtualenv of the checkout leaks into what the package runs).
ENVIRONMENT = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
    "TERM": "dumb",
}

_UNSHARE = ("unshare", "--mount", "--net", "--pid", "--uts", "--fork", "--kill-child")
_UNSHARE += ("--propagation", "private")
_SETUP = """
set -eu
mount -t tmpfs -o mode=0700 tether-overlay "$W"
mkdir "$W/upper" "$W/work" "$W/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$W/upper,workdir=$W/work" "$W/root"
mount -t proc proc "$W/root/proc"
mount --rbind /dev "$W/root/dev"
mount -t tmpfs -o mode=0755 tmpfs "$W/root/run"
mkdir -p "$W/root/run/sshd" "$W/root/run/lock"
hostname "$NAME"
ip link set lo up
exec chroot "$W/root" /usr/bin/python3 -c "$INIT"
"""
#: pid 1 inside: lets the kernel reap every orphan (a zombie of the package's user would
#: keep ``deluser`` from removing it), and ends with this process's pipe.
_INIT = (
    "import signal, sys; signal.signal(signal.SIGCHLD, signal.SIG_IGN); "
    "print('ready', flush=True); sys.stdin.read()"
)


def unavailable_reason() -> str | None:
    """Why no overlay machine can be made here (``None``: it can)."""
    reason = sandbox_unavailable_reason()
    if reason is not None:
        return reason
    filesystems = Path("/proc/filesystems").read_text()
    if "overlay" not in filesystems:
        return "the kernel has no overlayfs (modprobe overlay)"
    return None


class OverlayMachine:
    """This host's root filesystem, writable and private (see the module docstring).

    :param workdir: an empty directory on the host; the tmpfs is mounted over it inside.
    :param hostname: the machine's host name.
    """

    def __init__(self, workdir: Path, hostname: str) -> None:
        self.workdir = workdir
        self.hostname = hostname
        self._init: subprocess.Popen[bytes] | None = None
        self._pid1: int | None = None
        self._services: list[subprocess.Popen[bytes]] = []

    def start(self, timeout: float = 20) -> OverlayMachine:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._init = subprocess.Popen(
            [*_UNSHARE, "sh", "-c", _SETUP],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**ENVIRONMENT, "W": str(self.workdir), "NAME": self.hostname, "INIT": _INIT},
        )
        assert self._init.stdout is not None
        line = self._init.stdout.readline()
        if line.strip() != b"ready":
            err = self._init.stderr.read().decode() if self._init.stderr else ""
            raise RuntimeError(f"the overlay machine did not start: {err.strip()}")
        deadline = time.monotonic() + timeout
        while self._pid1 is None:
            children = Path(f"/proc/{self._init.pid}/task/{self._init.pid}/children").read_text()
            if children.split():
                self._pid1 = int(children.split()[0])
            elif time.monotonic() > deadline:
                raise RuntimeError("the overlay machine's init did not appear")
        return self

    def stop(self) -> None:
        if self._init is None:
            return
        if self._init.stdin is not None:
            self._init.stdin.close()
        try:
            self._init.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._init.kill()
            self._init.wait()
        for service in self._services:  # the namespace's end took them
            service.wait(timeout=20)
        for stream in (self._init.stdout, self._init.stderr):
            if stream is not None:
                stream.close()
        self._init = None

    def __enter__(self) -> OverlayMachine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as run inside (namespaces entered, chroot included)."""
        if self._pid1 is None:
            raise RuntimeError("the overlay machine is not running")
        return [
            "nsenter",
            f"--target={self._pid1}",
            "--mount",
            "--net",
            "--pid",
            "--uts",
            "--root",
            "--wd",
            "--",
            *argv,
        ]

    def run(
        self,
        argv: Sequence[str],
        *,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside and return what it did (never raises on its exit code)."""
        return subprocess.run(
            self.command(argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**ENVIRONMENT, **(env or {})},
        )

    def sh(self, script: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run a shell script inside."""
        return self.run(["/bin/sh", "-c", script], **kwargs)

    def start_service(self, name: str, argv: Sequence[str], log: Path) -> None:
        """Start a long-running process inside, as a service manager would; its pid goes
        to ``/run/tether-test/NAME.pid`` (inside) for :meth:`stop_service`, its output to
        ``log`` (on the host)."""
        script = (
            f"mkdir -p /run/tether-test && echo $$ > /run/tether-test/{name}.pid && "
            f"exec {shlex.join(argv)}"
        )
        with log.open("ab") as out:
            self._services.append(
                subprocess.Popen(
                    self.command(["/bin/sh", "-c", script]),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=dict(ENVIRONMENT),
                )
            )

    def stop_service(self, name: str, timeout: float = 20) -> None:
        """SIGTERM the service started as ``name`` and wait until it is gone."""
        script = (
            f"pid=$(cat /run/tether-test/{name}.pid) && kill -TERM $pid && "
            f"for _ in $(seq {int(timeout * 20)}); do kill -0 $pid 2>/dev/null || exit 0; "
            "sleep 0.05; done; exit 1"
        )
        result = self.sh(script, timeout=timeout + 10)
        if result.returncode != 0:
            raise RuntimeError(f"{name} did not stop: {result.stderr}")

    def read(self, inside: str) -> bytes:
        """A file of the machine, read from the host."""
        if self._pid1 is None:
            raise RuntimeError("the overlay machine is not running")
        return Path(f"/proc/{self._pid1}/root{inside}").read_bytes()

    def exists(self, inside: str) -> bool:
        if self._pid1 is None:
            raise RuntimeError("the overlay machine is not running")
        return os.path.lexists(f"/proc/{self._pid1}/root{inside}")
