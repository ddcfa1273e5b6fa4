"""An engineer's day with stock OpenSSH: login, ssh-config, ssh/scp, web, ls — and being cut off.

The demo system runs the real vendor service (HTTP), relay, and a sandboxed machine
whose agent opened access with an issued key. The engineer's state lives in a
temporary TETHER_ENGINEER_DIR; every command is the real ``tether`` process.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tether.demo import DemoSystem

pytestmark = pytest.mark.sandbox


async def run(
    args: list[str], env: dict[str, str], *, input: bytes = b"", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **env},
    )
    out, err = await asyncio.wait_for(proc.communicate(input), timeout)
    return subprocess.CompletedProcess(args, proc.returncode or 0, out.decode(), err.decode())


def tether(*args: str) -> list[str]:
    return [sys.executable, "-m", "tether", *args]


async def test_login_ssh_config_then_plain_ssh_scp_web_and_ls(
    system: DemoSystem, tmp_path: Path
) -> None:
    assert system.vendor_service is not None
    env = {"TETHER_ENGINEER_DIR": str(tmp_path / "engineer")}
    login = await run(
        tether("login", "--vendor", system.vendor_service.url, "--name", "demo"),
        env,
        input=system.engineer_password.encode() + b"\n",
    )
    assert login.returncode == 0, login.stderr
    assert "Logged in as demo; certificate valid until" in login.stdout + login.stderr
    listed = await run(tether("ls"), env)
    assert system.serial in listed.stdout, listed.stderr
    written = await run(tether("ssh-config", "--write"), env)
    assert written.returncode == 0, written.stderr
    config = tmp_path / "engineer" / "ssh_config"
    assert config.exists()

    # Stock OpenSSH, nothing wrapped: ssh and scp to the machine's real sshd.
    result = await run(["ssh", "-F", str(config), system.serial, "hostname; sudo -n id -un"], env)
    assert result.stdout.split() == [system.serial, "root"], result.stderr
    payload = tmp_path / "report.txt"
    payload.write_text("fixed it\n")
    copied = await run(["scp", "-F", str(config), str(payload), f"{system.serial}:report.txt"], env)
    assert copied.returncode == 0, copied.stderr
    assert system.machine is not None
    home = system.machine.host_path("/home") / "tether-support"
    assert (home / "report.txt").read_text() == "fixed it\n"

    # tether web: a local port to the machine's web UI.
    web = await asyncio.create_subprocess_exec(
        *tether("web", system.serial, "--local-port", "0"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **env},
    )
    try:
        assert web.stdout is not None
        url = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "127.0.0.1:" not in url:
            url = (await asyncio.wait_for(web.stdout.readline(), 30)).decode()
        assert url.startswith("http://127.0.0.1:"), url  # the demo's :443 serves plain HTTP
        port = int(url.split("127.0.0.1:")[1].split("/")[0])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        page = (await asyncio.wait_for(reader.read(), 10)).decode()
        writer.close()
        assert f"Web UI of machine {system.serial}" in page
        # While a connection through the relay is open, the vendor sees who is connected.
        _, holding = await asyncio.open_connection("127.0.0.1", port)
        busy = ""
        for _ in range(50):
            busy = (await run(tether("ls", "--json"), env)).stdout
            if '"demo"' in busy:
                break
            await asyncio.sleep(0.1)
        holding.close()
        assert '"demo"' in busy
    finally:
        web.terminate()
        await asyncio.wait_for(web.wait(), 10)


async def test_disabling_an_engineer_cuts_live_sessions_within_a_second(
    system: DemoSystem, tmp_path: Path
) -> None:
    assert system.engineer is not None
    assert system.store is not None
    session = await asyncio.create_subprocess_exec(
        *system.engineer.ssh(system.serial, "echo started; sleep 120"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert session.stdout is not None
    assert await asyncio.wait_for(session.stdout.readline(), 30) == b"started\n"
    started = time.monotonic()
    assert system.authority is not None
    await system.store.engineers.disable(
        "demo", reason="left the company", now=system.authority.clock.now()
    )
    await asyncio.wait_for(session.wait(), 5)
    assert time.monotonic() - started <= 1.0
    again = await run(system.engineer.ssh(system.serial, "true"), {})
    assert again.returncode == 255
    assert "Permission denied" in again.stderr


async def test_expired_certificate_is_explained(system: DemoSystem, tmp_path: Path) -> None:
    assert system.vendor_service is not None
    env = {"TETHER_ENGINEER_DIR": str(tmp_path / "engineer")}
    login = await run(
        tether("login", "--vendor", system.vendor_service.url, "--name", "demo", "--ttl", "61s"),
        env,
        input=system.engineer_password.encode() + b"\n",
    )
    assert login.returncode == 0, login.stderr
    await asyncio.sleep(2)  # within a minute of expiry counts as expired
    for command in (["ls"], ["ssh-config"], ["web", system.serial]):
        result = await run(tether(*command), env)
        assert result.returncode == 1
        assert "your certificate expire" in result.stderr  # "expired at" / "expires at … in 57s"
        assert "tether login" in result.stderr
