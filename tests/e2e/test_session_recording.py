"""Support sessions are recorded on the customer's machine, end to end through the relay.

Stock OpenSSH drives the demo system: an interactive ``ssh -tt`` session on a real pty
(window size, a resize, exit status), commands without a terminal, modern scp (SFTP)
up and down and legacy ``scp -O``. Then the customer's ``tether access recordings`` /
``play`` show what happened, and the audit log has the logins, logouts and stored
recordings. Recording fails closed when its directory is unwritable; ``--fail open``
runs the session anyway.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import secrets
import signal
import struct
import subprocess
import termios
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import run_ssh
from tether.agent.machine.recorder_setup import DIRECTORY_MODE
from tether.demo import DemoSystem

pytestmark = pytest.mark.sandbox

AS_SUPPORT = ["setpriv", "--reuid=tether-support", "--regid=tether-support", "--init-groups", "--"]


class Terminal:
    """Runs a program on a pty of a chosen size, as a person's terminal would."""

    def __init__(self, argv: list[str], columns: int, rows: int) -> None:
        self.master, slave = os.openpty()
        self.resize(columns, rows)
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        self.output = bytearray()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            self.output += data

    def resize(self, columns: int, rows: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    async def expect(self, pattern: str, within: float = 20.0) -> None:
        deadline = time.monotonic() + within
        while re.search(pattern, self.output.decode(errors="replace")) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not seen; terminal shows {bytes(self.output)!r}")
            await asyncio.sleep(0.05)

    async def wait(self) -> int:
        return await asyncio.to_thread(self.proc.wait, 20)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


def _json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def _finished_recordings(system: DemoSystem, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    while True:
        items = _json(await asyncio.to_thread(system.access, "recordings", "--json"))
        audit = _json(await asyncio.to_thread(system.access, "log", "--json"))
        stored = sum(row["text"].startswith("recording stored:") for row in audit["rows"])
        if len(items) >= count and not any(i["live"] for i in items) and stored >= count:
            return list(items)
        if time.monotonic() > deadline:
            raise AssertionError(f"recordings did not all finish: {items}")
        await asyncio.sleep(0.3)


async def test_support_sessions_through_the_relay_are_recorded(
    system: DemoSystem, tmp_path: Path
) -> None:
    assert system.engineer is not None
    assert system.machine is not None
    serial, ssh = system.serial, system.engineer.ssh
    token = secrets.token_hex(4)

    # Interactive: a real pty, its size and a resize reach the shell; exit status 3.
    term = Terminal(ssh("-tt", serial), columns=101, rows=33)
    try:
        await term.expect(r"[$#] $")
        term.type(f"stty size; echo hello-$((6*7))-{token}\r")
        await term.expect(rf"\r\nhello-42-{token}")
        await term.expect(r"\r33 101\r\n")
        term.resize(120, 40)
        os.kill(term.proc.pid, signal.SIGWINCH)  # as the terminal would, to its foreground ssh
        term.type("stty size\r")
        await term.expect(r"\r40 120\r\n")
        term.type("exit 3\r")
        assert await term.wait() == 3
    finally:
        term.close()

    # Without a terminal: streams kept apart, stdin passed through, exit status kept.
    result = await run_ssh(ssh(serial, "echo out; echo err >&2; exit 7"))
    assert (result.returncode, result.stdout, result.stderr) == (7, b"out\n", b"err\n")
    assert (await run_ssh(ssh(serial, "false"))).returncode == 1
    counted = await run_ssh(ssh(serial, "wc -c"), input=b"x" * 300_000)
    assert counted.stdout.strip() == b"300000"

    # scp (SFTP underneath) up and down, and the legacy scp protocol.
    payload = os.urandom(200_000)
    (tmp_path / "up.bin").write_bytes(payload)
    config = ["-F", str(system.engineer.ssh_config)]
    up = await run_ssh(["scp", *config, str(tmp_path / "up.bin"), f"{serial}:up.bin"])
    assert up.returncode == 0, up.stderr
    down = await run_ssh(["scp", *config, f"{serial}:up.bin", str(tmp_path / "down.bin")])
    assert down.returncode == 0, down.stderr
    assert (tmp_path / "down.bin").read_bytes() == payload
    legacy = await run_ssh(["scp", "-O", *config, str(tmp_path / "up.bin"), f"{serial}:old.bin"])
    assert legacy.returncode == 0, legacy.stderr
    home = system.machine.host_path("/home/tether-support")
    assert (home / "old.bin").read_bytes() == payload

    items = await _finished_recordings(system, 7)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        assert item["engineer"] == "demo"  # from the certificate, via ExposeAuthInfo
        by_kind.setdefault(item["kind"], []).append(item)
    (shell,) = by_kind["shell"]
    assert shell["exit_status"] == 3
    raw = system.access("play", shell["id"], "--raw")
    assert raw.returncode == 0, raw.stderr
    assert f"hello-42-{token}" in raw.stdout
    cast = system.access("play", shell["id"], "--cast").stdout.splitlines()
    assert json.loads(cast[0])["width"] == 101
    assert [120, 40] in [
        [int(n) for n in e[2].split("x")] for e in map(json.loads, cast[1:]) if e[1] == "r"
    ]
    assert f"echo hello-$((6*7))-{token}" in raw.stdout  # the terminal's echo, not keystrokes
    commands = {i["command"]: i for i in by_kind["command"]}
    assert commands["echo out; echo err >&2; exit 7"]["exit_status"] == 7
    assert commands["false"]["exit_status"] == 1
    played = system.access("play", commands["echo out; echo err >&2; exit 7"]["id"], "--raw")
    assert played.stdout == "out\nerr\n"
    transfers = [t for i in by_kind["sftp"] for t in i["transfers"]]
    assert {"op": "upload", "path": "up.bin", "bytes": 200_000} in transfers
    assert {"op": "download", "path": "/home/tether-support/up.bin", "bytes": 200_000} in [
        {**t, "path": t["path"]} for t in transfers
    ] or any(t["op"] == "download" and t["bytes"] == 200_000 for t in transfers)
    (scp,) = by_kind["scp"]
    assert scp["transfers"] == [{"op": "upload", "path": "up.bin", "bytes": 200_000}]

    checked = json.loads(system.access("check", "--json").stdout)
    (recording_check,) = [c for c in checked["checks"] if c["name"] == "session recording"]
    assert recording_check["ok"], recording_check
    assert "/var/lib/tether/recordings" in recording_check["detail"]

    audit = _json(system.access("log", "--json"))
    texts = [row["text"] for row in audit["rows"]]
    assert sum(t.startswith("support login:") for t in texts) == 7
    assert sum(t.startswith("support logout:") for t in texts) == 7

    # Fail closed: the recordings directory is not writable -> nothing runs.
    recordings = system.machine.host_path("/var/lib/tether/recordings")
    os.chmod(recordings, 0o1700)
    try:
        refused = await run_ssh(ssh(serial, f"touch ran-{token}"))
    finally:
        os.chmod(recordings, DIRECTORY_MODE)
    assert refused.returncode == 255
    assert b"tether: session refused: cannot record" in refused.stderr
    assert not (home / f"ran-{token}").exists()

    # Fail open ("record if possible"): the same recorder runs the session unrecorded.
    drop_in = system.machine.host_path("/etc/ssh/sshd_config.d/tether.conf").read_text()
    (force,) = re.findall(r"ForceCommand (.*)", drop_in)
    assert "--fail closed" in force
    os.chmod(recordings, 0o1700)
    try:
        opened = system.machine.run(
            [*AS_SUPPORT, "/bin/sh", "-c", force.replace("--fail closed", "--fail open")],
            env={"SSH_ORIGINAL_COMMAND": "echo ran-open", "PATH": "/usr/bin:/bin"},
            cwd="/tmp",
        )
    finally:
        os.chmod(recordings, DIRECTORY_MODE)
    assert (opened.returncode, opened.stdout) == (0, "ran-open\n"), opened.stderr
    assert "NOT recorded" in opened.stderr


async def test_sessions_ended_by_a_close_are_shown_ended_and_counted_as_sessions(
    system: DemoSystem,
) -> None:
    """Issue 11: a session cut off by disable is ended (with its duration), never "live",
    and `sessions killed` counts sessions, not their processes."""
    from tests.e2e.test_tether_path import live_session

    session = await live_session(system)  # a shell running `sleep`, and its recorder
    disabled = await asyncio.to_thread(system.access, "disable")
    assert disabled.returncode == 0, disabled.stderr
    await asyncio.wait_for(session.wait(), 5)
    items = _json(await asyncio.to_thread(system.access, "recordings", "--json"))
    assert len(items) == 1
    cut = items[0]
    assert cut["live"] is False
    assert cut["cut_off"] is True
    assert cut["ended"] is not None
    assert cut["duration"] is not None
    listed = await asyncio.to_thread(system.access, "recordings")
    assert " live " not in listed.stdout
    assert "(cut off)" in listed.stdout
    audit = _json(await asyncio.to_thread(system.access, "log", "--json"))
    closed = next(r["text"] for r in audit["rows"] if r["text"].startswith("access closed:"))
    assert re.search(r"sessions killed 1(;|$)", closed), closed
