"""Many agents' tunnels in one process: ``python -m bench.swarm KEYS RELAY_TOML``.

Each line of KEYS is one tether key (its own serial). Every tunnel is the product's
:class:`tether.agent.tunnel.Tunnel` with the product's default settings (keepalives,
jittered backoff), so a relay restart is met exactly as real agents would meet it.

Commands on stdin, one per line:

* ``add N``: start N more tunnels (at most ``--connecting`` dialling at once) and
  answer ``added TOTAL SECONDS`` once all of them are connected;
* ``watch``: print ``tick T CONNECTED DIALS`` every 0.1 s (until ``quiet``), DIALS
  counting every connection attempt the tunnels have started;
* ``quiet``: stop ticking.

All machine keys share one Ed25519 key: the relay binds each tether key to the
machine key that first presents it, which is all the benchmark needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.parts import raise_fd_limit
from tether.agent.status import TunnelState, TunnelStatus
from tether.agent.tunnel import Tunnel
from tether.clock import SYSTEM_CLOCK
from tether.config import RelayConfig, TetherSettings
from tether.keys import parse_key
from tether.sshlib import asyncssh
from tether.tuning import tune_allocator

#: How many tunnels may be dialling at once while ramping up (a fleet coming online).
CONNECTING_AT_ONCE = 64


class Swarm:
    def __init__(self, keys: list[str], relay_toml: Path) -> None:
        self.keys = keys
        self.trusted = RelayConfig.load(relay_toml).vendor_keys
        self.machine_key = asyncssh.generate_private_key("ssh-ed25519")
        self.tunnels: list[Tunnel] = []
        self.tasks: list[asyncio.Task[object]] = []
        self.connected = 0
        self.dials = 0
        self.changed = asyncio.Event()

    def _watcher(self) -> Callable[[TunnelStatus], None]:
        """A tunnel's status callback keeping :attr:`connected` up to date."""
        was_connected = False

        def on_change(status: TunnelStatus) -> None:
            nonlocal was_connected
            if status.state == TunnelState.CONNECTING:
                self.dials += 1
            now = status.state == TunnelState.CONNECTED
            if now != was_connected:
                self.connected += 1 if now else -1
                was_connected = now
                self.changed.set()

        return on_change

    async def add(self, count: int) -> None:
        start = time.perf_counter()
        target = len(self.tunnels) + count
        settings = TetherSettings()
        while len(self.tunnels) < target:
            while len(self.tunnels) - self.connected >= CONNECTING_AT_ONCE:
                self.changed.clear()
                await self.changed.wait()
            key = self.keys[len(self.tunnels)]
            claims = parse_key(key, self.trusted, now=SYSTEM_CLOCK.now())
            tunnel = Tunnel(
                key, claims, self.machine_key, claims.ports, settings, on_change=self._watcher()
            )
            self.tunnels.append(tunnel)
            self.tasks.append(asyncio.get_running_loop().create_task(tunnel.serve()))
        while self.connected < target:
            self.changed.clear()
            await self.changed.wait()
        print(f"added {target} {time.perf_counter() - start:.3f}", flush=True)

    async def watch(self, stop: asyncio.Event) -> None:
        start = time.perf_counter()
        while not stop.is_set():
            print(
                f"tick {time.perf_counter() - start:.2f} {self.connected} {self.dials}", flush=True
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)


async def main(keys_file: Path, relay_toml: Path) -> None:
    swarm = Swarm(keys_file.read_text().split(), relay_toml)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    quiet = asyncio.Event()
    watching: set[asyncio.Task[None]] = set()
    while line := (await reader.readline()).decode().split():
        if line[0] == "add":
            await swarm.add(int(line[1]))
        elif line[0] == "watch":
            quiet.clear()
            task = loop.create_task(swarm.watch(quiet))
            watching.add(task)
            task.add_done_callback(watching.discard)
        elif line[0] == "quiet":
            quiet.set()
    # Stdin closed: the run is over. Leave at once; the relay sees every tether drop.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    raise_fd_limit()
    tune_allocator()
    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2])))
