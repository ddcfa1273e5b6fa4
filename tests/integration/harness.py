"""In-process parts for functional tests: vendor setup, relay, agent tunnel, engineer ssh.

Everything binds 127.0.0.1 on ports the OS picks. The engineer side is stock OpenSSH
``ssh`` with a certificate from the vendor CA, configured only through ``-o`` options
and files under the test's temporary directory (``-F /dev/null``: the host's ssh
configuration is never read).
"""

from __future__ import annotations

import asyncio
import random
import shutil
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

from tether.agent.status import TunnelState
from tether.agent.tunnel import Tunnel
from tether.audit_log import AuditLog
from tether.config import RelayConfig, TetherSettings
from tether.keys import KeyKind, TetherKeyClaims
from tether.relay.server import Relay
from tether.sshlib import asyncssh
from tether.store import Store
from tether.vendor_service.authority import Authority, init_data_dir, load_vendor_config

SSH = shutil.which("ssh") or "/usr/bin/ssh"


@dataclass
class Engineer:
    name: str
    key: Path
    known_hosts: Path

    def ssh_args(self, relay_port: int, *extra: str) -> list[str]:
        return [
            SSH,
            "-F",
            "/dev/null",
            "-i",
            str(self.key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "ConnectTimeout=10",
            "-p",
            str(relay_port),
            *extra,
        ]


@dataclass
class Vendor:
    dir: Path
    authority: Authority
    store: Store
    relay: Relay

    @property
    def relay_port(self) -> int:
        return self.relay.port

    async def issue(
        self, serial: str, *, ports: Sequence[int], lifetime: timedelta = timedelta(days=1)
    ) -> tuple[str, TetherKeyClaims]:
        return await self.authority.issue_key(
            serial,
            lifetime=lifetime,
            ports=tuple(ports),
            relay=f"127.0.0.1:{self.relay_port}",
            kind=KeyKind.MANUAL,
        )

    async def engineer(self, name: str, tmp: Path, *, port: int | None = None) -> Engineer:
        """An engineer with a certificate; ``port``: where its ssh meets the relay's key."""
        await self.store.engineers.add(name, self.authority.clock.now())
        key_path = tmp / f"{name}_key"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key_path)], check=True
        )
        public = asyncssh.read_public_key(str(key_path) + ".pub")
        cert = await self.authority.sign(name, public, ttl=timedelta(hours=1))
        Path(str(key_path) + "-cert.pub").write_text(cert.openssh() + "\n")
        host_pub = (self.dir / "relay_host_key.pub").read_text().split()
        known = tmp / f"{name}_known_hosts"
        known.write_text(f"[127.0.0.1]:{port or self.relay_port} {host_pub[0]} {host_pub[1]}\n")
        return Engineer(name, key_path, known)

    async def restart_relay(self) -> None:
        port = self.relay.port
        await self.relay.aclose()
        config = replace(self.relay.config, listen=("127.0.0.1", port))
        self.relay = Relay(config, self.store, clock=self.authority.clock)
        await self.relay.start()


@asynccontextmanager
async def vendor_setup(
    tmp: Path,
    *,
    database: str | None = None,
    poll: float = 0.1,
    listen_poll: float = 5.0,
    **relay: object,
) -> AsyncIterator[Vendor]:
    """Vendor data directory, store and a started relay; ``poll``/``listen_poll`` are the
    relay's ``poll_interval`` / ``listen_poll_interval``, ``relay`` overrides the rest."""
    data = tmp / "vendor"
    await init_data_dir(data, vendor="ACME", relay="127.0.0.1:2222", database=database)
    config = load_vendor_config(data)
    store = await Store.open(config.database)
    relay_config = replace(
        RelayConfig.load(data / "relay.toml"),
        listen=("127.0.0.1", 0),
        poll_interval=poll,
        listen_poll_interval=listen_poll,
        **relay,  # type: ignore[arg-type]
    )
    relay = Relay(relay_config, store)
    await relay.start()
    # The relay's port is known only now: keys the vendor issues must name it.
    config = replace(config, relay=f"127.0.0.1:{relay.port}")
    vendor = Vendor(data, Authority(config, store), store, relay)
    try:
        yield vendor
    finally:
        await vendor.relay.aclose()
        await store.aclose()


FAST = TetherSettings(
    keepalive_interval=5,
    backoff_initial=0.2,
    backoff_cap=1.0,
    connect_timeout=5,
    reconnect_spread=0.2,
)


class Agent:
    """A tunnel in this process, as `tether agent serve` would hold it."""

    def __init__(
        self,
        key: str,
        claims: TetherKeyClaims,
        ports: Sequence[int],
        *,
        machine_key: asyncssh.SSHKey | None = None,
        audit: AuditLog | None = None,
        head_check: float = 5.0,
        settings: TetherSettings | None = None,
    ) -> None:
        self.machine_key = machine_key or asyncssh.generate_private_key("ssh-ed25519")
        self.tunnel = Tunnel(
            key,
            claims,
            self.machine_key,
            tuple(ports),
            settings or FAST,
            rng=random.Random(7),
            audit=audit,
            head_check=head_check,
        )
        self.task: asyncio.Task[object] | None = None

    async def __aenter__(self) -> Agent:
        self.task = asyncio.get_running_loop().create_task(self.tunnel.serve(), name="test-agent")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.tunnel.aclose()
        if self.task is not None:
            await asyncio.wait_for(self.task, 5)

    async def wait_for(self, state: TunnelState, timeout: float = 10) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while self.tunnel.status.state != state:
            if self.task is not None and self.task.done() and state != TunnelState.REFUSED:
                raise AssertionError(f"tunnel ended in {self.tunnel.status}")
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"tunnel is {self.tunnel.status}, wanted {state}")
            await asyncio.sleep(0.02)


class EchoServer:
    """A TCP service on the 'machine' (here: this host's loopback, OS-picked port)."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> EchoServer:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"hello from the machine\n")
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])


async def run_ssh(
    args: list[str], *, input: bytes = b"", timeout: float = 20
) -> subprocess.CompletedProcess[bytes]:
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(input), timeout)
    return subprocess.CompletedProcess(args, proc.returncode or 0, out, err)


async def open_session(alice: Engineer, relay_port: int, target: str) -> asyncio.subprocess.Process:
    """A live ``ssh -W TARGET`` through the relay, past the echo service's greeting."""
    proc = await asyncio.create_subprocess_exec(
        *alice.ssh_args(relay_port, "-W", target, "alice@127.0.0.1"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert await asyncio.wait_for(proc.stdout.readline(), 10) == b"hello from the machine\n"
    return proc
