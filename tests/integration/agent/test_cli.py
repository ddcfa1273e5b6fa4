"""`tether agent serve` and `tether access …` as an admin uses them (real processes).

Opening access changes a machine (support account, sshd), so every agent here runs
inside a sandboxed machine; the relay runs in this process on an OS-picked port that
the sandbox reaches through its uplink. Keys open port 22 (the sandbox's own sshd).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.integration.agent.recording.test_failures import run_session
from tests.integration.harness import Vendor, vendor_setup
from tether.agent.control import ask_daemon
from tether.audit_log import AuditLog
from tether.sandbox import Sandbox

pytestmark = pytest.mark.sandbox

CONFIG = "/etc/tether/agent.toml"


@dataclass
class Machine:
    sandbox: Sandbox
    log: Path

    @property
    def state_dir(self) -> Path:
        return self.sandbox.host_path("/var/lib/tether")

    async def tether(self, *args: str, input: bytes = b"") -> subprocess.CompletedProcess[str]:
        proc = await asyncio.create_subprocess_exec(
            *self.sandbox.command([sys.executable, "-m", "tether", *args, "--config", CONFIG]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(input), 30)
        return subprocess.CompletedProcess(args, proc.returncode or 0, out.decode(), err.decode())

    async def start_agent(self) -> asyncio.subprocess.Process:
        log = open(self.log, "ab")  # noqa: SIM115
        proc = await asyncio.create_subprocess_exec(
            *self.sandbox.command(
                [sys.executable, "-m", "tether", "agent", "serve", "--config", CONFIG]
            ),
            stdout=log,
            stderr=log,
        )
        log.close()
        sock = self.sandbox.host_path("/run") / "tether" / "agent.sock"
        started = time.monotonic()
        # Generous: two agents starting on a loaded 2-core CI machine take a while.
        while time.monotonic() - started < 60 and proc.returncode is None:
            # A crashed daemon leaves its socket file behind: wait for one that answers.
            if await asyncio.to_thread(ask_daemon, sock, "status", 2.0) is not None:
                return proc
            await asyncio.sleep(0.05)
        # Never leave the daemon behind: a stray process fails some later test instead.
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
        raise AssertionError(
            f"agent did not answer in {time.monotonic() - started:.0f} s "
            f"(exit {proc.returncode}, socket there: {sock.exists()}): {self.log.read_text()}"
        )

    async def status(self) -> dict[str, object]:
        result = await self.tether("access", "status", "--json")
        assert result.returncode == 0, result.stderr
        body: dict[str, object] = json.loads(result.stdout)
        return body

    async def wait_tunnel(self, state: str, timeout: float = 15) -> dict[str, object]:
        body: dict[str, object] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = await self.status()
            tunnel = body.get("tunnel")
            if isinstance(tunnel, dict) and tunnel.get("state") == state:
                return body
            await asyncio.sleep(0.1)
        raise AssertionError(f"tunnel never {state}: {body}")


@pytest.fixture
async def setup(
    tmp_path: Path, sandbox_factory: Callable[..., Sandbox]
) -> AsyncIterator[tuple[Vendor, Machine, int]]:
    async with vendor_setup(tmp_path) as vendor:
        machine = sandbox_factory(hostname="M-1", uplink_ports=[vendor.relay_port])
        trust = (vendor.dir / "agent-trust.toml").read_text()
        (machine.host_path("/etc/tether") / "agent.toml").write_text(
            f'serial = "M-1"\n{trust}sshd_log = "/var/log/sshd.log"\n'
            "[tether]\nbackoff_initial = 0.5\nbackoff_cap = 2.0\n"
        )
        yield vendor, Machine(machine, tmp_path / "agent.log"), 22


async def stop(machine: Machine, proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the agent inside the machine and wait until it has shut down."""
    await asyncio.to_thread(machine.sandbox.run, ["pkill", "-TERM", "-f", "tether agent serve"])
    for _ in range(100):
        gone = await asyncio.to_thread(machine.sandbox.run, ["pgrep", "-f", "tether agent serve"])
        if gone.returncode != 0:
            break
        await asyncio.sleep(0.05)
    await asyncio.wait_for(proc.wait(), 10)


