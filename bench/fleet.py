"""A relay fleet on this machine: relays on one PostgreSQL, peer links, HAProxy, a SIGKILL.

Every relay is its own ``tether relay serve`` process, provisioned as a vendor does it
(:func:`tether.vendor_service.fleet.provision_relay`, what ``tether vendor relay add``
writes): its own id, peer port and readiness endpoint, the fleet's host key and peer
key. PostgreSQL is a server of the run's own (:class:`LocalPostgres`).

* relays ``a``, ``b`` and ``c`` take connections directly (no balancer). The machine
  (a stand-in web server, a stock sshd and the product's tunnel) is tethered to ``a``;
  the engineer reaches it through ``a`` (its own relay) and through ``b`` (a peer,
  which carries the channel over its relay-to-relay link to ``a``). The idle-tether
  swarms dial each of the three relays directly: HAProxy would need two descriptors
  per tether, far over this machine's open-file limit for 3 x 19,000.
* relays ``d``, ``e`` and ``f`` sit behind HAProxy (PROXY v2, checks on ``/readyz``),
  as the shipped deployment does; the failover swarm knows only HAProxy's address.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from bench.fetch import fetch
from bench.parts import Process, World, free_port, rss_kib, run_cmd, ssh_error, wait_port
from bench.tethers import (
    PER_SWARM,
    SwarmHandle,
    _peak,
    add_across,
    cpu_seconds,
    issue_many,
    start_swarm,
)
from bench.throughput import forward
from tether.keys import KeyKind
from tether.sandbox.haproxy import Backend, HAProxy, haproxy_unavailable_reason
from tether.sandbox.postgres import LocalPostgres, find_postgres_bindir
from tether.store import Store
from tether.vendor_service.authority import Authority, init_data_dir, load_vendor_config
from tether.vendor_service.fleet import RelayPlan, provision_relay


def fleet_unavailable_reason() -> str | None:
    """Why the fleet group cannot run here (``None``: it can)."""
    if (reason := haproxy_unavailable_reason()) is not None:
        return reason
    if find_postgres_bindir() is None:
        return "PostgreSQL's server binaries are not installed (Debian package postgresql)"
    return None


@dataclass
class FleetRelay:
    """One relay process of the fleet and its addresses."""

    name: str
    port: int
    health_port: int
    config: Path
    proc: Process

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class Machine:
    """The machine tethered to relay ``a``: a web server and a stock sshd on loopback."""

    serial: str
    web_port: int
    sshd_port: int
    #: Its processes whose CPU time the throughput rows report: agent, web server.
    pids: dict[str, int] = field(default_factory=dict)


@dataclass
class Fleet:
    """PostgreSQL, the vendor's data on it, and the relays started so far."""

    world: World
    relay_options: Mapping[str, object]
    postgres: LocalPostgres | None = None
    relays: dict[str, FleetRelay] = field(default_factory=dict)
    haproxy: HAProxy | None = None
    _pg_dir: Path | None = None

    async def start(self, home_port: int) -> None:
        """PostgreSQL, then vendor data whose relay address is ``home_port`` (relay ``a``)."""
        # PostgreSQL refuses to run as root and must reach its directory as its own
        # user: a directory of its own under /tmp, not inside the root-only work dir.
        self._pg_dir = Path(tempfile.mkdtemp(prefix="tether-bench-pg-"))
        self._pg_dir.chmod(0o755)
        self.postgres = LocalPostgres(self._pg_dir / "pg")
        await asyncio.to_thread(self.postgres.start)
        url = await asyncio.to_thread(self.postgres.create_database, "tether")
        data = self.world.dir / "vendor"
        await init_data_dir(data, vendor="BENCH", relay=f"127.0.0.1:{home_port}", database=url)
        config = load_vendor_config(data)
        self.world.store = await Store.open(config.database)
        self.world.authority = Authority(config, self.world.store)
        self.world.relay_port = home_port

    async def add_relays(
        self,
        names: list[str],
        *,
        behind_proxy: bool,
        ports: dict[str, int] | None = None,
        options: Mapping[str, object] | None = None,
    ) -> list[FleetRelay]:
        """Provision and start relays (in parallel); return once each accepts connections.

        ``options`` are ``relay.toml`` settings for these relays, over the fleet's own.
        """
        authority = self.world.authority
        assert authority is not None
        assert self.world.store is not None
        added = []
        for name in names:
            port = (ports or {}).get(name) or free_port()
            health = free_port()
            plan = RelayPlan(
                name,
                f"127.0.0.1:{port}",
                f"127.0.0.1:{free_port()}",
                trusted_proxies=("127.0.0.1/32",) if behind_proxy else (),
                metrics_listen=f"127.0.0.1:{health}",  # /readyz for HAProxy, /metrics
            )
            made = await provision_relay(
                authority.config, self.world.store, plan, authority.clock.now()
            )
            # Top-level settings go before the first table ([metrics]), or TOML reads
            # them as that table's.
            settings = [
                f"{option} = {value!r}".replace("'", '"')
                for option, value in {**self.relay_options, **(options or {})}.items()
            ]
            lines = made.config_path.read_text().splitlines()
            first_table = next(
                (i for i, line in enumerate(lines) if line.startswith("[")), len(lines)
            )
            lines[first_table:first_table] = settings
            made.config_path.write_text("\n".join(lines) + "\n")
            argv = [sys.executable, "-m", "tether", "relay", "serve", "--config"]
            proc = self.world.spawn(f"relay-{name}", [*argv, str(made.config_path)])
            added.append(FleetRelay(name, port, health, made.config_path, proc))
        for relay in added:
            try:
                await asyncio.to_thread(wait_port, relay.health_port, 60.0)
                await asyncio.to_thread(wait_port, relay.port, 60.0)
            except TimeoutError:
                relay.proc.check_alive()
                raise
            self.relays[relay.name] = relay
            self.trust(relay.port)
        return added

    def trust(self, port: int) -> None:
        """The engineer's known_hosts names ``port`` too (the fleet shares one host key)."""
        pub = (self.world.dir / "vendor" / "relay_host_key.pub").read_text().split()
        with (self.world.dir / "known_hosts").open("a") as f:
            f.write(f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n")

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        relay = self.relays.pop(name)
        relay.proc.stop(sig)
        self.world.processes.remove(relay.proc)

    async def aclose(self) -> None:
        """HAProxy, the world's processes (relays among them), the store, then PostgreSQL."""
        if self.haproxy is not None:
            self.haproxy.stop()
        self.world.close()
        if self.world.store is not None:
            await self.world.store.aclose()
            self.world.store = None
        if self.postgres is not None:
            await self.postgres.aclose()
        if self._pg_dir is not None:
            shutil.rmtree(self._pg_dir, ignore_errors=True)


def jump(world: World, relay_port: int, serial: str, port: int) -> str:
    """ProxyCommand that reaches ``serial:port`` through the relay on ``relay_port``."""
    inner = " ".join(world.ssh("-p", str(relay_port), "-W", f"{serial}:{port}", "bench@127.0.0.1"))
    return f"ProxyCommand={inner}"


async def machine(world: World) -> Machine:
    """The web server, a stock sshd and an agent's tunnel tethered to the home relay."""
    sink, web = await world.start_web_server()
    _, sshd = world.start_sshd("machine_sshd")
    serial = world.next_serial()
    key = await world.issue(serial, [web, sshd])  # names the vendor's relay: relay a
    agent = await asyncio.to_thread(world.start_agent, key, [web, sshd])
    return Machine(serial, web, sshd, {"agent": agent.pid, "web server": sink.pid})


async def connect_once(world: World, relay_port: int, m: Machine) -> float:
    """Seconds for one stock ``ssh ... true`` to the machine's sshd through a relay."""
    ssh = world.ssh(
        "-o",
        jump(world, relay_port, m.serial, m.sshd_port),
        "-p",
        str(m.sshd_port),
        "root@127.0.0.1",
        "true",
    )
    start = time.perf_counter()
    code, _, err = await run_cmd(ssh, timeout=60)
    seconds = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"ssh true through port {relay_port} failed ({code}): {ssh_error(err)}")
    return seconds


