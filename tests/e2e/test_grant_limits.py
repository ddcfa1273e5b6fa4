"""Limits per grant (issue 17), enforced on the machine, driven by stock ssh/scp/sftp.

The customer opens access with ``tether access enable --key … --files … --no-sudo
--no-shell --max-session …``; the sandboxed machine's real sshd, sudo and session
recorder then hold the engineer to them, whatever the engineer's client asks for.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from tests.e2e.test_session_recording import Terminal
from tests.integration.harness import run_ssh
from tether.demo import DemoSystem

pytestmark = pytest.mark.sandbox


async def reopen_with(system: DemoSystem, *limits: str) -> None:
    """Close the demo's grant and open a new one with ``limits``."""
    closed = await asyncio.to_thread(system.access, "disable")
    assert closed.returncode == 0, closed.stderr
    key = await system.issue_key()
    opened = await asyncio.to_thread(system.access, "enable", "--key", key, *limits)
    assert opened.returncode == 0, opened.stderr
    await system.wait_for_tether("connected")


def transfers(system: DemoSystem, tmp_path: Path) -> tuple[list[str], str]:
    """The engineer's ssh options and the machine's name, for scp and sftp."""
    assert system.engineer is not None
    return ["-F", str(system.engineer.ssh_config)], system.serial


async def sftp(system: DemoSystem, tmp_path: Path, batch: str) -> tuple[int, str]:
    config, serial = transfers(system, tmp_path)
    script = tmp_path / "batch"
    script.write_text(batch)
    done = await run_ssh(["sftp", *config, "-b", str(script), serial])
    return done.returncode, done.stderr.decode(errors="replace")


async def test_file_transfer_off_no_sudo_and_max_session(
    system: DemoSystem, tmp_path: Path
) -> None:
    assert system.engineer is not None
    await reopen_with(system, "--files", "off", "--no-sudo", "--max-session", "3s")
    status = await asyncio.to_thread(system.access, "status", "--json")
    assert json.loads(status.stdout)["access"]["limits"] == {
        "shell": True,
        "files": "off",
        "sudo": False,
        "max_session_seconds": 3,
        "consent": "none",
        "consent_timeout_seconds": 300,
        "consent_on_timeout": "refuse",
    }
    said = (await asyncio.to_thread(system.access, "status")).stdout
    assert "no file transfer (sftp/scp); no administrator rights (sudo); sessions end after 3s" in (
        " ".join(said.split())
    )

    # The shell works, and the engineer is shown the limits before logging in.
    shell = await run_ssh(system.engineer.ssh(system.serial, "echo shell-ok"))
    assert shell.stdout == b"shell-ok\n", shell.stderr
    assert b"no file transfer (sftp/scp)" in shell.stderr
    # No sudoers file: sudo asks for a password the account does not have.
    sudo = await run_ssh(system.engineer.ssh(system.serial, "sudo -n true"))
    assert sudo.returncode != 0
    assert b"password is required" in sudo.stderr or b"not allowed" in sudo.stderr, sudo.stderr

    # scp (SFTP underneath and the legacy protocol) and sftp are refused both ways.
    config, serial = transfers(system, tmp_path)
    (tmp_path / "up.txt").write_text("payload\n")
    home = system.machine.host_path("/home/tether-support") if system.machine else tmp_path
    (home / "there.txt").write_text("on the machine\n")
    refused = b"file transfer (sftp, scp) is off"
    for argv in (
        ["scp", *config, str(tmp_path / "up.txt"), f"{serial}:up.txt"],
        ["scp", "-O", *config, str(tmp_path / "up.txt"), f"{serial}:up.txt"],
        ["scp", *config, f"{serial}:there.txt", str(tmp_path / "down.txt")],
        ["scp", "-O", *config, f"{serial}:there.txt", str(tmp_path / "down.txt")],
    ):
        copied = await run_ssh(argv)
        assert copied.returncode != 0, argv
        assert refused in copied.stderr or b"Connection closed" in copied.stderr, copied.stderr
    assert not (home / "up.txt").exists()
    assert not (tmp_path / "down.txt").exists()
    code, said = await sftp(system, tmp_path, "get there.txt\n")
    assert code != 0
    assert not (tmp_path / "there.txt").exists()

    # The session ends when its time is up, with the reason, whatever runs in it.
    started = time.monotonic()
    long = await run_ssh(system.engineer.ssh(system.serial, "echo started; sleep 60"))
    assert long.stdout == b"started\n"
    assert b"ends sessions after 3s" in long.stderr, long.stderr
    assert time.monotonic() - started < 3 + 2 + 5  # the limit, the kill grace, ssh's start


async def test_no_shell_download_only(system: DemoSystem, tmp_path: Path) -> None:
    assert system.engineer is not None
    assert system.machine is not None
    await reopen_with(system, "--no-shell", "--files", "download")
    home = system.machine.host_path("/home/tether-support")
    (home / "there.txt").write_text("on the machine\n")

    # An interactive login, as a person types it on a terminal: sshd refuses the
    # terminal (so `ssh -tt`, which insists on one, gets nowhere), the recorder the shell.
    term = Terminal(system.engineer.ssh(system.serial), columns=80, rows=24)
    try:
        await term.expect(r"PTY allocation request failed")
        await term.expect(r"session refused: this support grant allows no shell")
        assert await term.wait() == 255
    finally:
        term.close()
    forced = await run_ssh(system.engineer.ssh("-tt", system.serial), input=b"id\n")
    assert forced.returncode == 255
    assert b"PTY allocation request failed" in forced.stderr
    assert not forced.stdout
    command = await run_ssh(system.engineer.ssh(system.serial, "id"))
    assert command.returncode == 255
    assert b"session refused: this support grant allows no shell" in command.stderr

    # Downloads work, with scp (SFTP), legacy scp and sftp.
    config, serial = transfers(system, tmp_path)
    for n, argv in enumerate(
        (
            ["scp", *config, f"{serial}:there.txt", str(tmp_path / "a.txt")],
            ["scp", "-O", *config, f"{serial}:there.txt", str(tmp_path / "b.txt")],
        )
    ):
        copied = await run_ssh(argv)
        assert copied.returncode == 0, (n, copied.stderr)
    assert (tmp_path / "a.txt").read_text() == "on the machine\n"
    assert (tmp_path / "b.txt").read_text() == "on the machine\n"
    code, said = await sftp(system, tmp_path, f"get there.txt {tmp_path / 'c.txt'}\n")
    assert code == 0, said
    assert (tmp_path / "c.txt").read_text() == "on the machine\n"

    # Uploads fail, however they are asked for.
    (tmp_path / "up.txt").write_text("payload\n")
    for argv in (
        ["scp", *config, str(tmp_path / "up.txt"), f"{serial}:up.txt"],
        ["scp", "-O", *config, str(tmp_path / "up.txt"), f"{serial}:up.txt"],
    ):
        copied = await run_ssh(argv)
        assert copied.returncode != 0, argv
    code, said = await sftp(system, tmp_path, f"put {tmp_path / 'up.txt'} up.txt\n")
    assert code != 0, said
    assert not (home / "up.txt").exists()
