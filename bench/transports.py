"""Throughput and connect time of the tether over each transport, beside raw SSH (issue 16).

One relay with TLS on (a self-signed certificate, as the demo's) serves every carrier on
its one port. One agent process per transport holds a tether for its own serial, each
offering the same web server (``bench/sink.py``):

* ``ssh``: the tether's SSH on TCP (the baseline);
* ``tls``: SSH inside TLS;
* ``websocket-tls``: SSH in WebSocket binary messages inside TLS;
* ``tls-proxy``, ``websocket-tls-proxy`` and ``websocket-proxy``: through Debian's Squid
  on loopback (CONNECT; CONNECT with a WebSocket inside its TLS; a WebSocket upgrade
  through it), when Squid is installed.

Each is the agent's own ``[network]`` way of that name.

Throughput: the engineer's stock ``ssh -L`` to the relay, through each tether to the
web server; one download of ``--size-mib`` per transport per run, transports taken in
turn so that load on the shared cores falls on all alike. Connect: the agent's login
(TCP, the carrier's handshakes, SSH key exchange, public-key login), timed in this
process with the product's own :func:`~tether.agent.reach.connect_as_agent`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.fetch import fetch
from bench.parts import Process, World
from bench.report import Row, median
from bench.tethers import cpu_seconds
from bench.throughput import forward
from tether.agent.network import (
    Carrier,
    Proxy,
    TransportKind,
)
from tether.agent.reach import PinnedClient, connect_as_agent
from tether.sandbox.squid import Squid, squid_unavailable_reason
from tether.sshlib import asyncssh
from tether.tlscert import write_self_signed

#: The agent process reads its transport (and proxy) from these (bench/agent_proc.py).
TRANSPORT_ENV, PROXY_ENV = "BENCH_TRANSPORT", "BENCH_PROXY"
#: The baseline every other transport is compared with.
RAW = "ssh"
#: Budgets of SPEC.md: throughput ratio to raw SSH, and extra connect time.
MIN_RATIO, MAX_EXTRA_MS = 0.8, 30.0


def carrier_for(transport: str, proxy: str = "") -> Carrier | None:
    """The carrier of ``transport`` (``None``: plain SSH on TCP)."""
    if transport == RAW:
        return None
    kind = TransportKind(transport)
    via = None
    if kind.via_proxy:
        host, _, port = proxy.removeprefix("http://").rpartition(":")
        via = Proxy(host, int(port))
    return Carrier(kind, via)


@dataclass
class Setup:
    """The relay's world with one tether per transport."""

    world: World
    web_port: int
    web_pid: int
    serials: dict[str, str] = field(default_factory=dict)
    proxy: str = ""
    squid: Squid | None = None
    agents: dict[str, Process] = field(default_factory=dict)

    @property
    def transports(self) -> list[str]:
        return list(self.serials)

    def close(self) -> None:
        if self.squid is not None:
            self.squid.cleanup()


async def build(world: World, relay_options: dict[str, object]) -> Setup:
    """A TLS relay, the web server, Squid when it can run, and a tether per transport."""
    cert, key = world.dir / "relay_tls.crt", world.dir / "relay_tls.key"
    write_self_signed("127.0.0.1", cert, key)
    await world.start_vendor(
        relay_options={**relay_options, "tls_certificate": str(cert), "tls_key": str(key)}
    )
    await world.engineer()
    sink, web = await world.start_web_server()
    setup = Setup(world, web, sink.pid)
    transports = [RAW, TransportKind.TLS.value, TransportKind.WEBSOCKET_TLS.value]
    if squid_unavailable_reason() is None:
        setup.squid = Squid([world.relay_port])
        await asyncio.to_thread(setup.squid.start)
        setup.proxy = f"http://127.0.0.1:{setup.squid.port}"
        transports += [
            TransportKind.TLS_PROXY.value,
            TransportKind.WEBSOCKET_TLS_PROXY.value,
            TransportKind.WEBSOCKET_PROXY.value,
        ]
    for transport in transports:
        serial = world.next_serial()
        tether_key = await world.issue(serial, [setup.web_port])
        env = {**os.environ, TRANSPORT_ENV: transport, PROXY_ENV: setup.proxy}
        setup.agents[transport] = world.start_agent(
            tether_key, [setup.web_port], name=f"agent-{transport}", env=env
        )
        setup.serials[transport] = serial
    return setup


@dataclass
class Download:
    """One download: MB/s, and the CPU seconds per GiB of the relay, of the agent, and of
    the rest of the path on the same cores (the engineer's ``ssh``, the web server, and
    Squid on the proxy ways)."""

    mbs: float
    relay_cpu: float
    agent_cpu: float
    rest_cpu: float

    @property
    def total_cpu(self) -> float:
        return self.relay_cpu + self.agent_cpu + self.rest_cpu


