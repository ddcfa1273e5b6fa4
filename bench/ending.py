"""How fast access ends, and what the agent costs, on the whole system (:class:`DemoSystem`).

The machine is a sandbox with its own stock sshd and the real agent daemon; the
engineer holds a live shell through the relay (stock ``ssh``). Each try opens access
with a fresh key, starts the session, ends access one way and times until the
engineer's ``ssh`` has exited (the session is gone, not only new logins).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bench.parts import rss_kib
from bench.relay_metrics import HistogramReading, scrape_histogram
from tether.agent.machine.service import cron_command
from tether.demo import DemoSystem

AGENT_ARGV = [
    sys.executable,
    "-m",
    "tether",
    "agent",
    "serve",
    "--config",
    "/etc/tether/agent.toml",
]


async def access(system: DemoSystem, *args: str) -> subprocess.CompletedProcess[str]:
    result = await asyncio.to_thread(system.access, *args)
    if result.returncode != 0 and args[0] != "status":
        said = (result.stderr.strip() or result.stdout.strip())[-500:]
        raise RuntimeError(f"tether access {args[0]} failed ({result.returncode}): {said}")
    return result


async def status(system: DemoSystem) -> dict[str, object]:
    result = await access(system, "status", "--json")
    return dict(json.loads(result.stdout)) if result.returncode == 0 else {}


async def wait_closed(system: DemoSystem, within: float = 30.0) -> float:
    """Wait until the machine says access is closed; return when (``time.time()``)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        state = await status(system)
        if _access(state).get("status") == "closed":
            return time.time()
        await asyncio.sleep(0.05)
    raise RuntimeError(f"access did not close within {within:.0f} s: {state}")


async def open_access(system: DemoSystem, *extra: str) -> None:
    await wait_closed(system)
    key = await system.issue_key()
    await access(system, "enable", "--key", key, *extra)
    await system.wait_for_tether("connected")