async def test_enable_status_reset_disable(setup: tuple[Vendor, Machine, int]) -> None:
    vendor, machine, service = setup
    agent = await machine.start_agent()
    try:
        key, claims = await vendor.issue("M-1", ports=[22, service])
        # Pasted from an e-mail: wrapped, indented, with a trailing newline.
        wrapped = "\n  ".join(key[i : i + 60] for i in range(0, len(key), 60)) + "\n"
        enabled = await machine.tether("access", "enable", "--key", "-", input=wrapped.encode())
        assert enabled.returncode == 0, enabled.stderr
        assert "open until" in enabled.stdout
        first = await machine.wait_tunnel("connected")
        human = await machine.tether("access", "status")
        assert "open until" in human.stdout
        assert f"connected to relay 127.0.0.1:{vendor.relay_port} over ssh since" in human.stdout
        reset = await machine.tether("access", "reset")
        assert reset.returncode == 0, reset.stderr
        await asyncio.sleep(0.3)
        second = await machine.wait_tunnel("connected")
        assert second["tunnel"] != first["tunnel"]  # a new connection, newer "since"
        disabled = await machine.tether("access", "disable")
        assert disabled.stdout.strip() == "Support access closed."
        body = await machine.status()
        assert body["tunnel"] is None
        assert vendor.relay.registry.get("M-1") is None
        again = await machine.tether("access", "disable")
        assert again.returncode == 0
        assert "already closed" in again.stdout
    finally:
        await stop(machine, agent)
    log = machine.log.read_text()
    assert "agent.stop" in log
    assert claims.key_id not in log or "v4.public" not in log  # the key itself never reaches logs


async def test_the_daemon_audits_its_tether_and_reports_its_chain_head(
    setup: tuple[Vendor, Machine, int],
) -> None:
    vendor, machine, service = setup
    agent = await machine.start_agent()
    audit = AuditLog(machine.state_dir / "audit.log")
    try:
        key, _ = await vendor.issue("M-1", ports=[22, service])
        enabled = await machine.tether("access", "enable", "--key", key)
        assert enabled.returncode == 0, enabled.stderr
        await machine.wait_tunnel("connected")
        head = None
        for _ in range(100):  # the agent reports at once; the relay stores the first head as is
            heads = await vendor.store.audit.heads()
            if heads and (heads[0].seq, heads[0].hash) == audit.head():
                head = heads[0]
                break
            await asyncio.sleep(0.1)
        assert head is not None, (heads, audit.head())
        disabled = await machine.tether("access", "disable")
        assert disabled.returncode == 0, disabled.stderr
    finally:
        await stop(machine, agent)
    events = [(e.event, dict(e.fields)) for e in audit.entries()]
    names = [name for name, _ in events if not name.startswith("agent.")]
    assert names[:2] == ["access.opened", "tether.up"]
    assert "tether.down" in names
    assert ("access.closed", "customer") in [(n, f.get("reason")) for n, f in events]
    assert head.serial == "M-1"
    assert head.mismatches == 0
    assert audit.verify().ok


@pytest.mark.parametrize(
    ("mangle", "words"),
    [
        (lambda k: "not a key", "not a tether key"),
        (lambda k: k[:-30], "incomplete"),
        (lambda k: k.replace("v4.public.", "v4.public.A", 1), "incomplete"),
    ],
)
async def test_bad_key_exits_2_and_changes_nothing(
    setup: tuple[Vendor, Machine, int], mangle: object, words: str
) -> None:
    vendor, machine, service = setup
    key, _ = await vendor.issue("M-1", ports=[service])
    assert callable(mangle)
    result = await machine.tether("access", "enable", "--key", mangle(key))
    assert result.returncode == 2
    assert words in result.stderr
    assert "Traceback" not in result.stderr
    assert not (machine.state_dir / "access.json").exists()


async def test_key_for_another_serial_or_past_expiry_exits_2(
    setup: tuple[Vendor, Machine, int],
) -> None:
    vendor, machine, service = setup
    other, _ = await vendor.issue("M-2", ports=[service])
    result = await machine.tether("access", "enable", "--key", other)
    assert result.returncode == 2
    assert "this key is for machine 'M-2', but this machine is 'M-1'" in result.stderr
    short, _ = await vendor.issue("M-1", ports=[service], lifetime=timedelta(seconds=1))
    await asyncio.sleep(1.2)
    result = await machine.tether("access", "enable", "--key", short)
    assert result.returncode == 2
    assert "expired" in result.stderr
    assert not (machine.state_dir / "access.json").exists()


