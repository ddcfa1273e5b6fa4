"""The parts a benchmark run starts, each in its own process, all on this host's loopback.

* a Tether relay (``tether relay serve``) with vendor data in a work directory;
* Tether agents' tunnels (:mod:`bench.agent_proc`) for keys the vendor issues;
* stock OpenSSH ``sshd`` instances: the "machine" sshd behind a tether, and the relay
  sshd of the all-OpenSSH comparison path. Each runs in a private mount namespace whose
  /run is a fresh tmpfs (sshd needs /run/sshd), on an OS-picked 127.0.0.1 port, with a
  config, host key and authorized_keys of the run's own: the host's /etc/ssh, its sshd
  and its users' files are never read or written;
* an engineer: a key with a vendor-CA certificate, and an OpenSSH config written by the
  product's own ``tether ssh-config`` code, so ``ssh SERIAL`` goes through the relay.

Everything ends with :meth:`World.close`, which stops every child it started (each in
its own process group, so an sshd's own children go with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from tether.keys import KeyKind
from tether.sshlib import asyncssh
from tether.store import Store
from tether.vendor_service.authority import Authority, init_data_dir, load_vendor_config

SSHD = "/usr/sbin/sshd"
SSH = shutil.which("ssh") or "/usr/bin/ssh"
#: Options every benchmark ssh uses: nothing from the host's ssh config or agent.
SSH_BASE = (
    "-F",
    "/dev/null",
    "-o",
    "BatchMode=yes",
    "-o",
    "IdentitiesOnly=yes",
    "-o",
    "StrictHostKeyChecking=yes",
    "-o",
    "ConnectTimeout=20",
    "-o",
    "LogLevel=ERROR",
)


#: Descriptors a benchmark process (and the relay it starts) may hold.
FD_LIMIT = 100_000


def raise_fd_limit() -> int:
    """Raise this process's open-file limit (children inherit it); return the new limit.

    As root the hard limit itself is raised (up to the kernel's ``fs.nr_open``);
    otherwise the soft limit goes up to the hard one.
    """
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, max(hard, FD_LIMIT)))
        return FD_LIMIT
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (the relay's address goes into keys)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    """Wait until something accepts connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s"
                ) from None
            time.sleep(0.02)


def keygen(path: Path, kind: str = "ed25519") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True)
    return path


def rss_kib(pid: int) -> int:
    """Resident set size of a process, in KiB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Process:
    """A child process of the run, stopped by :meth:`stop`."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{tail}")


