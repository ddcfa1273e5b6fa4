"""Live view (issue 17): the customer follows a running support session, read-only.

The engineer logs in with stock ``ssh -tt`` through the relay; on the machine the
customer runs ``tether access watch``, which follows the recorder's live stream. What
the customer (or anyone with the stream's socket) sends goes nowhere: the engineer's
terminal never shows it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_session_recording import Terminal
from tether.demo import AGENT_CONFIG, DemoSystem

pytestmark = pytest.mark.sandbox

#: Run on the machine as root: connect to a live session's socket and try to type into it.
TYPE_INTO_STREAM = """
import socket, sys
from pathlib import Path
from tether.config import AgentConfig
from tether.agent.recording.recorder.live import live_path, socket_address
directory = AgentConfig.load(Path(sys.argv[1])).recordings_dir
address, _ = socket_address(live_path(directory, sys.argv[2]))
conn = socket.socket(socket.AF_UNIX)
conn.connect(address)
hello = conn.recv(65536)
try:
    for _ in range(50):
        conn.sendall(sys.argv[3].encode())
    print("sent")
except OSError as exc:
    print("refused", exc.errno)
"""


class Watcher:
    """``tether access watch`` running on the machine, its stdout read as it comes."""

    def __init__(self, system: DemoSystem, *args: str) -> None:
        assert system.machine is not None
        self.proc = system.machine.popen(
            [sys.executable, "-m", "tether", "access", "watch", *args, "--config", AGENT_CONFIG],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.output = bytearray()
        self._reader = asyncio.get_running_loop().run_in_executor(None, self._read)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read1(65536):
            self.output += chunk

    async def expect(self, text: bytes, within: float = 20.0) -> None:
        deadline = time.monotonic() + within
        while text not in self.output:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not seen; the watcher shows {bytes(self.output)!r}")
            await asyncio.sleep(0.05)

    async def finish(self) -> tuple[int, str]:
        assert self.proc.stderr is not None
        code = await asyncio.to_thread(self.proc.wait, 20)
        await self._reader
        return code, self.proc.stderr.read().decode()

    def interrupt(self) -> None:
        """Ctrl-C, as the terminal gives it to the watcher (not to nsenter around it)."""
        pids: list[int] = [self.proc.pid]
        for pid in pids:
            for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
                pids.append(int(child))
        (target,) = [
            p
            for p in pids
            if b"watch" in Path(f"/proc/{p}/cmdline").read_bytes()
            and b"tether" in Path(f"/proc/{p}/cmdline").read_bytes()
            and Path(f"/proc/{p}/exe").resolve().name.startswith("python")
        ]
        os.kill(target, signal.SIGINT)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def _json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def live_ids(system: DemoSystem, count: int) -> list[str]:
    """The ids of the ``count`` running sessions, once that many run."""
    deadline = time.monotonic() + 20
    while True:
        items = _json(await asyncio.to_thread(system.access, "recordings", "--json"))
        live = [i["id"] for i in items if i["live"]]
        if len(live) == count:
            return live
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {count} running sessions: {items}")
        await asyncio.sleep(0.2)


async def test_access_watch_follows_a_live_session_read_only(system: DemoSystem) -> None:
    assert system.engineer is not None
    assert system.machine is not None
    token = secrets.token_hex(4)

    nothing = await asyncio.to_thread(system.access, "watch")
    assert nothing.returncode == 1
    assert "no support session is running now" in nothing.stderr

    term = Terminal(system.engineer.ssh("-tt", system.serial), columns=100, rows=30)
    try:
        await term.expect(r"[$#] $")
        term.type(f"echo before-{token}\r")
        await term.expect(rf"\rbefore-{token}\r\n")
        (session,) = await live_ids(system, 1)

        # Joining late: the watcher first sees what is on the screen already.
        watcher = Watcher(system)
        try:
            await watcher.expect(f"before-{token}".encode())
            # What the customer types into the watcher goes nowhere.
            assert watcher.proc.stdin is not None
            watcher.proc.stdin.write(f"echo typed-by-watcher-{token}\n".encode())
            watcher.proc.stdin.flush()
            term.type(f"echo marker-{token}\r")
            await watcher.expect(f"marker-{token}".encode())

            # Neither does anything written into the stream's socket itself.
            tried = await asyncio.to_thread(
                system.machine.run,
                [
                    sys.executable,
                    "-c",
                    TYPE_INTO_STREAM,
                    AGENT_CONFIG,
                    session,
                    f"echo injected-{token}\r",
                ],
            )
            assert tried.returncode == 0, tried.stderr
            assert tried.stdout.startswith("refused"), tried.stdout

            # Ctrl-C leaves the watcher, not the session.
            watcher.interrupt()
            code, said = await watcher.finish()
            assert code == 0, said
            assert "Stopped watching; the session goes on." in said
        finally:
            watcher.close()

        term.type(f"echo still-{token}\r")
        await term.expect(rf"\rstill-{token}\r\n")
        assert f"injected-{token}" not in term.output.decode(errors="replace")
        assert f"typed-by-watcher-{token}" not in term.output.decode(errors="replace")

        # Two sessions: the watcher must be told which one, and lists them.
        other = subprocess.Popen(  # noqa: ASYNC220 - the engineer's second terminal
            system.engineer.ssh(system.serial, "sleep 60"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            both = await live_ids(system, 2)
            which = await asyncio.to_thread(system.access, "watch")
            assert which.returncode == 2
            assert "several support sessions are running; name one" in which.stderr
            assert all(i in which.stderr for i in both)
        finally:
            other.kill()
            other.wait()

        # Named, it follows that one to its end and says how it ended; --json gives
        # a script the stream itself.
        watcher = Watcher(system, session)
        scripted = Watcher(system, session, "--json")
        try:
            await watcher.expect(f"still-{token}".encode())
            await scripted.expect(f"still-{token}".encode())
            term.type("exit 4\r")
            assert await term.wait() == 4
            code, said = await watcher.finish()
            assert code == 0, said
            assert "The session ended (exit status 4)." in said
            code, said = await scripted.finish()
            assert code == 0, said
            lines = [json.loads(line) for line in scripted.output.decode().splitlines()]
            assert (lines[0]["cols"], lines[0]["rows"]) == (100, 30)
            assert f"still-{token}" in lines[0]["init"]
            assert lines[-1] == {"end": {"status": 4}}
        finally:
            watcher.close()
            scripted.close()
    finally:
        term.close()


#: Run on the machine as root: connect to a live session's stream, never read, report.
STALL = """
import socket, sys, time
from pathlib import Path
from tether.config import AgentConfig
from tether.agent.recording.recorder.live import live_path, socket_address
directory = AgentConfig.load(Path(sys.argv[1])).recordings_dir
address, _ = socket_address(live_path(directory, sys.argv[2]))
conn = socket.socket(socket.AF_UNIX)
conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
conn.connect(address)
print("attached", flush=True)
sys.stdin.readline()  # the test says when to look: until then, nothing is read
got = 0
while chunk := conn.recv(1 << 20):
    got += len(chunk)
