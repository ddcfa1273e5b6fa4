"""Bulk throughput through the relay, beside the same path built from stock OpenSSH only.

* relay-bound: ``ssh -L`` to the relay, through the tether to a web server on the
  machine (no inner ssh: the relay's own per-byte cost shows);
* full path: ``ssh`` through the relay (``-W``) to the machine's sshd, ``cat > /dev/null``.

The OpenSSH path: a stock sshd as relay, the machine holding ``ssh -N -R`` to it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from bench.fetch import fetch
from bench.parts import Process, World, free_port, run_cmd, ssh_error, wait_port


@dataclass
class Paths:
    """Both paths set up side by side, ready to carry bytes."""

    web_port: int
    machine_sshd: int
    serial: str
    openssh_relay: int
    openssh_web: int  # the relay sshd's port that ssh -R forwards to the web server
    openssh_sshd: int  # ... and to the machine's sshd


async def build(world: World) -> Paths:
    _, web = await world.start_web_server()
    _, machine_sshd = world.start_sshd("machine_sshd")
    serial = world.next_serial()
    key = await world.issue(serial, [web, machine_sshd])
    world.start_agent(key, [web, machine_sshd])
    _, relay_sshd = world.start_sshd("relay_sshd")
    r_web, r_sshd = free_port(), free_port()
    world.spawn(
        "openssh_tunnel",
        world.ssh(
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-o",
            "ServerAliveInterval=15",
            "-R",
            f"127.0.0.1:{r_web}:127.0.0.1:{web}",
            "-R",
            f"127.0.0.1:{r_sshd}:127.0.0.1:{machine_sshd}",
            "-p",
            str(relay_sshd),
            "root@127.0.0.1",
        ),
    )
    wait_port(r_web)
    wait_port(r_sshd)
    return Paths(web, machine_sshd, serial, relay_sshd, r_web, r_sshd)


def forward(world: World, argv: list[str]) -> tuple[Process, int]:
    """Start an engineer's ``ssh -N -L`` and return it with its local port."""
    local = free_port()
    proc = world.spawn(
        f"forward-{local}",
        world.ssh(
            "-N", "-o", "ExitOnForwardFailure=yes", "-L", f"127.0.0.1:{local}:{argv[0]}", *argv[1:]
        ),
    )
    wait_port(local)
    return proc, local


async def relay_bound(world: World, paths: Paths, size: int) -> tuple[float, float]:
    """MB/s through the Tether relay and through the OpenSSH relay (one download each)."""
    results = []
    for target in (
        [f"{paths.serial}:{paths.web_port}", "-p", str(world.relay_port), "bench@127.0.0.1"],
        [f"127.0.0.1:{paths.openssh_web}", "-p", str(paths.openssh_relay), "root@127.0.0.1"],
    ):
        proc, local = forward(world, target)
        try:
            fetch(local, 1 << 20)  # warm up: the channel's windows open up
            got, seconds = await asyncio.to_thread(fetch, local, size)
        finally:
            proc.stop()
            world.processes.remove(proc)
        results.append(got / seconds / 1e6)
    return results[0], results[1]


async def full_path(world: World, paths: Paths, size: int) -> tuple[float, float]:
    """MB/s of ``cat > /dev/null`` on the machine's sshd, through each relay."""
    results = []
    for jump in (
        world.tether_jump(paths.serial, paths.machine_sshd),
        world.openssh_jump(paths.openssh_relay, paths.openssh_sshd),
    ):
        ssh = world.ssh(
            "-o", jump, "-p", str(paths.machine_sshd), "root@127.0.0.1", "cat > /dev/null"
        )
        command = f"head -c {size} /dev/zero | " + " ".join(f"'{a}'" for a in ssh)
        start = time.perf_counter()
        code, _, err = await run_cmd(["sh", "-c", command])
        seconds = time.perf_counter() - start
        if code != 0:
            raise RuntimeError(f"full-path copy failed ({code}): {ssh_error(err)}")
        results.append(size / seconds / 1e6)
    return results[0], results[1]


async def connect_times(world: World, paths: Paths) -> tuple[float, float, float]:
    """Seconds for one ``ssh ... true`` to the machine's sshd: via Tether, via OpenSSH, direct."""
    results = []
    for jump in (
        world.tether_jump(paths.serial, paths.machine_sshd),
        world.openssh_jump(paths.openssh_relay, paths.openssh_sshd),
        None,
    ):
        options = ("-o", jump) if jump else ()
        ssh = world.ssh(*options, "-p", str(paths.machine_sshd), "root@127.0.0.1", "true")
        start = time.perf_counter()
        code, _, err = await run_cmd(ssh, timeout=60)
        results.append(time.perf_counter() - start)
        if code != 0:
            raise RuntimeError(f"ssh true failed ({code}): {ssh_error(err)}")
    return results[0], results[1], results[2]
