"""Idle tethers on one relay: memory per tether, handshakes per second, restart recovery.

A swarm process (:mod:`bench.swarm`) holds the tethers with the product's own tunnel
code; the relay is its own process, so its RSS and CPU time are its alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from bench.parts import Process, World, rss_kib
from tether.keys import KeyKind, issue_key
from tether.store import KeyKind as StoreKeyKind
from tether.store.models import IssuedKeyRow

#: Ports every swarm key names (nothing listens: idle tethers carry no channels).
SWARM_PORTS = (22,)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0


async def issue_many(world: World, count: int, file: Path, relay: str | None = None) -> None:
    """Sign ``count`` keys (one serial each) and record them in one transaction.

    The keys name ``relay`` (``HOST:PORT``; default: the world's one relay).

    The same signing and the same rows as ``Authority.issue_key``, without its per-key
    commit and audit fsync, which would make a 20,000-tether run spend minutes here.
    """
    assert world.authority is not None
    assert world.store is not None
    authority = world.authority
    now = authority.clock.now()
    rows, tokens = [], []
    for _ in range(count):
        token, claims = issue_key(
            authority.signing_key,
            serial=world.next_serial(),
            now=now,
            lifetime=timedelta(days=1),
            relay=relay or f"127.0.0.1:{world.relay_port}",
            relay_host_key=authority.relay_host_key_fingerprint,
            ports=SWARM_PORTS,
            vendor=authority.config.vendor,
            kind=KeyKind.MANUAL,
        )
        tokens.append(token)
        rows.append(
            IssuedKeyRow(
                key_id=claims.key_id,
                serial=claims.serial,
                kind=StoreKeyKind.MANUAL,
                issued_at=claims.issued_at,
                not_before=claims.not_before,
                expires_at=claims.expires_at,
                ports=claims.ports,
                relay=claims.relay,
                relay_host_key=claims.relay_host_key,
                issued_by="bench",
            )
        )
    async with world.store._db.write("recording benchmark keys") as session:
        session.add_all(rows)
    file.write_text("\n".join(tokens) + "\n")


@dataclass
class SwarmHandle:
    """The swarm process and a line reader over its output."""

    proc: Process

    def send(self, line: str) -> None:
        assert self.proc.popen.stdin is not None
        self.proc.popen.stdin.write(line.encode() + b"\n")
        self.proc.popen.stdin.flush()

    async def read(self, timeout: float) -> str:
        assert self.proc.popen.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.popen.stdout.readline), timeout)
        if not line:
            self.proc.check_alive()
            raise RuntimeError(f"the swarm ended; see {self.proc.log}")
        return line.decode().strip()

    def close(self, world: World) -> None:
        """End the swarm (closing its stdin makes it drop every tether and exit)."""
        if self.proc.popen.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.popen.stdin.close()
        self.proc.stop()
        world.processes.remove(self.proc)

    async def add(self, count: int, timeout: float) -> float:
        """Start ``count`` more tethers; return the seconds until all were connected."""
        self.send(f"add {count}")
        while True:
            words = (await self.read(timeout)).split()
            if words[0] == "added":
                return float(words[2])


def start_swarm(world: World, keys: Path) -> SwarmHandle:
    relay_toml = world.dir / "vendor" / "relay.toml"
    proc = world.spawn(
        "swarm",
        [sys.executable, "-m", "bench.swarm", str(keys), str(relay_toml)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    return SwarmHandle(proc)


#: Tethers one swarm process holds at most (each is a socket: the fd limit applies).
PER_SWARM = 10_000


async def add_across(
    swarms: list[SwarmHandle], count: int, have: int, per_second: float = 20.0
) -> float:
    """Add ``count`` tethers spread over ``swarms`` (filling each up to PER_SWARM).

    Gives up if a swarm's tethers come up slower than ``per_second`` (after 120 s).
    """
    jobs = []
    for i, swarm in enumerate(swarms):
        room = max(0, min(PER_SWARM * (i + 1), have + count) - max(PER_SWARM * i, have))
        if room:
            jobs.append(swarm.add(room, timeout=max(120.0, room / per_second)))
    return max(await asyncio.gather(*jobs))


@dataclass
class IdleResult:
    #: tethers -> relay RSS growth per tether (KiB) over the relay with none.
    kib_per_tether: dict[int, float]
    #: tethers accepted per second of relay CPU while ramping up (registration included).
    handshakes_per_cpu_second: float
    #: ... and per second of wall-clock time, with the swarm dialling 64 at once.
    handshakes_per_second: float


async def idle_tethers(world: World, steps: list[int]) -> IdleResult:
    """Ramp swarms through ``steps`` tethers, reading the relay's RSS at each."""
    assert world.relay_proc is not None
    swarms = []
    for i in range(0, steps[-1], PER_SWARM):
        keys = world.dir / f"swarm-{i // PER_SWARM}.keys"
        await issue_many(world, min(PER_SWARM, steps[-1] - i), keys)
        swarms.append(keys)
    await asyncio.sleep(1.0)  # let the relay settle after start-up
    relay = world.relay_proc.pid
    base = rss_kib(relay)
    handles = [start_swarm(world, keys) for keys in swarms]
    per_tether: dict[int, float] = {}
    cpu_start = cpu_seconds(relay)
    cpu = wall = 0.0
    have = 0
    try:
        for step in steps:
            wall += await add_across(handles, step - have, have)
            have = step
            cpu = cpu_seconds(relay) - cpu_start
            await asyncio.sleep(1.0)
            per_tether[step] = (rss_kib(relay) - base) / step
            cpu_start = cpu_seconds(relay) - cpu  # the idle second is not handshake time
            world.relay_proc.check_alive()
    finally:
        for handle in handles:
            handle.close(world)
    return IdleResult(per_tether, have / max(cpu, 1e-6), have / max(wall, 1e-6))


@dataclass
class RestartResult:
    tethers: int
    #: seconds from the relay accepting connections again until every tether was back.
    all_back: float
    #: most tethers that came back within one second.
    peak_per_second: int
    #: most connection attempts the agents started within one second (the spread).
    peak_dials_per_second: int
    #: seconds the relay took to stop (telling every agent when to come back)
    stop_seconds: float


async def restart(world: World, count: int, keys: Path) -> RestartResult:
    """Hold ``count`` tethers (keys from :func:`issue_many`), restart the relay, time their return."""
    swarm = start_swarm(world, keys)
    try:
        await swarm.add(count, timeout=max(120.0, count / 20))
        stopped = world.stop_relay()
        world.start_relay()
        back_from = time.perf_counter()
        swarm.send("watch")
        ticks: list[tuple[float, int, int]] = []
        deadline = back_from + 600
        while time.perf_counter() < deadline:
            words = (await swarm.read(60)).split()
            if words[0] != "tick":
                continue
            ticks.append((time.perf_counter() - back_from, int(words[2]), int(words[3])))
            if ticks[-1][1] >= count and ticks[-1][0] > 0:
                break
        swarm.send("quiet")
    finally:
        swarm.close(world)
    if not ticks or ticks[-1][1] < count:
        raise RuntimeError(f"only {ticks[-1][1] if ticks else 0} of {count} tethers came back")
    # Per one-second window, from the counts sampled every 0.1 s: tethers back, dials.
    return RestartResult(
        count,
        ticks[-1][0],
        _peak([(t, n) for t, n, _ in ticks]),
        _peak([(t, d) for t, _, d in ticks]),
        stopped,
    )


def _peak(samples: list[tuple[float, int]]) -> int:
    """Largest rise of a sampled counter within any one second."""
    low = min(n for _, n in samples)
    peak = 0
    for t, n in samples:
        earlier = [m for s, m in samples if s <= t - 1.0]
        peak = max(peak, n - (earlier[-1] if earlier else low))
    return peak
