"""Debian's HAProxy in front of relays, for tests and the fleet demo.

:class:`HAProxy` writes a configuration shaped like the shipped
``deploy/haproxy/haproxy.cfg`` (TCP mode, ``send-proxy-v2``, checks on each relay's
``/readyz``), with OS-picked ports and fast checks, and runs ``/usr/sbin/haproxy -f cfg
-db`` in the foreground in a directory the caller gives. Its admin socket answers
:meth:`HAProxy.states` (which relays HAProxy sends new connections to).
"""

from __future__ import annotations

import csv
import io
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tether.errors import NotReady

HAPROXY = "/usr/sbin/haproxy"


def haproxy_unavailable_reason() -> str | None:
    """Why HAProxy cannot run here (``None``: it can)."""
    if not Path(HAPROXY).exists() and shutil.which("haproxy") is None:
        return "HAProxy is not installed (Debian package haproxy; scripts/setup installs it)"
    return None


@dataclass(frozen=True)
class Backend:
    """One relay: its SSH port (speaking PROXY v2) and its health port."""

    name: str
    port: int
    health_port: int
    host: str = "127.0.0.1"


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS picked and released (HAProxy wants a number in its file)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def render_config(
    *,
    bind: str,
    backends: Sequence[Backend],
    stats_socket: Path,
    check_interval_ms: int = 2000,
    source: str | None = None,
    maxconn: int = 20000,
) -> str:
    """An HAProxy configuration for ``backends`` (see deploy/haproxy/haproxy.cfg).

    :param bind: the public SSH address, ``HOST:PORT``.
    :param check_interval_ms: time between two readiness checks of one relay; one
        failed check takes it out, one good one puts it back.
    :param source: the address HAProxy connects to relays from (``None``: the OS's).
    :param maxconn: connections at once (HAProxy needs about two descriptors for each).
    """
    servers = "\n".join(
        f"    server {b.name} {b.host}:{b.port} check port {b.health_port}" for b in backends
    )
    return f"""\
global
    log stdout format raw local0 info
    stats socket {stats_socket} mode 600 level admin
    maxconn {maxconn}

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
    timeout check 2s

frontend tether_ssh
    bind {bind}
    default_backend tether_relays

backend tether_relays
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter {check_interval_ms}ms fall 1 rise 1 send-proxy-v2{f" source {source}" if source else ""}
{servers}
"""


class HAProxy:
    """A running HAProxy in ``directory``: ``start()``, :attr:`port`, ``stop()``."""

    def __init__(
        self,
        directory: Path,
        backends: Sequence[Backend],
        *,
        check_interval_ms: int = 200,
        source: str | None = None,
        maxconn: int = 2000,
        port: int = 0,
    ) -> None:
        self.directory = directory
        #: The public port; 0: one the OS picks at :meth:`start`.
        self._wanted_port = port
        self.maxconn = maxconn
        self.backends = tuple(backends)
        self.check_interval_ms = check_interval_ms
        self.source = source
        self.port = 0
        self.config_path = directory / "haproxy.cfg"
        self.stats_socket = directory / "admin.sock"
        self.log_path = directory / "haproxy.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Write the configuration, start HAProxy, wait until every relay is UP."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = self._wanted_port or free_port()
        self.config_path.write_text(
            render_config(
                bind=f"127.0.0.1:{self.port}",
                backends=self.backends,
                stats_socket=self.stats_socket,
                check_interval_ms=self.check_interval_ms,
                source=self.source,
                maxconn=self.maxconn,
            )
        )
        binary = HAPROXY if Path(HAPROXY).exists() else shutil.which("haproxy") or HAPROXY
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [binary, "-f", str(self.config_path), "-db"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # stopped by stop(), not by the caller's Ctrl-C
            )
        self.wait_for({b.name: "UP" for b in self.backends}, timeout)

    def states(self) -> dict[str, str]:
        """Each relay's state as HAProxy sees it (``UP``, ``DOWN``…), from ``show stat``."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats_socket))
            sock.sendall(b"show stat\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        text = b"".join(chunks).decode().lstrip("# ")
        return {
            row["svname"]: row["status"]
            for row in csv.DictReader(io.StringIO(text))
            if row.get("pxname") == "tether_relays" and row["svname"] != "BACKEND"
        }

    def wait_for(self, wanted: dict[str, str], timeout: float = 10.0) -> None:
        """Wait until the named relays are in the given states (e.g. ``{"r2": "DOWN"}``)."""
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise NotReady(f"haproxy exited ({self._proc.returncode}): {self.log()[-2000:]}")
            try:
                states = self.states()
            except OSError:
                states = {}
            if all(states.get(name, "").startswith(s) for name, s in wanted.items()):
                return
            time.sleep(0.05)
        raise NotReady(f"haproxy relays are {states}, wanted {wanted}; log: {self.log()[-2000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None

    def __enter__(self) -> HAProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
