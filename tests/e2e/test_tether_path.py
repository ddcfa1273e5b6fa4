"""The whole path with real parts: stock ssh → relay → tether → sandboxed machine's real sshd.

Each test gets a fresh :class:`tether.demo.DemoSystem` (vendor, relay, a sandboxed
customer machine with stock sshd and the agent daemon, an engineer) — exactly what
``tether demo`` runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from tether.demo import DemoSystem
from tether.sandbox import sandbox_unavailable_reason

pytestmark = pytest.mark.sandbox


async def ssh(
    system: DemoSystem, *args: str, input: bytes = b"", timeout: float = 30
) -> subprocess.CompletedProcess[bytes]:
    assert system.engineer is not None
    proc = await asyncio.create_subprocess_exec(
        *system.engineer.ssh(*args),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(input), timeout)
    return subprocess.CompletedProcess(args, proc.returncode or 0, out, err)


async def test_engineer_ssh_jump_runs_command_on_machine_sshd(
    system: DemoSystem, tmp_path: Path
) -> None:
    result = await ssh(system, system.serial, "hostname; id -un")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().split() == [system.serial, "tether-support"]
    # The machine's own sshd logged the engineer's certificate (key id = engineer).
    assert system.machine is not None
    assert "ID demo (serial" in system.machine.sshd_log()
    # scp works through the same path.
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(300_000))
    assert system.engineer is not None
    # (async: the relay runs in this test's event loop)
    copy = await asyncio.create_subprocess_exec(
        "scp",
        "-F",
        str(system.engineer.ssh_config),
        str(payload),
        f"{system.serial}:payload.bin",
        stderr=subprocess.PIPE,
    )
    _, copy_err = await asyncio.wait_for(copy.communicate(), 30)
    assert copy.returncode == 0, copy_err
    stored = system.machine.host_path("/home") / "tether-support" / "payload.bin"
    assert stored.read_bytes() == payload.read_bytes()


async def test_ssh_local_forward_fetches_machine_web_page(system: DemoSystem) -> None:
    with socket_port() as port:
        pass
    assert system.engineer is not None
    forward = await asyncio.create_subprocess_exec(
        *system.engineer.ssh(
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-L",
            f"127.0.0.1:{port}:{system.serial}:443",
            "tether-relay",
        ),
        stderr=subprocess.PIPE,
    )
    try:
        body = await fetch_with_retry(port)
        assert f"Web UI of machine {system.serial}" in body
    finally:
        forward.terminate()
        await asyncio.wait_for(forward.wait(), 5)


async def test_invariant_engineer_reaches_only_allowed_ports(system: DemoSystem) -> None:
    refused = {
        f"{system.serial}:8080": f"port 8080 is not open on machine {system.serial}",
        "OTHER-0002:22": "machine OTHER-0002 is not tethered to this relay",
        "127.0.0.1:22": "is not tethered to this relay",
        "localhost:443": "is not tethered to this relay",
    }
    for target, message in refused.items():
        result = await ssh(system, "-W", target, "tether-relay")
        assert result.returncode != 0
        assert message in result.stderr.decode(), (target, result.stderr)
    shell = await ssh(system, "tether-relay", "id")
    assert b"this relay gives no shell or commands" in shell.stderr
    remote = await ssh(
        system,
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        "-R",
        "2222:127.0.0.1:22",
        "tether-relay",
        timeout=15,
    )
    assert remote.returncode != 0
    assert b"remote port forwarding failed" in remote.stderr


async def test_invariant_no_inbound_connection_needed_in_tether_mode(system: DemoSystem) -> None:
    assert system.machine is not None
    links = system.machine.run(["ip", "-o", "link", "show"]).stdout
    assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]
    # The machine has only loopback, yet the engineer reaches its sshd: the tether
    # is the machine's own outbound connection.
    result = await ssh(system, system.serial, "true")
    assert result.returncode == 0, result.stderr


async def test_invariant_ending_access_kills_live_sessions(system: DemoSystem) -> None:
    session = await live_session(system)
    started = time.monotonic()
    # The session's end is timed, not the CLI's: after killing, disable still archives
    # the home, removes the account and reloads sshd.
    disabling = asyncio.ensure_future(asyncio.to_thread(system.access, "disable"))
    await asyncio.wait_for(session.wait(), 5)
    elapsed = time.monotonic() - started
    disable = await disabling
    assert disable.returncode == 0, disable.stderr
    assert elapsed <= 1.0, f"live session outlived disable by {elapsed:.2f} s"
    again = await ssh(system, system.serial, "true")
    assert again.returncode != 0
    assert b"is not tethered to this relay" in again.stderr
    status = await asyncio.to_thread(system.access, "status")
    assert "closed (customer" in status.stdout


async def test_revoked_key_drops_tether_and_closes_access(system: DemoSystem) -> None:
    assert system.authority is not None
    assert system.key_id is not None
    session = await live_session(system)
    started = time.monotonic()
    await system.authority.revoke_key(system.key_id, reason="customer asked by phone")
    await asyncio.wait_for(session.wait(), 5)
    assert time.monotonic() - started <= 1.0
    for _ in range(50):
        status = await asyncio.to_thread(system.access, "status")
        if "closed (revoked" in status.stdout:
            break
        await asyncio.sleep(0.1)
    assert "closed (revoked" in status.stdout
    assert "customer asked by phone" in status.stdout


async def test_relay_restart_agent_comes_back(system: DemoSystem) -> None:
    await system.restart_relay()
    await system.wait_for_tether("connected", within=15)
    result = await ssh(system, system.serial, "hostname")
    assert result.stdout.decode().strip() == system.serial, result.stderr


async def test_key_expiry_drops_tether_and_closes_access(system: DemoSystem) -> None:
    assert system.authority is not None
    await asyncio.to_thread(system.access, "disable")
    key = await system.issue_key(lifetime=timedelta(seconds=4))
    enabled = await asyncio.to_thread(system.access, "enable", "--key", key)
    assert enabled.returncode == 0, enabled.stderr
    await system.wait_for_tether("connected")
    await asyncio.sleep(5.5)
    status = await asyncio.to_thread(system.access, "status", "--json")
    assert '"status": "closed"' in status.stdout
    assert '"close_reason": "expired"' in status.stdout
    result = await ssh(system, system.serial, "true")
    assert b"is not tethered" in result.stderr


async def test_key_from_another_machine_is_refused(system: DemoSystem, tmp_path: Path) -> None:
    """The same key applied on a second machine (same serial, other machine key)."""
    from tether.sandbox import Sandbox

    assert system.key is not None
    assert system.machine is not None
    twin = Sandbox(tmp_path / "twin", hostname=system.serial, uplink_ports=[system.relay_port])
    await asyncio.to_thread(twin.start)
    try:
        config = system.machine.host_path("/etc/tether") / "agent.toml"
        (twin.host_path("/etc/tether") / "agent.toml").write_text(config.read_text())
        agent = twin.popen(
            [
                sys.executable,
                "-m",
                "tether",
                "agent",
                "serve",
                "--config",
                "/etc/tether/agent.toml",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            enable = await asyncio.to_thread(
                twin.run,
                [
                    sys.executable,
                    "-m",
                    "tether",
                    "access",
                    "enable",
                    "--key",
                    system.key,
                    "--config",
                    "/etc/tether/agent.toml",
                ],
            )
            assert enable.returncode == 0, enable.stderr  # offline checks pass: same serial
            status = ""
            for _ in range(100):
                status = (
                    await asyncio.to_thread(
                        twin.run,
                        [
                            sys.executable,
                            "-m",
                            "tether",
                            "access",
                            "status",
                            "--config",
                            "/etc/tether/agent.toml",
                        ],
                    )
                ).stdout
                if "already used by another machine" in status:
                    break
                await asyncio.sleep(0.1)
            assert "already used by another machine" in status
        finally:
            agent.terminate()
            await asyncio.to_thread(agent.wait, 5)
    finally:
        await asyncio.to_thread(twin.stop)
    # The first machine still works.
    result = await ssh(system, system.serial, "true")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "relays",
    [1, pytest.param(3, marks=[pytest.mark.postgres, pytest.mark.haproxy])],
    ids=["one-relay", "fleet-of-3"],
)
def test_tether_demo_command_prints_working_ssh_and_tears_down(tmp_path: Path, relays: int) -> None:
    """`tether demo` and `tether demo --relays 3` (PostgreSQL, HAProxy): same commands."""
    if (reason := sandbox_unavailable_reason()) is not None:
        pytest.skip(reason)
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tether",
            "demo",
            "--dir",
            str(tmp_path / "d"),
            "--relays",
            str(relays),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert demo.stdout is not None
        command = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = demo.stdout.readline()
            if not line:
                break
            if line.strip().startswith("ssh -F") and line.strip().endswith("hostname"):
                command = line.split()
            if "Press Ctrl-C" in line:
                break
        assert command is not None, demo.stderr.read() if demo.stderr else ""
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
        assert result.stdout.strip() == "DEMO-0001", result.stderr
        listed = subprocess.run(
            [sys.executable, "-m", "tether", "vendor", "relay", "list", "--json",
             "--data-dir", str(tmp_path / "d" / "vendor")],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        alive = [r["relay_id"] for r in json.loads(listed.stdout) if r["alive"]]
        assert len(alive) == relays, listed.stdout + listed.stderr
    finally:
        os.killpg(demo.pid, signal.SIGINT)
        out, err = demo.communicate(timeout=30)
    assert "everything it started is gone" in out
    assert err == ""  # progress is output; a healthy demo has nothing to complain about
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path / "d")], capture_output=True, text=True)
    assert leftovers.stdout == ""


# --- helpers --------------------------------------------------------------------------


async def live_session(system: DemoSystem) -> asyncio.subprocess.Process:
    """An engineer's interactive-like ssh session that is up and running on the machine."""
    assert system.engineer is not None
    session = await asyncio.create_subprocess_exec(
        *system.engineer.ssh(system.serial, "echo started; sleep 120"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert session.stdout is not None
    assert await asyncio.wait_for(session.stdout.readline(), 30) == b"started\n"
    return session


class socket_port:
    """An OS-picked free loopback port (closed again before use)."""

    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        return int(self._sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


async def fetch_with_retry(port: int, attempts: int = 50) -> str:
    for _ in range(attempts):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.0\r\nHost: machine\r\n\r\n")
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            if data:
                return data.decode(errors="replace")
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"nothing answered on forwarded port {port}")