@dataclass
class Download:
    """One download through a relay: its speed and what it cost each process."""

    mb_per_s: float
    #: CPU seconds each process used during the download: the relays (by name), the
    #: agent, the web server and the engineer's ``ssh``.
    cpu: dict[str, float]
    seconds: float


async def download(
    world: World, relay_port: int, m: Machine, size: int, relays: Mapping[str, int]
) -> Download:
    """One download of ``size`` bytes from the web server, ``ssh -L`` via a relay, with
    the CPU time of ``relays`` (name -> pid), the machine's processes and the ``ssh``."""
    target = [f"{m.serial}:{m.web_port}", "-p", str(relay_port), "bench@127.0.0.1"]
    proc, local = forward(world, target)
    try:
        await asyncio.to_thread(fetch, local, 1 << 20)  # warm up: the windows open up
        pids = {**{f"relay {n}": pid for n, pid in relays.items()}, **m.pids, "ssh": proc.pid}
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        got, seconds = await asyncio.to_thread(fetch, local, size)
        cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    finally:
        proc.stop()
        world.processes.remove(proc)
    return Download(got / seconds / 1e6, cpu, seconds)


def cpu_per_gib(runs: list[Download], size: int) -> dict[str, float]:
    """CPU seconds per GiB moved, per process, over ``runs`` of ``size`` bytes each."""
    gib = len(runs) * size / (1 << 30)
    names = runs[0].cpu
    return {name: sum(r.cpu[name] for r in runs) / gib for name in names}


