"""Legitimate logins during a pre-authentication flood (issue 14), beside stock sshd.

One side at a time, on the same cores:

* **Tether**: a relay with the product's default limits (``relay.toml`` untouched), a
  machine (a stock sshd behind the product's tunnel, :mod:`bench.agent_proc`);
* **stock sshd**: an sshd with OpenSSH's defaults (``MaxStartups 10:30:100``,
  ``LoginGraceTime 120``, ``LogLevel INFO``) used as the relay, the machine holding
  ``ssh -N -R`` to it, as in the throughput rows' OpenSSH path.

For each side: a few logins against the idle front door first and again after the
flood (the connect time the flood is compared with), then :mod:`bench.flood` in a process of its own (``--conns``
stalled plus ``--conns`` slow-handshake connections from 1,000 loopback addresses, one
per /24, refilled as they drop) for ``seconds``, while once a second a stock ``ssh``
engineer logs in to the machine through the front door (``ssh -o ProxyCommand='ssh -W
…' … true``, each from a fresh address 127.250.0.x: a new engineer, not one the relay
has seen log in; all of them in one /24 that the flood never uses, like the engineers
of one office: their block holds one engineer still logging in when the next arrives,
but nothing that stalls) and, on the Tether side, a real agent tethers with a fresh key (the
product's :class:`~tether.agent.tunnel.Tunnel`, in this process; agents dial from
127.0.0.1, which the machine's own agent already logged in from). Meanwhile the front
door's RSS and CPU are sampled and the lines its log grew by are counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path

from bench.parts import Process, World, free_port, rss_kib, run_cmd, ssh_error, wait_port
from bench.relay_metrics import HistogramReading, scrape_histogram
from bench.report import Row, median
from bench.tethers import issue_many
from tether.agent.status import TunnelState, TunnelStatus
from tether.agent.tunnel import Tunnel
from tether.clock import SYSTEM_CLOCK
from tether.config import RelayConfig, TetherSettings
from tether.keys import parse_key
from tether.sshlib import asyncssh

ROOT = Path(__file__).resolve().parents[1]
#: A login that has not finished after this long is counted as failed.
LOGIN_TIMEOUT = 30.0
#: Seconds the flood runs before the first legitimate login (it fills the door first).
RAMP = 2.0
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
#: Seconds after the flood before the idle logins again (its connections are closed).
AFTER = 3.0


@dataclass
class Login:
    ok: bool
    seconds: float
    #: Connection attempts the agent's tunnel made (engineers: always 1).
    dials: int = 1
    error: str = ""


@dataclass
class Side:
    """One front door's figures: idle, then under the flood."""

    name: str
    idle_engineers: list[float] = field(default_factory=list)
    idle_agents: list[float] = field(default_factory=list)
    engineers: list[Login] = field(default_factory=list)
    agents: list[Login] = field(default_factory=list)
    rss_before_kib: int = 0
    rss_peak_kib: int = 0
    pss_before_kib: int = 0
    pss_peak_kib: int = 0
    #: CPU seconds the front door (sshd: with every child it forked) used during the flood.
    cpu_seconds: float = 0.0
    flood_seconds: float = 0.0
    log_lines: int = 0
    log_bytes: int = 0
    #: Of :attr:`log_lines`, the relay's summaries of refused connections.
    refusal_lines: int = 0
    flood: dict[str, int] = field(default_factory=dict)
    #: CPU seconds the flood generator used (last sample before it exited).
    flood_cpu_seconds: float = 0.0
    #: The relay's own timings of each engineer login (``engineer.login``): milliseconds
    #: from accept to the end of the key exchange, and to the login; idle, then flooded.
    idle_phases: list[tuple[int, int]] = field(default_factory=list)
    phases: list[tuple[int, int]] = field(default_factory=list)
    #: The relay's event-loop lag and agents' accept-to-tether time (its histograms),
    #: during the idle logins and during the flood.
    idle_lag: HistogramReading | None = None
    lag: HistogramReading | None = None
    idle_handshake: HistogramReading | None = None
    handshake: HistogramReading | None = None
    #: The relay's full (generation 2) garbage collections during the flood.
    gc2: HistogramReading | None = None
    #: Share of the time some task on the machine waited for a CPU (Linux PSI
    #: ``/proc/pressure/cpu``, "some"), during the idle logins and during the flood.
    idle_pressure: list[float] = field(default_factory=list)
    pressure: float = math.nan

    @property
    def logins(self) -> list[Login]:
        return self.engineers + self.agents