async def test_one_agent_per_machine(setup: tuple[Vendor, Machine, int]) -> None:
    _, machine, _ = setup
    first = await machine.start_agent()
    try:
        second = await asyncio.create_subprocess_exec(
            *machine.sandbox.command(
                [sys.executable, "-m", "tether", "agent", "serve", "--config", CONFIG]
            ),
            stderr=subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(second.communicate(), 20)
        assert second.returncode == 1
        assert "another tether agent is already running on this machine (pid " in err.decode()
    finally:
        await stop(machine, first)


async def test_crash_is_noticed_and_expired_access_closed_at_start(
    setup: tuple[Vendor, Machine, int],
) -> None:
    vendor, machine, service = setup
    agent = await machine.start_agent()
    key, claims = await vendor.issue("M-1", ports=[service], lifetime=timedelta(seconds=10))
    enabled = await machine.tether("access", "enable", "--key", key)
    assert enabled.returncode == 0, enabled.stderr
    assert "connected to relay" in enabled.stdout  # enable waited for the relay's verdict
    # Kill the agent itself inside the machine (killing the nsenter wrapper would let
    # it shut down cleanly).
    machine.sandbox.run(["pkill", "-KILL", "-f", "tether agent serve"])
    await agent.wait()
    # Access expires while the agent is dead.
    left = (claims.expires_at - datetime.now(UTC)).total_seconds()
    await asyncio.sleep(max(0.0, left) + 0.5)
    agent = await machine.start_agent()
    try:
        body = await machine.status()
        access = body["access"]
        assert isinstance(access, dict)
        assert access["status"] == "closed"
        assert access["close_reason"] == "expired"
    finally:
        await stop(machine, agent)
    assert "the last run did not shut down cleanly" in machine.log.read_text()


async def test_status_says_reconnecting_when_relay_is_down(
    setup: tuple[Vendor, Machine, int],
) -> None:
    vendor, machine, service = setup
    key, _ = await vendor.issue("M-1", ports=[service])
    await vendor.relay.aclose()  # the relay named in the key is down
    agent = await machine.start_agent()
    try:
        assert (await machine.tether("access", "enable", "--key", key)).returncode == 0
        await machine.wait_tunnel("reconnecting")
        human = await machine.tether("access", "status")
        assert "reconnecting in" in human.stdout
        assert "(relay " in human.stdout  # the reason, in words
    finally:
        await stop(machine, agent)
    assert "reconnecting in" in machine.log.read_text()


async def test_status_without_daemon_says_so(setup: tuple[Vendor, Machine, int]) -> None:
    vendor, machine, service = setup
    key, _ = await vendor.issue("M-1", ports=[service])
    enabled = await machine.tether("access", "enable", "--key", key)
    assert enabled.returncode == 0
    assert "the tether agent is not running" in enabled.stderr
    status = await machine.tether("access", "status")
    assert "agent not running" in status.stdout
    assert (await machine.tether("access", "disable")).returncode == 0


async def test_status_facts_and_the_node_exporter_textfile_follow_the_tether(
    setup: tuple[Vendor, Machine, int],
) -> None:
    vendor, machine, service = setup
    toml = machine.sandbox.host_path("/etc/tether") / "agent.toml"
    toml.write_text(toml.read_text() + '[metrics]\ntextfile = "/var/lib/tether/tether.prom"\n')
    textfile = machine.sandbox.host_path("/var/lib/tether") / "tether.prom"
    agent = await machine.start_agent()
    try:
        key, _ = await vendor.issue("M-1", ports=[service], lifetime=timedelta(hours=2))
        enabled = await machine.tether("access", "enable", "--key", key)
        assert enabled.returncode == 0, enabled.stderr
        body = await machine.wait_tunnel("connected")
        facts = body["facts"]
        assert isinstance(facts, dict)
        assert facts["access_open"] is True
        assert facts["tether_connected"] is True
        assert facts["live_sessions"] == 0
        assert facts["recording_failures"] == 0
        assert 7000 < facts["expires_in_seconds"] <= 7200
        # The daemon rewrites the file as soon as the tether comes up.
        for _ in range(100):
            if "tether_agent_tether_connected 1.0" in textfile.read_text():
                break
            await asyncio.sleep(0.05)
        text = textfile.read_text()
        assert "tether_agent_tether_connected 1.0" in text, text
        assert "tether_agent_access_open 1.0" in text
        # A support session whose sftp-server could not run: a recording failure.
        recordings = machine.state_dir / "recordings"
        recordings.mkdir(exist_ok=True)
        sftp = await asyncio.to_thread(
            run_session, recordings, "internal-sftp", "--sftp-server", "/no/sftp-server"
        )
        assert sftp.returncode == 127, sftp.stderr
        assert (await machine.status())["facts"]["recording_failures"] == 1
        for _ in range(300):  # the daemon rewrites the file every 10 s
            if "tether_agent_recording_failures 1.0" in textfile.read_text():
                break
            await asyncio.sleep(0.05)
        assert "tether_agent_recording_failures 1.0" in textfile.read_text()
        disabled = await machine.tether("access", "disable")
        assert disabled.returncode == 0, disabled.stderr
        closed = await machine.status()
        assert closed["facts"] == {
            "access_open": False,
            "expires_in_seconds": None,
            "tether_connected": False,
            "live_sessions": 0,
            "recording_failures": 1,  # kept after access closed, as the recording is
        }
        for _ in range(100):
            if "tether_agent_tether_connected 0.0" in textfile.read_text():
                break
            await asyncio.sleep(0.05)
        assert "tether_agent_access_open 0.0" in textfile.read_text()
    finally:
        await stop(machine, agent)