def cost_summary(
    own: Mapping[str, float],
    peer: Mapping[str, float],
    runs_own: list[Download],
    runs_peer: list[Download],
) -> str:
    """The throughput row's explanation: CPU per GiB of each process on each path.

    When both paths keep every core busy, the ratio of speeds is about the inverse
    ratio of total CPU per GiB; with a core for each process, the busiest process
    would set each path's pace instead.
    """

    def parts(cost: Mapping[str, float]) -> str:
        return ", ".join(f"{name} {cost[name]:.2f}" for name in cost if cost[name] >= 0.05)

    own_total = sum(own.values())
    peer_total = sum(peer.values())
    return (
        f"CPU s per GiB via own relay: {parts(own)} (total {own_total:.2f}, "
        f"{cores_busy(runs_own):.2f} cores busy); via peer: {parts(peer)} (total "
        f"{peer_total:.2f}, {cores_busy(runs_peer):.2f} cores busy); expected ratio "
        f"with all cores busy {own_total / peer_total:.2f}x, with a core per process "
        f"{max(own.values()) / max(peer.values()):.2f}x"
    )


def cores_busy(runs: list[Download]) -> float:
    """CPU seconds of the measured processes per second of the downloads (cores kept busy)."""
    return sum(sum(r.cpu.values()) for r in runs) / sum(r.seconds for r in runs)