# --- measuring a process tree ---------------------------------------------------------


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def tree_pids(root: int) -> list[int]:
    """``root`` and every live process descended from it.

    By parent, not by session: sshd's per-connection children call ``setsid``.
    """
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                parents[int(entry)] = int(_stat(int(entry))[1])
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    return sorted(tree)


def tree_rss_kib(root: int, pids: list[int] | None = None) -> int:
    total = 0
    for pid in tree_pids(root) if pids is None else pids:
        with contextlib.suppress(OSError, RuntimeError):
            total += rss_kib(pid)
    return total


def tree_pss_kib(root: int, pids: list[int] | None = None) -> int:
    """Proportional set size of the tree: shared pages split between the processes
    sharing them (a sum of RSS counts sshd's code once per forked child)."""
    total = 0
    for pid in tree_pids(root) if pids is None else pids:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
    return total


def tree_cpu(root: int, pids: list[int] | None = None) -> float:
    """CPU seconds of the tree's live processes plus those of the children it reaped."""
    ticks = 0
    for pid in tree_pids(root) if pids is None else pids:
        with contextlib.suppress(OSError):
            f = _stat(pid)
            ticks += int(f[11]) + int(f[12])
            if pid == root:
                ticks += int(f[13]) + int(f[14])
    return ticks / TICKS_PER_SECOND


def _log_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _grown(path: Path, since: int) -> bytes:
    """What ``path`` was appended since it was ``since`` bytes long."""
    with path.open("rb") as f:
        f.seek(since)
        return f.read()


_PHASES = re.compile(rb"engineer\.login .*?kex_ms=(\d+) login_ms=(\d+)")


def _phases(log: bytes) -> list[tuple[int, int]]:
    """(kex_ms, login_ms) of each ``engineer.login`` line in ``log``."""
    return [(int(a), int(b)) for a, b in _PHASES.findall(log)]


LAG = "tether_relay_event_loop_lag_seconds"
HANDSHAKE = "tether_relay_tether_handshake_duration_seconds"


GC = "tether_relay_gc_pause_seconds"


def _cpu_pressure() -> tuple[float, float]:
    """(monotonic seconds, seconds some task waited for a CPU since boot); nan: no PSI."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return time.monotonic(), math.nan
    return time.monotonic(), int(line.rsplit("total=", 1)[1]) / 1e6


def _pressure_since(since: tuple[float, float]) -> float:
    now = _cpu_pressure()
    return (now[1] - since[1]) / max(1e-9, now[0] - since[0])


async def _histograms(url: str | None) -> tuple[HistogramReading | None, ...]:
    """The relay's loop-lag, tether-handshake and full-GC-pause histograms now (``None``:
    no metrics)."""
    if url is None:
        return None, None, None
    return (
        await scrape_histogram(url, LAG),
        await scrape_histogram(url, HANDSHAKE),
        await scrape_histogram(url, GC, generation="2"),
    )


# --- the legitimate clients -----------------------------------------------------------


def _source(n: int) -> str:
    """The ``n``-th engineer's own address: outside the flood's 127.1-127.4 range."""
    return f"127.250.{n // 250}.{n % 250 + 1}"


async def engineer_login(world: World, jump_argv: list[str], machine_sshd: int) -> Login:
    """One stock ``ssh … true`` to the machine's sshd, reaching it with ``jump_argv``."""
    jump = "ProxyCommand=" + " ".join(jump_argv)
    ssh = world.ssh("-o", jump, "-p", str(machine_sshd), "root@127.0.0.1", "true")
    start = time.perf_counter()
    try:
        code, _, err = await run_cmd(ssh, timeout=LOGIN_TIMEOUT)
    except TimeoutError:
        return Login(False, time.perf_counter() - start, error="timed out")
    seconds = time.perf_counter() - start
    return Login(code == 0, seconds, error="" if code == 0 else ssh_error(err))