async def download(setup: Setup, transport: str, size: int) -> Download:
    """One download through the engineer's ``ssh -L`` and ``transport``'s tether."""
    world = setup.world
    assert world.relay_proc is not None
    pids = [world.relay_proc.pid, setup.agents[transport].pid]
    target = [
        f"{setup.serials[transport]}:{setup.web_port}",
        "-p",
        str(world.relay_port),
        "bench@127.0.0.1",
    ]
    proc, local = forward(world, target)
    rest = [proc.pid, setup.web_pid]
    if setup.squid is not None and setup.squid.pid is not None and "proxy" in transport:
        rest.append(setup.squid.pid)
    pids += rest
    try:
        fetch(local, 1 << 20)  # warm up: the channel's windows open up
        before = [cpu_seconds(pid) for pid in pids]
        got, seconds = await asyncio.to_thread(fetch, local, size)
        after = [cpu_seconds(pid) for pid in pids]
    finally:
        proc.stop()
        world.processes.remove(proc)
    per_gib = [(b - a) * (1 << 30) / got for a, b in zip(before, after, strict=True)]
    return Download(got / seconds / 1e6, per_gib[0], per_gib[1], sum(per_gib[2:]))


async def connect_once(setup: Setup, transport: str, machine_key: asyncssh.SSHKey) -> float:
    """Seconds for one agent login to the relay over ``transport``."""
    world = setup.world
    pub = (world.dir / "vendor" / "relay_host_key.pub").read_text()
    fingerprint = asyncssh.import_public_key(pub).get_fingerprint("sha256")
    start = time.perf_counter()
    conn = await connect_as_agent(
        f"127.0.0.1:{world.relay_port}",
        PinnedClient(fingerprint),
        machine_key,
        within=30,
        carrier=carrier_for(transport, setup.proxy),
    )
    seconds = time.perf_counter() - start
    conn.close()
    await conn.wait_closed()
    return seconds


def _cpu(runs: list[Download], rest: str) -> str:
    relay = median([d.relay_cpu for d in runs])
    agent = median([d.agent_cpu for d in runs])
    others = median([d.rest_cpu for d in runs])
    total = median([d.total_cpu for d in runs])
    return f"relay {relay:.1f} + agent {agent:.1f} + {rest} {others:.1f} = {total:.1f} CPU-s/GiB"


def rows(
    throughput: dict[str, list[Download]], connect: dict[str, list[float]], size_mib: int
) -> list[Row]:
    """One throughput row and one connect row per transport other than raw SSH."""
    out = []
    raw_mbs, raw_ms = median([d.mbs for d in throughput[RAW]]), median(connect[RAW]) * 1000
    for transport, runs in throughput.items():
        if transport == RAW:
            continue
        mbs = median([d.mbs for d in runs])
        ratio = mbs / raw_mbs
        rest = "ssh, web server and Squid" if "proxy" in transport else "ssh and web server"
        total = median([d.total_cpu for d in runs])
        raw_total = median([d.total_cpu for d in throughput[RAW]])
        out.append(
            Row(
                f"transports: throughput over {transport} vs raw SSH (ssh -L, relay-bound)",
                ratio,
                "x raw SSH",
                f"≥ {MIN_RATIO}x",
                ratio >= MIN_RATIO,
                detail=f"{mbs:.0f} vs {raw_mbs:.0f} MB/s, {size_mib} MiB; "
                f"{_cpu(runs, rest)} vs {_cpu(throughput[RAW], 'ssh and web server')}; "
                f"expected ratio with all cores busy {raw_total / total:.2f}x",
                samples=[d.mbs for d in runs],
            )
        )
    for transport in connect:
        if transport == RAW:
            continue
        ms = median(connect[transport]) * 1000
        out.append(
            Row(
                f"transports: agent connect over {transport} vs raw SSH",
                ms - raw_ms,
                "ms extra",
                f"≤ +{MAX_EXTRA_MS:.0f} ms",
                ms - raw_ms <= MAX_EXTRA_MS,
                detail=f"{ms:.1f} vs {raw_ms:.1f} ms, median of {len(connect[transport])}",
                samples=connect[transport],
            )
        )
    return out


async def run(
    work: Path,
    relay_options: dict[str, object],
    *,
    size_mib: int,
    runs: int,
    connects: int,
    say: Callable[[str], None],
) -> list[Row]:
    """Build, measure (transports in turn), and return the rows."""
    world = World(work / "transports")
    world.dir.mkdir()
    setup: Setup | None = None
    try:
        say("transports: relay with TLS, Squid, one tether per transport")
        setup = await build(world, relay_options)
        throughput: dict[str, list[Download]] = {t: [] for t in setup.transports}
        connect: dict[str, list[float]] = {t: [] for t in setup.transports}
        for n in range(runs):
            for transport in setup.transports:
                say(f"transports: throughput over {transport}, run {n + 1}/{runs}")
                throughput[transport].append(await download(setup, transport, size_mib << 20))
        machine_key = asyncssh.generate_private_key("ssh-ed25519")
        for transport in setup.transports:  # one unmeasured login each: imports, caches
            await connect_once(setup, transport, machine_key)
        for n in range(connects):
            say(f"transports: agent connect, round {n + 1}/{connects}")
            for transport in setup.transports:
                connect[transport].append(await connect_once(setup, transport, machine_key))
        return rows(throughput, connect, size_mib)
    finally:
        world.close()
        if setup is not None:
            setup.close()
        if world.store is not None:
            await world.store.aclose()