print("closed after", got, flush=True)
"""


async def test_a_stalled_watcher_never_holds_the_session_back(system: DemoSystem) -> None:
    """A watcher that reads nothing is let go; the engineer's output never waits for it."""
    assert system.engineer is not None
    assert system.machine is not None
    term = Terminal(system.engineer.ssh("-tt", system.serial), columns=100, rows=30)
    stalled = None
    try:
        await term.expect(r"[$#] $")
        (session,) = await live_ids(system, 1)
        stalled = system.machine.popen(
            [sys.executable, "-c", STALL, AGENT_CONFIG, session],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert stalled.stdout is not None
        assert stalled.stdin is not None
        assert await asyncio.to_thread(stalled.stdout.readline) == b"attached\n"
        # Far more output than a watcher's socket buffer holds (512 KiB).
        term.type("head -c 3000000 /dev/zero | base64 -w 100; echo done-$((5*5))\r")
        await term.expect(r"\ndone-25\r\n", within=60)
        stalled.stdin.write(b"look\n")
        stalled.stdin.flush()
        said = await asyncio.to_thread(stalled.stdout.readline)
        assert said.startswith(b"closed after"), said
        # It was cut off long before the end of the 4 MB the session printed.
        assert int(said.split()[-1]) < 2_500_000, said
        term.type("echo still-$((6*6))\r")
        await term.expect(r"\rstill-36\r\n")
    finally:
        if stalled is not None:
            stalled.kill()
            stalled.communicate()
        term.close()


async def test_access_watch_shows_a_file_transfer_in_progress(
    system: DemoSystem, tmp_path: Path
) -> None:
    assert system.engineer is not None
    payload = tmp_path / "live-up.bin"
    payload.write_bytes(os.urandom(3_000_000))
    config = ["-F", str(system.engineer.ssh_config)]
    # 8 Mbit/s: a few seconds, long enough to watch it move.
    upload = await asyncio.create_subprocess_exec(
        "scp",
        "-l",
        "8000",
        *config,
        str(payload),
        f"{system.serial}:live-up.bin",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    watcher = None
    try:
        (session,) = await live_ids(system, 1)
        watcher = Watcher(system, session)
        _, err = await asyncio.wait_for(upload.communicate(), 60)
        assert upload.returncode == 0, err
        code, said = await watcher.finish()
        assert code == 0, said
        assert re.search(r"transferring: upload \S*live-up\.bin \(\d+ bytes\)", said), said
        assert "The session ended (exit status 0)." in said
    finally:
        if watcher is not None:
            watcher.close()
        if upload.returncode is None:
            upload.kill()
            await upload.wait()