class Sampler(threading.Thread):
    """Samples the front door's RSS and PSS peaks and the flood generator's CPU, in a
    thread of its own: a scan of /proc takes 100+ ms on a loaded machine, and in the
    event loop that runs the agents' tunnels and times every login it delayed each of
    them (the first flood runs measured the bench, not the relay)."""

    def __init__(self, side: Side, door: int, flood: int) -> None:
        super().__init__(name="flood-sampler", daemon=True)
        self.side, self.door, self.flood = side, door, flood
        self.stop = threading.Event()

    def run(self) -> None:
        pids, scanned = tree_pids(self.door), time.monotonic()
        while not self.stop.wait(0.25):
            if time.monotonic() - scanned > 1.0:  # sshd forks a child per connection
                pids, scanned = tree_pids(self.door), time.monotonic()
            side = self.side
            side.rss_peak_kib = max(side.rss_peak_kib, tree_rss_kib(self.door, pids))
            side.pss_peak_kib = max(side.pss_peak_kib, tree_pss_kib(self.door, pids))
            with contextlib.suppress(OSError):
                side.flood_cpu_seconds = tree_cpu(self.flood, [self.flood])


class Agents:
    """Fresh tethers, one key each, as a machine tethering for the first time."""

    def __init__(self, keys: list[str], relay_toml: Path) -> None:
        self.keys = keys
        self.trusted = RelayConfig.load(relay_toml).vendor_keys
        self.machine_key = asyncssh.generate_private_key("ssh-ed25519")

    async def login(self) -> Login:
        key = self.keys.pop()
        claims = parse_key(key, self.trusted, now=SYSTEM_CLOCK.now())
        up = asyncio.Event()
        dials = 0

        def on_change(status: TunnelStatus) -> None:
            nonlocal dials
            if status.state == TunnelState.CONNECTING:
                dials += 1
            elif status.state == TunnelState.CONNECTED:
                up.set()

        tunnel = Tunnel(
            key, claims, self.machine_key, claims.ports, TetherSettings(), on_change=on_change
        )
        start = time.perf_counter()
        task = asyncio.get_running_loop().create_task(tunnel.serve())
        try:
            await asyncio.wait_for(up.wait(), LOGIN_TIMEOUT)
            seconds = time.perf_counter() - start
            # Success is a tether on its first dial: a retry (a backoff of seconds) is a
            # login the flood delayed, whatever the tunnel would manage later.
            return Login(dials == 1, seconds, dials, "" if dials == 1 else "needed a retry")
        except TimeoutError:
            return Login(False, time.perf_counter() - start, dials, tunnel.status.reason or "")
        finally:
            await tunnel.aclose()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)


# --- one side ---------------------------------------------------------------------------