@dataclass
class World:
    """Every part of one benchmark run; :meth:`close` stops them all."""

    dir: Path
    processes: list[Process] = field(default_factory=list)
    relay_port: int = 0
    relay_proc: Process | None = None
    authority: Authority | None = None
    store: Store | None = None
    _serials: Iterator[int] = field(default_factory=lambda: iter(range(1, 10**9)))

    # --- processes ------------------------------------------------------------------

    def spawn(self, name: str, argv: Sequence[str], **kwargs: object) -> Process:
        log = self.dir / f"{name}.log"
        out = log.open("ab")
        popen = subprocess.Popen(
            list(argv),
            stdout=kwargs.pop("stdout", out),  # type: ignore[arg-type]
            stderr=out,
            stdin=kwargs.pop("stdin", subprocess.DEVNULL),  # type: ignore[arg-type]
            start_new_session=True,
            **kwargs,  # type: ignore[arg-type]
        )
        out.close()
        proc = Process(name, popen, log)
        self.processes.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()
        self.processes.clear()

    # --- the vendor side ----------------------------------------------------------------

    async def start_vendor(
        self, *, relay_options: dict[str, object] | None = None, metrics_listen: str = ""
    ) -> None:
        """Vendor data + SQLite, then a relay process on a free port (with ``metrics_listen``,
        its ``/metrics`` there)."""
        data = self.dir / "vendor"
        self.relay_port = free_port()
        await init_data_dir(
            data,
            vendor="BENCH",
            relay=f"127.0.0.1:{self.relay_port}",
            relay_listen=f"127.0.0.1:{self.relay_port}",
        )
        if relay_options:
            with (data / "relay.toml").open("a") as f:
                for name, value in relay_options.items():
                    f.write(f"{name} = {value!r}\n".replace("'", '"'))
        if metrics_listen:
            with (data / "relay.toml").open("a") as f:
                f.write(f'\n[metrics]\nlisten = "{metrics_listen}"\n')
        config = load_vendor_config(data)
        self.store = await Store.open(config.database)
        self.authority = Authority(config, self.store)
        self.start_relay()

    def start_relay(self) -> Process:
        """(Re)start the relay process and wait until it accepts connections."""
        argv = [
            sys.executable,
            "-m",
            "tether",
            "relay",
            "serve",
            "--config",
            str(self.dir / "vendor" / "relay.toml"),
        ]
        self.relay_proc = self.spawn("relay", argv)
        try:
            wait_port(self.relay_port)
        except TimeoutError:
            self.relay_proc.check_alive()
            raise
        return self.relay_proc

    def stop_relay(self) -> float:
        """Stop the relay as its service manager would (SIGTERM); return the seconds it took."""
        start = time.monotonic()
        if self.relay_proc is not None:
            self.relay_proc.stop(timeout=90.0)  # systemd's default stop timeout
            self.processes.remove(self.relay_proc)
            self.relay_proc = None
        return time.monotonic() - start

    def next_serial(self) -> str:
        return f"BENCH-{next(self._serials):06d}"

    async def issue(
        self, serial: str, ports: Sequence[int], lifetime: timedelta = timedelta(days=1)
    ) -> str:
        assert self.authority is not None
        key, _ = await self.authority.issue_key(
            serial, lifetime=lifetime, ports=tuple(ports), kind=KeyKind.MANUAL
        )
        return key

    # --- the machine side ---------------------------------------------------------------

    def start_agent(
        self,
        key: str,
        ports: Sequence[int],
        *,
        name: str = "agent",
        env: dict[str, str] | None = None,
    ) -> Process:
        """An agent's tunnel for ``key`` offering ``ports``; returns once it is connected.

        ``env``: the agent process's environment (``None``: this one's).
        """
        key_file = self.dir / f"{name}.key"
        key_file.write_text(key)
        argv = [
            sys.executable,
            "-m",
            "bench.agent_proc",
            str(key_file),
            ",".join(str(p) for p in ports),
        ]
        proc = self.spawn(name, argv, stdout=subprocess.PIPE, env=env)
        assert proc.popen.stdout is not None
        line = proc.popen.stdout.readline().decode().strip()
        if line != "connected":
            proc.check_alive()
            raise RuntimeError(f"agent said {line!r}; see {proc.log}")
        return proc

    async def start_web_server(self) -> tuple[Process, int]:
        """The machine's web server of the throughput runs (``bench/sink.py``) and its port."""
        port_file = self.dir / "sink.port"
        sink = self.spawn("sink", [sys.executable, "-m", "bench.sink", str(port_file)])
        deadline = time.monotonic() + 10
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline:
                raise TimeoutError("the web server did not start")
            await asyncio.sleep(0.02)
        return sink, int(port_file.read_text())

    def start_sshd(
        self, name: str, *, extra: Sequence[str] = (), defaults: bool = False
    ) -> tuple[Process, int]:
        """A stock sshd on a free 127.0.0.1 port, in a private mount namespace (own /run).

        ``defaults``: leave ``MaxStartups`` (10:30:100) and ``LogLevel`` (INFO) at
        OpenSSH's defaults, as an sshd facing the internet would run, instead of the
        roomier limits and quieter log the throughput paths use.
        """
        tuned = () if defaults else ("MaxStartups 100:30:200", "LogLevel ERROR")
        root = self.dir / name
        root.mkdir()
        host_key = keygen(root / "host_key")
        port = free_port()
        config = root / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"ListenAddress 127.0.0.1:{port}",
                    f"HostKey {host_key}",
                    f"AuthorizedKeysFile {self.dir / 'authorized_keys'}",
                    "PermitRootLogin prohibit-password",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "PidFile none",
                    "AllowTcpForwarding yes",
                    "GatewayPorts no",
                    "X11Forwarding no",
                    "PrintMotd no",
                    *tuned,
                    *extra,
                    "",
                ]
            )
        )
        script = (
            f"mount -t tmpfs tmpfs /run && mkdir -m 0755 /run/sshd && exec {SSHD} -D -e -f {config}"
        )
        proc = self.spawn(
            name, ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
        )
        try:
            wait_port(port)
        except TimeoutError:
            proc.check_alive()
            raise
        known = self.dir / "known_hosts"
        pub = (root / "host_key.pub").read_text().split()
        with known.open("a") as f:
            f.write(f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n")
        return proc, port

    # --- the engineer -------------------------------------------------------------------

    async def engineer(self) -> Path:
        """An engineer key with a vendor certificate; also authorised on the bench sshds."""
        assert self.authority is not None
        assert self.store is not None
        key = keygen(self.dir / "engineer_key")
        await self.store.engineers.add("bench", self.authority.clock.now())
        cert = await self.authority.sign(
            "bench", asyncssh.read_public_key(str(key) + ".pub"), ttl=timedelta(hours=8)
        )
        Path(str(key) + "-cert.pub").write_text(cert.openssh() + "\n")
        with (self.dir / "authorized_keys").open("a") as f:
            f.write((self.dir / "engineer_key.pub").read_text())
        relay_pub = (self.dir / "vendor" / "relay_host_key.pub").read_text().split()
        with (self.dir / "known_hosts").open("a") as f:
            f.write(f"[127.0.0.1]:{self.relay_port} {relay_pub[0]} {relay_pub[1]}\n")
        return key

    def ssh(self, *args: str) -> list[str]:
        """A stock ssh command line with the engineer's key and the run's known hosts."""
        return [
            SSH,
            *SSH_BASE,
            "-i",
            str(self.dir / "engineer_key"),
            "-o",
            f"UserKnownHostsFile={self.dir / 'known_hosts'}",
            *args,
        ]

    def tether_jump(self, serial: str, port: int) -> str:
        """ProxyCommand that reaches ``serial:port`` through the Tether relay."""
        inner = " ".join(
            self.ssh("-p", str(self.relay_port), "-W", f"{serial}:{port}", "bench@127.0.0.1")
        )
        return f"ProxyCommand={inner}"

    def openssh_jump(self, relay_port: int, port: int) -> str:
        """ProxyCommand that reaches 127.0.0.1:``port`` through the stock sshd relay."""
        inner = " ".join(
            self.ssh("-p", str(relay_port), "-W", f"127.0.0.1:{port}", "root@127.0.0.1")
        )
        return f"ProxyCommand={inner}"


def machine_description() -> dict[str, object]:
    """What the numbers were measured on (ratios travel between machines; absolutes don't)."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError):
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    ssh_version = subprocess.run([SSH, "-V"], capture_output=True, text=True).stderr.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "openssh": ssh_version,
        "asyncssh": asyncssh.__version__,
    }


async def run_cmd(
    argv: Sequence[str], *, input: bytes | None = None, timeout: float = 600.0
) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(input), timeout)
    return proc.returncode or 0, out, err


def ssh_error(err: bytes) -> str:
    text = err.decode(errors="replace").strip()
    return re.sub(r"\s+", " ", text)[-400:]