async def _session(
    world: World, relay_port: int, serial: str, sshd: int
) -> asyncio.subprocess.Process:
    """A live shell on the machine's sshd through the relay on ``relay_port``."""
    proc = await asyncio.create_subprocess_exec(
        *world.ssh(
            "-o",
            jump(world, relay_port, serial, sshd),
            "-p",
            str(sshd),
            "root@127.0.0.1",
            # cat: when the channel goes, sshd closes its stdin and it ends (no leftovers).
            "echo session-ready; exec cat",
        ),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    if line.strip() != b"session-ready":
        err = await proc.stderr.read() if proc.stderr else b""
        raise RuntimeError(f"session through port {relay_port} did not start: {ssh_error(err)}")
    return proc


async def revoke_once(fleet: Fleet, m: Machine) -> float:
    """A fresh key and tether on relay ``a``; sessions through ``a`` and ``b``; revoke.

    Returns the seconds from the revocation until both engineers' ``ssh`` had exited.
    """
    world = fleet.world
    assert world.authority is not None
    serial = world.next_serial()
    key, claims = await world.authority.issue_key(
        serial,
        lifetime=timedelta(hours=1),
        ports=(m.sshd_port,),
        relay=fleet.relays["a"].address,
        kind=KeyKind.MANUAL,
    )
    agent = await asyncio.to_thread(world.start_agent, key, [m.sshd_port], name="revoke-agent")
    sessions: list[asyncio.subprocess.Process] = []
    try:
        for relay in ("a", "b"):
            sessions.append(await _session(world, fleet.relays[relay].port, serial, m.sshd_port))
        start = time.perf_counter()
        await world.authority.revoke_key(claims.key_id, reason="benchmark", by="bench")
        await asyncio.wait_for(asyncio.gather(*(s.wait() for s in sessions)), 30)
        return time.perf_counter() - start
    finally:
        for session in sessions:
            if session.returncode is None:
                session.kill()
                await session.wait()
        agent.stop()
        world.processes.remove(agent)


@dataclass
class IdleFleet:
    per_relay: int
    #: relay name -> RSS growth per tether (KiB)
    kib_per_tether: dict[str, float]
    #: seconds until every tether of every relay was connected
    seconds: float


async def idle_across(fleet: Fleet, names: list[str], count: int) -> IdleFleet:
    """``count`` idle tethers on each relay of ``names`` at once; each relay's RSS growth."""
    world = fleet.world
    swarm_keys: dict[str, list[Path]] = {}
    for name in names:
        relay = fleet.relays[name]
        swarm_keys[name] = []
        for i in range(0, count, PER_SWARM):
            keys = world.dir / f"fleet-{name}-{i // PER_SWARM}.keys"
            await issue_many(world, min(PER_SWARM, count - i), keys, relay.address)
            swarm_keys[name].append(keys)
    await asyncio.sleep(1.0)  # let the relays settle
    base = {name: rss_kib(fleet.relays[name].proc.pid) for name in names}
    handles: dict[str, list[SwarmHandle]] = {
        name: [start_swarm(world, keys) for keys in files] for name, files in swarm_keys.items()
    }
    try:
        start = time.perf_counter()
        # Every relay ramps up at once on the same cores: allow each a third of the pace.
        await asyncio.gather(
            *(add_across(handles[name], count, 0, per_second=20 / 3) for name in names)
        )
        seconds = time.perf_counter() - start
        await asyncio.sleep(1.0)
        kib = {}
        for name in names:
            fleet.relays[name].proc.check_alive()
            kib[name] = (rss_kib(fleet.relays[name].proc.pid) - base[name]) / count
    finally:
        for group in handles.values():
            for handle in group:
                handle.close(world)
    return IdleFleet(count, kib, seconds)


@dataclass
class Failover:
    tethers: int
    victim: str
    #: tethers the killed relay held
    lost: int
    #: seconds from the SIGKILL until the swarm had every tether connected again
    all_back: float
    #: most tethers that came back within one second
    peak_per_second: int
    #: most connection attempts the agents started within one second
    peak_dials_per_second: int
    #: seconds from the SIGKILL until the store listed every tether on a surviving relay
    placed: float
    #: tethers per surviving relay afterwards
    spread: dict[str, int]


async def failover(fleet: Fleet, count: int, *, within: float = 600.0) -> Failover:
    """Three relays behind HAProxy hold ``count`` tethers; SIGKILL the busiest; time the return."""
    world = fleet.world
    assert world.store is not None
    names = ["d", "e", "f"]
    await fleet.add_relays(names, behind_proxy=True)
    backends = [Backend(n, fleet.relays[n].port, fleet.relays[n].health_port) for n in names]
    port = free_port()
    fleet.haproxy = HAProxy(world.dir / "haproxy", backends, maxconn=2 * count + 200, port=port)
    await asyncio.to_thread(fleet.haproxy.start)
    keys = world.dir / "failover.keys"
    await issue_many(world, count, keys, f"127.0.0.1:{port}")
    swarm = start_swarm(world, keys)
    try:
        await swarm.add(count, timeout=max(120.0, count / 20))

        async def placed() -> Counter[str]:
            assert world.store is not None
            ours = set(names)
            return Counter(
                t.relay_id for t in await world.store.tethers.list() if t.relay_id in ours
            )

        held = await placed()
        deadline = time.monotonic() + 60
        while sum(held.values()) < count:  # rows follow admissions
            if time.monotonic() > deadline:
                raise RuntimeError(f"the store lists {dict(held)}, not {count} tethers")
            await asyncio.sleep(0.1)
            held = await placed()
        victim, lost = max(((n, held[n]) for n in names), key=lambda x: x[1])
        swarm.send("watch")
        while not (await swarm.read(60)).startswith("tick"):
            pass
        fleet.stop(victim, signal.SIGKILL)
        killed = time.perf_counter()
        ticks: list[tuple[float, int, int]] = []
        dropped = False
        while time.perf_counter() - killed < within:
            words = (await swarm.read(60)).split()
            if words[0] != "tick":
                continue
            ticks.append((time.perf_counter() - killed, int(words[2]), int(words[3])))
            dropped = dropped or ticks[-1][1] < count
            if dropped and ticks[-1][1] >= count:
                break
        swarm.send("quiet")
        if not dropped or ticks[-1][1] < count:
            raise RuntimeError(f"{ticks[-1][1] if ticks else 0} of {count} tethers back")
        all_back = ticks[-1][0]
        while (now := await placed()).get(victim) or sum(now.values()) < count:
            if time.perf_counter() - killed > within:
                raise RuntimeError(f"the store still lists {dict(now)} after {within:.0f} s")
            await asyncio.sleep(0.2)
        on_store = time.perf_counter() - killed
    finally:
        swarm.close(world)
    return Failover(
        count,
        victim,
        lost,
        all_back,
        _peak([(t, n) for t, n, _ in ticks]),
        _peak([(t, d) for t, _, d in ticks]),
        on_store,
        dict(sorted(now.items())),
    )


def idle_size(largest: int, fd_limit: int) -> tuple[int, bool]:
    """Tethers per relay: ``largest``, capped below the per-process open-file limit."""
    room = fd_limit - 1000  # the relay's own descriptors: database pool, peers, logs
    return min(largest, room), largest > room


def spread_ok(result: Failover) -> bool:
    """The restart row's rule: at most a fifth of the lost tethers dial in any one second."""
    return result.peak_dials_per_second <= result.lost / 5 or result.lost < 50
