"""`tether demo` as a user tries it: what the demo sets up must work as printed.

Each test drives a fresh :class:`tether.demo.DemoSystem` (see conftest.py): a sandboxed
machine with real sshd and agent, a relay and a vendor service on this host.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.harness import run_ssh
from tether.agent.network import ReadyProtocol, stack_layer
from tether.carriers import TlsCodec, WebSocketCodec
from tether.demo import AGENT_CONFIG, DemoSystem
from tether.store import CaseStatus

pytestmark = pytest.mark.sandbox


async def _ssh(system: DemoSystem, *args: str) -> subprocess.CompletedProcess[str]:
    assert system.engineer is not None
    return await asyncio.to_thread(
        subprocess.run, system.engineer.ssh(*args), capture_output=True, text=True, timeout=30
    )


async def _ssh_tool(system: DemoSystem, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Stock ``scp`` or ``sftp`` with the demo engineer's OpenSSH config."""
    assert system.engineer is not None
    argv = [tool, "-F", str(system.engineer.ssh_config), *args]
    return await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=30)


async def _pending_case(system: DemoSystem, asking: subprocess.Popen[str]) -> int:
    """The case the machine's request opened (fails with its words if it gave up)."""
    assert system.store is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        cases = await system.store.cases.list(status=CaseStatus.PENDING)
        if cases:
            return cases[0].id
        if asking.poll() is not None:
            _, said = asking.communicate()
            raise AssertionError(f"the request ended (exit {asking.returncode}): {said}")
        await asyncio.sleep(0.1)
    raise AssertionError("no case was opened within 30 s")


async def test_one_click_works_out_of_the_box(system: DemoSystem) -> None:
    """The customer's `enable --request` reaches the demo's relay; an approval tethers."""
    assert system.machine is not None
    assert system.authority is not None
    closed = await asyncio.to_thread(system.access, "disable")
    assert closed.returncode == 0, closed.stderr
    asking = system.machine.popen(
        [sys.executable, "-m", "tether", "access", "enable", "--request", "disk full on /var",
         "--config", AGENT_CONFIG],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        case_id = await _pending_case(system, asking)
        case = await system.authority.approve_case(case_id, by="admin")  # the console's Approve
        _, said = await asyncio.to_thread(asking.communicate, timeout=30)
    finally:
        if asking.poll() is None:
            asking.kill()
            asking.communicate()
    assert asking.returncode == 0, said
    assert "The vendor issued a key" in said
    status = await system.wait_for_tether("connected")
    access = status["access"]
    assert isinstance(access, dict)
    assert access["key_id"] == case.key_id
    shown = await _ssh(system, system.serial, "hostname")
    assert shown.stdout.strip() == system.serial, shown.stderr


async def test_the_machine_has_its_own_tmp(system: DemoSystem) -> None:
    """`scp FILE DEMO-0001:/tmp/` lands in the machine's /tmp, not in this host's."""
    assert system.machine is not None
    name = f"tether-demo-scp-{secrets.token_hex(6)}.txt"
    payload = system.workdir / name
    payload.write_text("sent through the relay\n")
    on_host = Path("/tmp") / name
    try:
        sent = await _ssh_tool(system, "scp", str(payload), f"{system.serial}:/tmp/{name}")
        assert sent.returncode == 0, sent.stderr
        assert not on_host.exists()
        shown = await _ssh(system, system.serial, f"cat /tmp/{name}")
        assert shown.stdout == "sent through the relay\n", shown.stderr
        assert system.machine.host_path(f"/tmp/{name}").read_text() == "sent through the relay\n"
        # The machine's own programs see the same /tmp, and none of this host's:
        # the demo's files (under the host's /tmp here) are not there.
        assert name in system.machine.run(["ls", "/tmp"]).stdout.split()
        assert str(system.workdir).startswith("/tmp/")
        assert system.machine.run(["test", "-e", str(system.workdir)]).returncode == 1
    finally:
        on_host.unlink(missing_ok=True)


async def test_machine_commands_answer_scripts_in_json(system: DemoSystem) -> None:
    """`access reset`, `agent install` and `agent web-password` with --json, on the machine."""
    assert system.machine is not None
    reset = await asyncio.to_thread(system.access, "reset", "--json")
    assert reset.returncode == 0, reset.stderr
    assert json.loads(reset.stdout) == {
        "reconnecting": True,
        "relay": f"127.0.0.1:{system.relay_port}",
    }
    await system.wait_for_tether("connected")
    agent = [sys.executable, "-m", "tether", "agent"]
    installed = await asyncio.to_thread(
        system.machine.run, [*agent, "install", "--json", "--config", AGENT_CONFIG]
    )
    assert installed.returncode == 0, installed.stderr
    report = json.loads(installed.stdout)
    assert report["scheduler"] == "cron"  # the sandbox has no systemd
    assert "/etc/cron.d/tether" in report["files"]
    password = await asyncio.to_thread(
        system.machine.run,
        [*agent, "web-password", "--json", "--config", AGENT_CONFIG],
        input="a long enough page password\n",
    )
    assert password.returncode == 0, password.stderr
    assert json.loads(password.stdout)["password_set"] is True
    closed = await asyncio.to_thread(system.access, "disable")
    assert closed.returncode == 0, closed.stderr
    nothing = await asyncio.to_thread(system.access, "reset", "--json")
    assert nothing.returncode == 1
    assert "no tether is open" in nothing.stderr
    assert nothing.stdout == ""


async def test_the_demo_relay_serves_ssh_in_tls_and_over_websocket_on_its_port(
    system: DemoSystem,
) -> None:
    """The demo makes the relay a TLS certificate: all three carriers answer on its port."""
    assert system.engineer is not None
    openssl = shutil.which("openssl")
    assert openssl is not None
    port = system.relay_port
    # Stock ssh inside stock openssl's TLS reaches the machine's sshd through the relay.
    wrap = f"ProxyCommand={openssl} s_client -quiet -connect 127.0.0.1:{port}"
    argv = system.engineer.ssh("-o", wrap, "-W", f"{system.serial}:22", "tether-relay")
    banner = await run_ssh(argv, timeout=30)
    assert banner.stdout.startswith(b"SSH-2.0-OpenSSH"), banner.stderr
    # And a WebSocket upgrade inside TLS reaches the relay's SSH.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    raw, _ = await asyncio.get_running_loop().create_connection(ReadyProtocol, "127.0.0.1", port)
    tls = await stack_layer(raw, TlsCodec(context, server_side=False), b"")
    assert tls.get_extra_info("tls_version") in ("TLSv1.2", "TLSv1.3")
    ws = await stack_layer(tls, WebSocketCodec(host=f"127.0.0.1:{port}"), b"")
    reader = _FirstLine()
    ws.set_protocol(reader)
    ws.write(b"SSH-2.0-demo_test\r\n")
    try:
        line = await asyncio.wait_for(reader.line, 10)
    finally:
        ws.close()
    assert line.startswith(b"SSH-2.0-Tether_relay"), line


class _FirstLine(asyncio.Protocol):
    """Keeps what arrives until its first line is complete."""

    def __init__(self) -> None:
        self.buffer = b""
        self.line: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n" in self.buffer and not self.line.done():
            self.line.set_result(self.buffer)