async def measure(
    side: Side,
    world: World,
    door: Process,
    door_port: int,
    log: Path,
    login: Callable[[str], Coroutine[object, object, Login]],
    agents: Agents | None,
    *,
    seconds: float,
    conns: int,
    idle_runs: int,
    pid: int,
    metrics: str | None = None,
) -> None:
    """Idle logins, the flood with a login (and an agent) every second, idle logins again.

    The idle figures are taken before and after the flood: other work on the machine
    comes and goes, and the ratio should not depend on which side of the flood it fell.
    ``metrics``: the relay's ``/metrics`` URL, for its own timings (Tether side only).
    """
    count = iter(range(10**6))

    async def idle_logins() -> None:
        for _ in range(idle_runs):
            result = await login(_source(next(count)))
            if not result.ok:
                raise RuntimeError(f"{side.name}: an idle login failed: {result.error}")
            side.idle_engineers.append(result.seconds)
            if agents is not None:
                tether = await agents.login()
                if not tether.ok:
                    raise RuntimeError(f"{side.name}: an idle agent failed: {tether.error}")
                side.idle_agents.append(tether.seconds)

    log_idle = _log_size(log)
    lag0, hs0, _ = await _histograms(metrics)
    pressure = _cpu_pressure()
    await idle_logins()
    side.idle_pressure.append(_pressure_since(pressure))
    side.idle_phases = _phases(_grown(log, log_idle))
    lag1, hs1, gc1 = await _histograms(metrics)
    if lag0 and lag1 and hs0 and hs1:
        side.idle_lag, side.idle_handshake = lag1.since(lag0), hs1.since(hs0)
    side.rss_before_kib, side.pss_before_kib = tree_rss_kib(pid), tree_pss_kib(pid)
    log_before = _log_size(log)
    cpu_before = tree_cpu(pid)
    started = time.perf_counter()
    flood = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.flood",
        f"127.0.0.1:{door_port}",
        "--seconds",
        f"{seconds:g}",
        "--stalled",
        str(conns),
        "--slow",
        str(conns),
        "--addresses",
        "1000",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    pending: list[asyncio.Task[Login]] = []
    engineers: list[asyncio.Task[Login]] = []
    tethers: list[asyncio.Task[Login]] = []
    loop = asyncio.get_running_loop()
    sampler = Sampler(side, pid, flood.pid)
    sampler.start()
    pressure = _cpu_pressure()
    try:
        next_login = started + min(RAMP, seconds / 3)
        while (now := time.perf_counter()) < started + seconds - 0.5:
            door.check_alive()
            if now >= next_login:
                next_login += 1.0
                task = loop.create_task(login(_source(next(count))))
                engineers.append(task)
                pending.append(task)
                if agents is not None:
                    tethers.append(loop.create_task(agents.login()))
                    pending.append(tethers[-1])
            await asyncio.sleep(max(0.0, min(0.25, next_login - time.perf_counter())))
        out, _ = await asyncio.wait_for(flood.communicate(), seconds + 30)
    finally:
        sampler.stop.set()
        await asyncio.to_thread(sampler.join)
        if flood.returncode is None:
            flood.kill()
            await flood.wait()
    side.flood_seconds = time.perf_counter() - started
    side.pressure = _pressure_since(pressure)
    side.cpu_seconds = tree_cpu(pid) - cpu_before
    grown = _grown(log, log_before)
    side.log_lines, side.log_bytes = grown.count(b"\n"), len(grown)
    side.refusal_lines = grown.count(b"relay.refused")
    side.flood = {k: int(v) for k, v in json.loads(out).items()}
    await asyncio.gather(*pending)
    lag2, hs2, gc2 = await _histograms(metrics)
    if lag1 and lag2 and hs1 and hs2 and gc1 and gc2:
        side.lag, side.handshake, side.gc2 = lag2.since(lag1), hs2.since(hs1), gc2.since(gc1)
    side.phases = _phases(_grown(log, log_before))
    side.engineers = [t.result() for t in engineers]
    side.agents = [t.result() for t in tethers]
    await asyncio.sleep(AFTER)
    pressure = _cpu_pressure()
    await idle_logins()
    side.idle_pressure.append(_pressure_since(pressure))


async def run(work: Path, *, seconds: float, conns: int, idle_runs: int) -> tuple[Side, Side]:
    """Both sides, Tether's first; returns (tether, stock sshd)."""
    world = World(work / "flood")
    world.dir.mkdir(parents=True)
    try:
        # The product's default limits; metrics only to read the relay's own timings.
        metrics_port = free_port()
        await world.start_vendor(metrics_listen=f"127.0.0.1:{metrics_port}")
        await world.engineer()
        _, machine_sshd = world.start_sshd("machine_sshd")
        serial = world.next_serial()
        world.start_agent(await world.issue(serial, [machine_sshd]), [machine_sshd])
        keys = world.dir / "agents.keys"
        await issue_many(world, 2 * idle_runs + int(seconds) + 5, keys)
        agents = Agents(keys.read_text().split(), world.dir / "vendor" / "relay.toml")
        assert world.relay_proc is not None
        relay = world.relay_proc

        async def via_tether(source: str) -> Login:
            jump = world.ssh(
                "-b", source, "-p", str(world.relay_port), "-W", f"{serial}:{machine_sshd}",
                "bench@127.0.0.1",
            )  # fmt: skip
            return await engineer_login(world, jump, machine_sshd)

        tether = Side("Tether relay")
        await measure(
            tether,
            world,
            relay,
            world.relay_port,
            relay.log,
            via_tether,
            agents,
            seconds=seconds,
            conns=conns,
            idle_runs=idle_runs,
            pid=relay.pid,
            metrics=f"http://127.0.0.1:{metrics_port}/metrics",
        )
        relay.stop()  # the stock sshd's side runs on cores the relay no longer uses

        door, door_port = world.start_sshd("stock_sshd", defaults=True)
        forwarded = free_port()
        world.spawn(
            "openssh_tunnel",
            world.ssh(
                "-N", "-o", "ExitOnForwardFailure=yes", "-o", "ServerAliveInterval=15",
                "-R", f"127.0.0.1:{forwarded}:127.0.0.1:{machine_sshd}",
                "-p", str(door_port), "root@127.0.0.1",
            ),
        )  # fmt: skip
        wait_port(forwarded)

        async def via_sshd(source: str) -> Login:
            jump = world.ssh(
                "-b", source, "-p", str(door_port), "-W", f"127.0.0.1:{forwarded}",
                "root@127.0.0.1",
            )  # fmt: skip
            return await engineer_login(world, jump, machine_sshd)

        stock = Side("stock sshd")
        await measure(
            stock,
            world,
            door,
            door_port,
            door.log,
            via_sshd,
            None,
            seconds=seconds,
            conns=conns,
            idle_runs=idle_runs,
            pid=door.pid,
        )
        return tether, stock
    finally:
        world.close()
        if world.store is not None:
            await world.store.aclose()


