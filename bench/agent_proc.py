"""One agent's tunnel in its own process: ``python -m bench.agent_proc KEYFILE PORTS [RELAY_TOML]``.

Holds the tether exactly as ``tether agent serve`` does (:class:`tether.agent.tunnel.Tunnel`)
without touching the machine's sshd or accounts: the benchmark's machine services are
stand-ins on loopback ports the key allows. Prints ``connected`` once the relay has
registered the key, then runs until SIGTERM.

``BENCH_TRANSPORT`` in its environment picks the one way to the relay (a ``[network]``
transport), ``BENCH_PROXY`` the proxy.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

from tether.agent.network import NetworkSettings, TransportKind
from tether.agent.status import TunnelState
from tether.agent.tunnel import Tunnel
from tether.clock import SYSTEM_CLOCK
from tether.config import RelayConfig, TetherSettings
from tether.keys import parse_key
from tether.sshlib import asyncssh
from tether.tuning import lazy_packet_logs, tune_allocator

SETTINGS = TetherSettings(keepalive_interval=15, backoff_initial=1.0, backoff_cap=60.0)


def settings_from_environment() -> TetherSettings:
    """SETTINGS, with the one transport ``BENCH_TRANSPORT`` names (default: as shipped)."""
    transport = os.environ.get("BENCH_TRANSPORT", "")
    if not transport:
        return SETTINGS
    network = NetworkSettings(
        transports=(TransportKind(transport),),
        proxy=os.environ.get("BENCH_PROXY") or None,
        environ={},
    )
    return replace(SETTINGS, network=network)


async def main(key_file: Path, ports: tuple[int, ...], relay_toml: Path) -> None:
    key = key_file.read_text()
    claims = parse_key(key, RelayConfig.load(relay_toml).vendor_keys, now=SYSTEM_CLOCK.now())
    said = False

    def on_change(status: object) -> None:
        nonlocal said
        if tunnel.status.state == TunnelState.CONNECTED and not said:
            said = True
            print("connected", flush=True)

    tunnel = Tunnel(
        key,
        claims,
        asyncssh.generate_private_key("ssh-ed25519"),
        ports,
        settings_from_environment(),
        on_change=on_change,
    )
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: loop.create_task(tunnel.aclose()))
    await tunnel.serve()
    if not said:
        print(f"ended: {tunnel.status.describe(SYSTEM_CLOCK.now())}", flush=True)


if __name__ == "__main__":
    tune_allocator()
    lazy_packet_logs()
    key_path = Path(sys.argv[1])
    relay_config = (
        Path(sys.argv[3]) if len(sys.argv) > 3 else key_path.parent / "vendor" / "relay.toml"
    )
    asyncio.run(main(key_path, tuple(int(p) for p in sys.argv[2].split(",")), relay_config))