@dataclass
class Session:
    """An engineer's live shell on the machine, through the relay."""

    proc: asyncio.subprocess.Process

    @classmethod
    async def start(cls, system: DemoSystem) -> Session:
        assert system.engineer is not None
        proc = await asyncio.create_subprocess_exec(
            *system.engineer.ssh(system.serial, "echo session-ready; exec sleep 600"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if line.strip() != b"session-ready":
            err = await proc.stderr.read() if proc.stderr else b""
            raise RuntimeError(f"the engineer's session did not start: {err.decode()[-300:]}")
        return cls(proc)

    async def gone_within(self, seconds: float) -> float:
        """Wait for the session's end; return when it ended (``time.time()``)."""
        await asyncio.wait_for(self.proc.wait(), seconds)
        return time.time()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()


async def time_ending(
    system: DemoSystem,
    end: Callable[[], Awaitable[object]],
    tries: int,
    progress: Callable[[], None] = lambda: None,
) -> list[float]:
    """Seconds from ``end()`` being called until the live session was gone, per try."""
    samples = []
    for _ in range(tries):
        await open_access(system)
        session = await Session.start(system)
        try:
            start = time.time()
            await end()
            samples.append(await session.gone_within(30) - start)
        finally:
            session.kill()
        progress()
    return samples


async def revoke(system: DemoSystem) -> None:
    assert system.authority is not None
    assert system.key_id is not None
    await system.authority.revoke_key(system.key_id, reason="benchmark", by="bench")


#: The relay's own timing of a key revocation cutting a live tether.
REVOCATION_CUT = "tether_relay_revocation_cut_seconds"


def relay_metrics_url(system: DemoSystem) -> str:
    """The demo relay's ``/metrics`` address."""
    if system.relay is None or system.relay.metrics_server is None:
        raise RuntimeError("the demo relay serves no metrics endpoint")
    return f"http://{system.relay.metrics_server.address}/metrics"


async def relay_revocations(system: DemoSystem) -> HistogramReading:
    """The relay's key revocation histogram now (scraped over HTTP, as Prometheus would)."""
    return await scrape_histogram(relay_metrics_url(system), REVOCATION_CUT, kind="key")


async def disable(system: DemoSystem) -> None:
    await access(system, "disable")


def _access(state: dict[str, object]) -> dict[str, object]:
    body = state.get("access")
    return body if isinstance(body, dict) else {}


def _expires_at(state: dict[str, object]) -> float:
    return datetime.fromisoformat(str(_access(state)["expires_at"])).timestamp()


async def expiry_with_agent(system: DemoSystem, seconds: int = 3) -> float:
    """Access opened for ``seconds``: from its expiry until the live session was gone."""
    await open_access(system, "--duration", f"{seconds}s")
    session = await Session.start(system)
    try:
        expires = _expires_at(await status(system))
        return await session.gone_within(seconds + 30) - expires
    finally:
        session.kill()


def agent_pid(system: DemoSystem) -> int:
    """The host pid of the agent daemon's Python process (the sandbox wraps it in nsenter)."""
    assert system.agent is not None
    todo, seen = [system.agent.pid], []
    while todo:
        pid = todo.pop()
        seen.append(pid)
        with contextlib.suppress(OSError):
            todo += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for pid in seen:
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if cmdline[:1] == [sys.executable.encode()] and cmdline[3:5] == [b"agent", b"serve"]:
                return pid
    raise RuntimeError("the agent daemon's process was not found")


def stop_agent(system: DemoSystem, sig: int = signal.SIGTERM) -> None:
    """Stop the daemon (SIGKILL: as a crash or power loss would)."""
    assert system.agent is not None
    with contextlib.suppress(ProcessLookupError):
        os.kill(agent_pid(system), sig)
    system.agent.wait(10)


async def expiry_agent_dead(system: DemoSystem, minute: float = 60.0, seconds: int = 3) -> float:
    """Agent killed, access past its expiry: until the installed cron job closed it.

    Nothing else runs on the sandboxed machine, so this plays cron: each line of the
    entry ``tether agent install`` wrote runs at every wall-clock ``minute`` boundary,
    after its ``sleep N;`` if it has one, as cron would run it.
    """
    assert system.machine is not None
    install = system.machine.run(
        [sys.executable, "-m", "tether", "agent", "install", "--config", "/etc/tether/agent.toml"]
    )
    entry = system.machine.host_path("/etc/cron.d") / "tether"
    if not entry.exists():
        raise RuntimeError(f"tether agent install wrote no cron entry: {install.stderr.strip()}")
    command = cron_command(entry)
    offsets = sorted(
        {0.0, *(int(n) * minute / 60 for n in re.findall(r"sleep (\d+);", entry.read_text()))}
    )
    await open_access(system, "--duration", f"{seconds}s")
    expires = _expires_at(await status(system))
    stop_agent(system, signal.SIGKILL)
    try:
        while True:
            now = time.time()
            start = now - now % minute
            runs = [start + o for o in offsets] + [start + minute + o for o in offsets]
            await asyncio.sleep(min(t for t in runs if t > now) - now)
            await asyncio.to_thread(system.machine.run, command)
            state = await status(system)
            if _access(state).get("status") == "closed" and time.time() > expires:
                return time.time() - expires
    finally:
        system.start_agent()


@dataclass
class AgentCost:
    idle_rss_mib: float
    #: from exec to the daemon answering on its control socket
    ready_seconds: float
    #: ... and to its tether being connected again (access was open)
    tether_seconds: float


async def agent_cost(system: DemoSystem) -> AgentCost:
    """Restart the daemon with access open; time its start; read its idle RSS."""
    await open_access(system)
    stop_agent(system)
    start = time.perf_counter()
    system.start_agent()
    ready = tether = 0.0
    while time.perf_counter() - start < 30:
        state = await status(system)
        tunnel = state.get("tunnel")
        if not ready and state.get("daemon_running"):
            ready = time.perf_counter() - start
        if isinstance(tunnel, dict) and tunnel.get("state") == "connected":
            tether = time.perf_counter() - start
            break
        await asyncio.sleep(0.02)
    if not tether:
        raise RuntimeError("the restarted agent did not reconnect within 30 s")
    await asyncio.sleep(2.0)
    rss = rss_kib(agent_pid(system)) / 1024
    await access(system, "disable")
    return AgentCost(rss, ready, tether)