# --- the rows ---------------------------------------------------------------------------


def _share(logins: list[Login]) -> str:
    return f"{sum(x.ok for x in logins)}/{len(logins)}"


def _pct(logins: list[Login]) -> float:
    return 100.0 * sum(x.ok for x in logins) / len(logins) if logins else 0.0


def _failures(logins: list[Login]) -> str:
    """The commonest reasons logins failed, for the row's detail."""
    reasons = Counter(x.error[-120:] for x in logins if not x.ok)
    return "; ".join(f"{n} x {reason!r}" for reason, n in reasons.most_common(3))


def _ok_median(logins: list[Login]) -> float:
    times = [x.seconds for x in logins if x.ok]
    return median(times) if times else float("nan")


def _ms(values: list[int]) -> str:
    """Median and (in brackets) the largest of ``values``."""
    return f"{median([float(v) for v in values]):.0f} ({max(values)})" if values else "?"


def _quantiles(h: HistogramReading | None) -> str:
    if h is None or not h.count:
        return "not measured"
    return f"p50 {h.quantile(0.5) * 1000:.0f} ms, p99 {h.quantile(0.99) * 1000:.0f} ms"


def _wait_row(tether: Side) -> Row:
    """Where a legitimate login waits: the relay's own phases, its loop's lag."""
    lag = tether.lag.quantile(0.99) if tether.lag and tether.lag.count else math.nan
    return Row(
        "flood: relay event-loop lag (p99)",
        lag * 1000,
        "ms",
        "",
        None,
        detail=f"under the flood {_quantiles(tether.lag)}; idle {_quantiles(tether.idle_lag)}. "
        "Engineers, accept to key exchange done / to logged in, median (max) (relay's clock): "
        f"{_ms([k for k, _ in tether.phases])} / {_ms([x for _, x in tether.phases])} ms "
        f"under the flood, {_ms([k for k, _ in tether.idle_phases])} / "
        f"{_ms([x for _, x in tether.idle_phases])} ms idle; agents, accept to tether "
        f"admitted: {_quantiles(tether.handshake)} under the flood, "
        f"{_quantiles(tether.idle_handshake)} idle; the machine's CPU pressure (share of "
        f"the time some task waited for a CPU): {100 * tether.pressure:.0f} % during the "
        "flood, "
        + " and ".join(f"{100 * p:.0f} %" for p in tether.idle_pressure)
        + " during the idle logins before and after; full garbage collections during the "
        + (
            f"flood: {tether.gc2.count:.0f}, {tether.gc2.sum * 1000:.0f} ms in all"
            if tether.gc2
            else "flood: not measured"
        ),
    )


