"""An engineer's world for CLI tests: vendor service, relay, a tethered machine, the real CLI.

``engineer_world(tmp_path, backend)`` brings up, on loopback ports the OS picks:

* the vendor side of tests/integration/harness.py (keys, CA, SQLite, a relay);
* a vendor HTTP service: the contract stub (``backend="stub"``) or the real
  :mod:`tether.vendor_service.api` (``backend="real"``; see :func:`real_service`);
* a machine tethered to the relay (the harness's in-process agent tunnel) serving an
  echo service and an SSH server trusting the vendor CA (``MachineSSH``);
* the engineer ``alice`` with a password.

Tests written against a :class:`World` run unchanged with either backend.

:meth:`World.tether` runs ``python -m tether ...`` as a separate process with the
engineer's state directory and home in the test's tmp_path, exactly as typed.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pyotp
from argon2 import PasswordHasher

from tests.integration.engineer.machine_ssh import MachineSSH
from tests.integration.engineer.stub_api import StubVendorAPI, serve
from tests.integration.harness import Agent, EchoServer, Vendor, vendor_setup
from tether.agent.status import TunnelState
from tether.certs import EngineerCertificate
from tether.sshlib import asyncssh
from tether.vendor_service.api_models import Tether
from tether.vendor_service.app import create_app
from tether.vendor_service.authority import Authority

SERIAL = "ACME-0001"
ENGINEER = "alice"
PASSWORD = "correct horse battery staple"
STUB_TOTP_CODE = "246810"
REPO = Path(__file__).resolve().parents[3]

#: add_engineer(name, password, totp) → a function giving the current TOTP code, if totp.
AddEngineer = Callable[[str, str, bool], Awaitable[Callable[[], str] | None]]
EndSession = Callable[[str], Awaitable[None]]


@dataclass
class World:
    """Everything a test of the engineer CLI needs; see the module docstring."""

    tmp: Path
    vendor: Vendor
    echo: EchoServer
    machine: MachineSSH
    agent: Agent
    url: str
    stub: StubVendorAPI | None
    add_engineer: AddEngineer
    end_session: EndSession
    state_dir: Path = field(init=False)
    home: Path = field(init=False)

    def token(self) -> str:
        """The token the CLI stored (to end the session from the service's side)."""
        return (self.state_dir / "token").read_text().strip()

    def __post_init__(self) -> None:
        self.state_dir = self.tmp / "engineer state"  # a space: quoting is exercised for real
        self.home = self.tmp / "home"
        self.home.mkdir(exist_ok=True)

    @property
    def env(self) -> dict[str, str]:
        """The CLI's environment: our state directory and a home of the test's own."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TETHER_", "SSH_AUTH"))}
        env.update(
            TETHER_ENGINEER_DIR=str(self.state_dir),
            HOME=str(self.home),
            PYTHONPATH=str(REPO / "src"),
            COLUMNS="200",
            NO_COLOR="1",
        )
        return env

    @property
    def ssh_config(self) -> Path:
        """Where ``tether ssh-config --write`` puts the configuration."""
        return self.state_dir / "ssh_config"

    async def tether(
        self, *args: str, input: str = "", timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run ``tether ARGS`` as a process; return its exit code and output."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tether",
            *args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
        )
        out, err = await asyncio.wait_for(proc.communicate(input.encode()), timeout)
        return subprocess.CompletedProcess(args, proc.returncode or 0, out.decode(), err.decode())

    async def spawn(self, *args: str) -> asyncio.subprocess.Process:
        """Start ``tether ARGS`` as a long-running process (``tether web``)."""
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tether",
            *args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
        )

    async def login(self, *extra: str) -> subprocess.CompletedProcess[str]:
        """``tether login --vendor URL --name alice`` with the password on stdin; must succeed."""
        result = await self.tether(
            "login", "--vendor", self.url, "--name", ENGINEER, *extra, input=PASSWORD + "\n"
        )
        if result.returncode != 0:
            raise AssertionError(f"login failed: {result.stderr}")
        return result


async def live_tethers(vendor: Vendor) -> list[Tether]:
    """The live tethers as the service would list them, from the shared store."""
    records = await vendor.store.tethers.list()
    tethers = []
    for record in records:
        key = await vendor.store.keys.get(record.key_id)
        tethers.append(
            Tether(
                serial=record.serial,
                key_id=record.key_id,
                relay_id=record.relay_id,
                since=record.connected_at,
                ports=sorted(key.ports) if key else [],
                expires_at=key.expires_at if key else record.connected_at,
                description=key.description if key else None,
                engineers=[],
            )
        )
    return tethers


def stub_service(vendor: Vendor) -> tuple[Any, StubVendorAPI, AddEngineer, EndSession]:
    """The contract stub, signing with the vendor's real CA (``Authority.sign``)."""

    async def sign(name: str, key: asyncssh.SSHKey, ttl: timedelta) -> EngineerCertificate:
        return await vendor.authority.sign(name, key, ttl=ttl)

    async def tethers() -> list[Tether]:
        return await live_tethers(vendor)

    host_key = (vendor.dir / "relay_host_key.pub").read_text().strip()
    stub = StubVendorAPI(
        sign=sign,
        relay=f"127.0.0.1:{vendor.relay_port}",
        relay_host_key=host_key,
        support_account=vendor.authority.config.support_account,
        tethers=tethers,
    )

    async def add(name: str, password: str, totp: bool) -> Callable[[], str] | None:
        await vendor.store.engineers.add(name, vendor.authority.clock.now())
        stub.add(name, password, totp=STUB_TOTP_CODE if totp else None)
        return (lambda: STUB_TOTP_CODE) if totp else None

    async def end(token: str) -> None:
        stub.tokens.pop(token, None)

    return stub.app, stub, add, end


def real_service(vendor: Vendor) -> tuple[Any, AddEngineer, EndSession]:
    """The real vendor service's app (:func:`tether.vendor_service.app.create_app`) over the harness.

    Skips with "vendor service not built yet" while :mod:`tether.vendor_service.api` cannot be
    imported. The service tells engineers the relay address of its configuration; the
    harness's relay listens on an OS-picked port, so the app gets an authority whose
    configuration names that port (same keys, same store).
    """
    authority = vendor.authority
    config = replace(authority.config, relay=f"127.0.0.1:{vendor.relay_port}")
    app = create_app(
        Authority(config, vendor.store, clock=authority.clock),
        clock=authority.clock,
        seal_key=None,
    )

    async def add(name: str, password: str, totp: bool) -> Callable[[], str] | None:
        await vendor.store.engineers.add(
            name, authority.clock.now(), password_hash=PasswordHasher().hash(password)
        )
        if not totp:
            return None
        secret = pyotp.random_base32(32)
        await vendor.store.engineers.set_totp(name, secret)
        return pyotp.TOTP(secret).now

    async def end(token: str) -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            response = await client.post(
                "/api/logout", headers={"Authorization": f"Bearer {token}"}
            )
            response.raise_for_status()

    return app, add, end


@asynccontextmanager
async def engineer_world(
    tmp: Path, backend: str = "stub", *, extra_ports: Sequence[int] = ()
) -> AsyncIterator[World]:
    """Bring everything up (see the module docstring); tear it down afterwards.

    ``extra_ports``: more of this host's loopback ports the machine offers (services a
    test runs itself).
    """
    async with AsyncExitStack() as stack:
        vendor = await stack.enter_async_context(vendor_setup(tmp))
        echo = await stack.enter_async_context(EchoServer())
        ca_public = (vendor.dir / "engineer_ca.pub").read_text().strip()
        account = vendor.authority.config.support_account
        machine = await stack.enter_async_context(MachineSSH(ca_public, account, tmp / "files"))
        stub: StubVendorAPI | None = None
        if backend == "stub":
            app, stub, add, end = stub_service(vendor)
        else:
            app, add, end = real_service(vendor)
        url = await stack.enter_async_context(serve(app))
        ports = [echo.port, machine.port, *extra_ports]
        key, claims = await vendor.issue(SERIAL, ports=ports)
        agent = await stack.enter_async_context(Agent(key, claims, ports))
        await agent.wait_for(TunnelState.CONNECTED)
        await add(ENGINEER, PASSWORD, False)
        yield World(tmp, vendor, echo, machine, agent, url, stub, add, end)
