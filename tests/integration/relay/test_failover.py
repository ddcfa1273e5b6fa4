"""A relay of three dies (SIGKILL) behind HAProxy: its agents come back on the others.

Three `tether relay serve` processes from `tether vendor relay add` configurations, on one
PostgreSQL, behind Debian's HAProxy (PROXY v2, checks on /readyz); in-process agents know
only HAProxy's address. SPEC "Scale": a dead relay's tethers leave the registry within
30 s, and engineers reach every machine through any relay.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from tests.integration.harness import Agent, EchoServer, Vendor, run_ssh
from tether.agent.status import TunnelState
from tether.keys import KeyKind
from tether.sandbox.haproxy import Backend, HAProxy, free_port, haproxy_unavailable_reason
from tether.store import Store
from tether.vendor_service.authority import Authority, init_data_dir, load_vendor_config
from tether.vendor_service.fleet import RelayPlan, provision_relay

pytestmark = [pytest.mark.haproxy, pytest.mark.postgres]

#: Machines tethered across the three relays (the bench measures 1,000).
MACHINES = 120


def _serve(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tether", "relay", "serve", "--config", str(config)],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait_listening(relay: subprocess.Popen[str]) -> None:
    assert relay.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = relay.stderr.readline()
        if "relay listening on" in line:
            return
        if not line and relay.poll() is not None:
            break
    raise AssertionError(f"relay did not start (exit {relay.poll()})")


async def test_sigkill_of_one_relay_of_three_its_agents_come_back_on_the_others(
    tmp_path: Path, postgres_url: str
) -> None:
    if (reason := haproxy_unavailable_reason()) is not None:
        pytest.skip(reason)
    data = tmp_path / "vendor"
    await init_data_dir(data, vendor="ACME", relay="127.0.0.1:2222", database=postgres_url)
    config = load_vendor_config(data)
    store = await Store.open(config.database)
    authority = Authority(config, store)
    relays: dict[str, subprocess.Popen[str]] = {}
    backends: list[Backend] = []
    try:
        for name in ("relay-a", "relay-b", "relay-c"):
            port, health = free_port(), free_port()
            plan = RelayPlan(
                name, f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}",
                ("127.0.0.1/32",), f"127.0.0.1:{health}",
            )  # fmt: skip
            made = await provision_relay(config, store, plan, authority.clock.now())
            # Fast membership, for the test's sake (top-level keys: before any table).
            text = made.config_path.read_text()
            made.config_path.write_text("heartbeat_interval = 1.0\ndead_after = 3.0\n" + text)
            relays[name] = _serve(made.config_path)
            backends.append(Backend(name, port, health))
        for relay in relays.values():
            await asyncio.to_thread(_wait_listening, relay)
        proxy = HAProxy(tmp_path / "haproxy", backends)
        await asyncio.to_thread(proxy.start)
        async with EchoServer() as service:
            vendor = Vendor(data, authority, store, relay=None)  # type: ignore[arg-type]
            agents = []
            for i in range(MACHINES):
                key, claims = await authority.issue_key(
                    f"M-{i}", lifetime=timedelta(hours=1), ports=(service.port,),
                    relay=f"127.0.0.1:{proxy.port}", kind=KeyKind.MANUAL,
                )  # fmt: skip
                agents.append(Agent(key, claims, [service.port]))
            for agent in agents:
                await agent.__aenter__()
            try:
                for agent in agents:
                    await agent.wait_for(TunnelState.CONNECTED, timeout=60)
                held = Counter(t.relay_id for t in await store.tethers.list())
                assert sum(held.values()) == MACHINES
                assert len(held) == 3, held  # HAProxy spread them over every relay
                victim, lost = held.most_common(1)[0]
                relays[victim].send_signal(signal.SIGKILL)
                killed = time.monotonic()

                # Every agent is back within 60 s, through HAProxy, on the two others.
                async def placed() -> Counter[str]:
                    return Counter(t.relay_id for t in await store.tethers.list())

                while (now := await placed()).get(victim) or sum(now.values()) < MACHINES:
                    assert time.monotonic() - killed < 60, f"after 60 s: {dict(now)}"
                    await asyncio.sleep(0.2)
                back_after = time.monotonic() - killed
                assert set(now) == {"relay-a", "relay-b", "relay-c"} - {victim}
                # ... and the dead relay's own row is gone well within 30 s.
                while victim in {r.relay_id for r in await store.relays.list()}:
                    assert time.monotonic() - killed < 30, "the dead relay is still listed"
                    await asyncio.sleep(0.2)
                # An engineer's new session reaches a machine that moved, through any relay.
                moved = next(
                    t.serial for t in await store.tethers.list() if t.serial in {
                        f"M-{i}" for i in range(MACHINES)
                    }
                )  # fmt: skip
                alice = await vendor.engineer("alice", tmp_path, port=proxy.port)
                for _ in range(3):  # HAProxy may pick either surviving relay: both must work
                    result = await run_ssh(
                        alice.ssh_args(
                            proxy.port, "-W", f"{moved}:{service.port}", "alice@127.0.0.1"
                        ),
                        input=b"still here\n",
                    )
                    assert result.stdout.endswith(b"still here\n"), result.stderr
                print(f"{lost} tethers of {victim} back after {back_after:.1f} s")
            finally:
                for agent in agents:
                    await agent.__aexit__(None, None, None)
                proxy.stop()
    finally:
        for relay in relays.values():
            relay.send_signal(signal.SIGTERM)
        for relay in relays.values():
            try:
                relay.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                relay.kill()
                relay.communicate()
        await store.aclose()