def rows(tether: Side, stock: Side, conns: int) -> list[Row]:
    """The flood group's rows: Tether's figures, stock sshd's beside them."""
    flood = f"{conns} stalled + {conns} slow-handshake from 1,000 addresses, {tether.flood_seconds:.0f} s"
    out: list[Row] = []
    share = _pct(tether.logins)
    out.append(
        Row(
            "flood: legitimate logins that succeed",
            share,
            "%",
            "≥ 99%",
            share >= 99,
            baseline=_pct(stock.engineers),
            baseline_name="% stock sshd",
            detail=f"Tether: engineers {_share(tether.engineers)}, agents "
            f"{_share(tether.agents)} (on the first dial); stock sshd (MaxStartups "
            f"10:30:100): engineers {_share(stock.engineers)}; {flood}"
            + "".join(
                f"; {who} failed: {_failures(logins)}"
                for who, logins in (("Tether", tether.logins), ("sshd", stock.engineers))
                if not all(x.ok for x in logins)
            ),
            samples=[x.seconds for x in tether.engineers],
        )
    )
    for name, idle, under, theirs_idle, theirs in (
        (
            "engineer",
            tether.idle_engineers,
            tether.engineers,
            stock.idle_engineers,
            stock.engineers,
        ),
        ("agent", tether.idle_agents, tether.agents, [], []),
    ):
        slow = _ok_median(under) / median(idle)
        detail = (
            f"median {_ok_median(under) * 1000:.0f} ms of the logins that succeeded, "
            f"{median(idle) * 1000:.0f} ms idle (median of {len(idle)}: half just before "
            "the flood, half just after)"
        )
        if not math.isfinite(slow):  # none succeeded: count each as the login timeout
            slow, detail = LOGIN_TIMEOUT / median(idle), "no login succeeded"
        if theirs:
            detail += (
                f"; stock sshd {_ok_median(theirs) * 1000:.0f} ms vs "
                f"{median(theirs_idle) * 1000:.0f} ms idle"
                if any(x.ok for x in theirs)
                else "; stock sshd: no login succeeded"
            )
        out.append(
            Row(
                f"flood: {name} connect under the flood vs idle",
                slow,
                "x idle",
                "≤ 2x",
                slow <= 2.0 and any(x.ok for x in under),
                detail=detail,
                samples=[x.seconds for x in under if x.ok],
            )
        )
    out.append(_wait_row(tether))
    mib = tether.rss_peak_kib / 1024
    out.append(
        Row(
            "flood: relay RSS, peak during the flood",
            mib,
            "MiB",
            "≤ 2x before",
            tether.rss_peak_kib <= 2 * tether.rss_before_kib,
            baseline=stock.pss_peak_kib / 1024,
            baseline_name="MiB stock sshd (PSS)",
            detail=f"{tether.rss_before_kib / 1024:.0f} MiB before; stock sshd, every "
            f"process it forked: PSS {stock.pss_before_kib / 1024:.0f} MiB before, "
            f"{stock.pss_peak_kib / 1024:.0f} MiB peak (summed RSS "
            f"{stock.rss_peak_kib / 1024:.0f} MiB)",
        )
    )
    out.append(
        Row(
            "flood: relay CPU during the flood",
            100 * tether.cpu_seconds / tether.flood_seconds,
            "% of a core",
            "",
            None,
            baseline=100 * stock.cpu_seconds / stock.flood_seconds,
            baseline_name="% stock sshd",
            detail=f"{tether.cpu_seconds:.1f} CPU-s in {tether.flood_seconds:.0f} s; stock sshd "
            f"and its children {stock.cpu_seconds:.1f} CPU-s; the flood generator, on the "
            f"same cores, {tether.flood_cpu_seconds:.1f} and {stock.flood_cpu_seconds:.1f} CPU-s",
        )
    )
    out.append(
        Row(
            "flood: log lines written during the flood",
            tether.log_lines,
            "lines",
            "",
            None,
            baseline=stock.log_lines,
            baseline_name="stock sshd (LogLevel INFO)",
            detail=f"{tether.log_bytes / 1024:.0f} KiB: {tether.refusal_lines} summaries of refused "
            "connections, the rest the legitimate logins' own; "
            f"stock sshd {stock.log_bytes / 1024:.0f} KiB; flood against Tether: "
            f"{tether.flood.get('connects', 0):,} connections, against sshd "
            f"{stock.flood.get('connects', 0):,}",
        )
    )
    return out
