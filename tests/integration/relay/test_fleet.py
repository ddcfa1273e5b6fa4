"""Fleet membership: one process per relay id, heartbeats, and a dead relay's tethers swept.

SPEC "Scale": each relay has its own id and heartbeats; a dead relay's tethers leave the
registry within 30 s. Both store backends; the relays under test are real processes
(`tether relay serve`) where a process is killed.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.integration.harness import Agent, EchoServer, Vendor, open_session, vendor_setup
from tether.agent.status import TunnelState
from tether.keys import KeyKind
from tether.store import Store

#: SQLAlchemy's default pool for PostgreSQL: 5 connections plus 10 overflow.
POOL_CONNECTIONS = 15


def _relay_process(vendor: Vendor, tmp: Path, relay_id: str, **settings: float) -> Path:
    """A relay.toml for a second relay of this vendor (its own id, fast heartbeats)."""
    text = (vendor.dir / "relay.toml").read_text()
    text += f'relay_id = "{relay_id}"\n' if relay_id else ""
    text += "".join(f"{key} = {value}\n" for key, value in settings.items())
    config = vendor.dir / f"{relay_id or 'same'}.toml"
    config.write_text(text)
    return config


def _serve(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tether", "relay", "serve", "--config", str(config),
         "--listen", "127.0.0.1:0"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _port_of(relay: subprocess.Popen[str]) -> int:
    assert relay.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = relay.stderr.readline()
        if "relay listening on" in line:
            return int(line.rsplit(":", 1)[1])
        if not line and relay.poll() is not None:
            break
    raise AssertionError(f"relay did not start (exit {relay.poll()})")


async def test_two_relays_with_one_id_the_second_refuses_to_start(
    tmp_path: Path, store_url: str
) -> None:
    async with vendor_setup(tmp_path, database=store_url) as vendor, EchoServer() as service:
        key, claims = await vendor.issue("M-1", ports=[service.port])
        async with Agent(key, claims, [service.port]) as agent:
            await agent.wait_for(TunnelState.CONNECTED)
            # vendor init's relay.toml again, as a careless second install would start it.
            second = _serve(vendor.dir / "relay.toml")
            _, said = await asyncio.to_thread(second.communicate, timeout=60)
            assert second.returncode == 1, said
            assert (
                f"relay id 'relay-1' is in use by the relay at 127.0.0.1:{vendor.relay_port}"
                in said
            )
            assert "give this relay its own relay_id" in said
            assert "Traceback" not in said
            # ... and it changed nothing: the first relay's tether is still listed and up.
            (row,) = await vendor.store.tethers.list()
            assert (row.serial, row.relay_id) == ("M-1", "relay-1")
            assert agent.tunnel.status.state == TunnelState.CONNECTED
            assert [r.relay_id for r in await vendor.store.relays.list()] == ["relay-1"]


async def test_a_killed_relays_tethers_leave_the_registry_in_time(
    tmp_path: Path, store_url: str
) -> None:
    # This relay sweeps: heartbeats every 0.2 s, a relay silent for 1 s is dead (the
    # defaults, 5 s and 15 s, keep the SPEC's 30 s with room to spare).
    async with (
        vendor_setup(
            tmp_path, database=store_url, heartbeat_interval=0.2, dead_after=1.0
        ) as vendor,
        EchoServer() as service,
    ):
        config = _relay_process(vendor, tmp_path, "relay-a", heartbeat_interval=0.2, dead_after=1.0)
        relay_a = _serve(config)
        try:
            port = await asyncio.to_thread(_port_of, relay_a)
            key, claims = await vendor.authority.issue_key(
                "M-1", lifetime=timedelta(hours=1), ports=(service.port,),
                relay=f"127.0.0.1:{port}", kind=KeyKind.MANUAL,
            )  # fmt: skip
            async with Agent(key, claims, [service.port]) as agent:
                await agent.wait_for(TunnelState.CONNECTED)
                (row,) = await vendor.store.tethers.list()
                assert row.relay_id == "relay-a"
                fleet = {r.relay_id: r for r in await vendor.store.relays.list()}
                assert set(fleet) == {"relay-1", "relay-a"}
                relay_a.send_signal(signal.SIGKILL)
                killed = time.monotonic()
                while await vendor.store.tethers.list():
                    assert time.monotonic() - killed < 10, "the dead relay's tether stayed listed"
                    await asyncio.sleep(0.05)
                assert [r.relay_id for r in await vendor.store.relays.list()] == ["relay-1"]
        finally:
            relay_a.kill()
            relay_a.communicate()


async def test_a_relay_the_fleet_gave_up_lists_its_live_tethers_again_without_reconnects(
    tmp_path: Path, store_url: str
) -> None:
    """Late heartbeats (a database outage, a saturated machine) can make the fleet sweep a
    relay that is alive. It writes its rows again, each tether checked as at its
    admission: the agents stay connected (no reconnect storm), the engineer's session
    stays up and listed, and a tether the checks refuse now is dropped with the reason."""
    async with (
        vendor_setup(
            tmp_path, database=store_url, heartbeat_interval=0.2, dead_after=1.0
        ) as vendor,
        EchoServer() as service,
    ):
        relay = vendor.relay
        key1, claims1 = await vendor.issue("M-1", ports=[service.port])
        key2, claims2 = await vendor.issue("M-2", ports=[service.port])
        alice = await vendor.engineer("alice", tmp_path)
        async with (
            Agent(key1, claims1, [service.port]) as one,
            Agent(key2, claims2, [service.port]) as two,
        ):
            await one.wait_for(TunnelState.CONNECTED)
            await two.wait_for(TunnelState.CONNECTED)
            links = {serial: relay.registry.get(serial) for serial in ("M-1", "M-2")}
            session = await open_session(alice, vendor.relay_port, f"M-1:{service.port}")
            try:
                deadline = time.monotonic() + 5
                while not await vendor.store.channels.list("M-1"):
                    assert time.monotonic() < deadline, "the engineer's channel has no row"
                    await asyncio.sleep(0.05)
                (channel_before,) = await vendor.store.channels.list("M-1")
                tether_before = await vendor.store.tethers.get("M-1")
                assert tether_before is not None
                # M-2's key no longer matches the vendor's record (changed under the relay,
                # which nothing pushes to it): only a fresh check can see that.
                async with vendor.store._db.write("changing a key behind the relay") as db:
                    await db.execute(
                        text(
                            "UPDATE issued_keys SET expires_at = :at WHERE key_id = :key"
                        ).bindparams(at=claims2.expires_at - timedelta(hours=1), key=claims2.key_id)
                    )
                # Another relay's sweep, as if this one had been silent for an hour.
                swept = await vendor.store.relays.sweep(datetime.now(UTC) + timedelta(hours=1), 1.0)
                assert swept == ["relay-1"]
                assert await vendor.store.tethers.list() == []
                deadline = time.monotonic() + 10
                while [t.serial for t in await vendor.store.tethers.list()] != ["M-1"]:
                    assert time.monotonic() < deadline, "the live tether was not listed again"
                    await asyncio.sleep(0.05)
                await two.wait_for(TunnelState.REFUSED, timeout=5)
                assert "does not match the vendor's record" in (two.tunnel.status.reason or "")
                # M-1 never left: the same tether on the same connection, its session alive.
                assert relay.registry.get("M-1") is links["M-1"]
                assert one.tunnel.status.state == TunnelState.CONNECTED
                assert [r.relay_id for r in await vendor.store.relays.list()] == ["relay-1"]
                while not await vendor.store.channels.list("M-1"):
                    assert time.monotonic() < deadline, "the live channel's row did not return"
                    await asyncio.sleep(0.05)
                # The rows say when the tether and the channel began, not when they came back.
                (channel_after,) = await vendor.store.channels.list("M-1")
                assert channel_after.opened_at == channel_before.opened_at
                tether_after = await vendor.store.tethers.get("M-1")
                assert tether_after is not None
                assert tether_after.connected_at == tether_before.connected_at
                assert tether_after.last_seen_at > tether_before.last_seen_at
                assert session.stdin is not None
                assert session.stdout is not None
                session.stdin.write(b"still here\n")
                assert await asyncio.wait_for(session.stdout.readline(), 5) == b"still here\n"
            finally:
                if session.returncode is None:
                    session.kill()
                await session.wait()


async def test_heartbeats_report_the_tethers_a_relay_carries(tmp_path: Path) -> None:
    async with (
        vendor_setup(tmp_path, heartbeat_interval=0.1, dead_after=1.0) as vendor,
        EchoServer() as service,
    ):
        key, claims = await vendor.issue("M-1", ports=[service.port])
        async with Agent(key, claims, [service.port]) as agent:
            await agent.wait_for(TunnelState.CONNECTED)
            deadline = time.monotonic() + 5
            while (await vendor.store.relays.list())[0].tethers != 1:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        await vendor.relay.aclose()
        # A clean stop gives the id back at once.
        assert await vendor.store.relays.list() == []


async def test_a_rebind_ends_the_old_machines_tether_for_good(
    tmp_path: Path, store_url: str
) -> None:
    """A re-bind (board replaced, disk copied) reaches the relay like a revocation."""
    async with vendor_setup(tmp_path, database=store_url) as vendor, EchoServer() as service:
        key, claims = await vendor.issue("M-1", ports=[service.port])
        async with Agent(key, claims, [service.port]) as agent:
            await agent.wait_for(TunnelState.CONNECTED)
            started = time.monotonic()
            await vendor.authority.rebind_machine("M-1", by="admin", reason="board replaced")
            await agent.wait_for(TunnelState.REFUSED, timeout=5)
            assert time.monotonic() - started <= 1.0
            status = agent.tunnel.status
            assert "re-bound serial M-1 to a new machine (re-bound by admin)" in (
                status.reason or ""
            )
            deadline = time.monotonic() + 5  # the relay unregisters in the background
            while await vendor.store.tethers.list():
                assert time.monotonic() < deadline, "the re-bound machine is still listed"
                await asyncio.sleep(0.05)


@pytest.mark.postgres
async def test_a_heartbeat_is_not_held_up_by_a_saturated_database_pool(postgres_url: str) -> None:
    # A relay in a reconnect storm has every pooled connection busy registering tethers;
    # its heartbeat must still land, or the fleet sweeps a relay that is alive.
    store = await Store.open(postgres_url)
    try:
        now = datetime.now(UTC)
        assert await store.relays.claim("relay-1", "i-1", "127.0.0.1:1", now, 15) is None

        async def busy() -> None:
            async with store._db.read("keeping a pooled connection busy") as session:
                await session.execute(text("SELECT pg_sleep(4)"))

        sleepers = [asyncio.create_task(busy()) for _ in range(POOL_CONNECTIONS)]
        await asyncio.sleep(0.5)
        # The pool is saturated: ordinary work waits...
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(store.tethers.list(), 1.0)
        # ... the heartbeat and the sweep do not.
        beat_at = datetime.now(UTC)
        held = await asyncio.wait_for(
            store.relays.heartbeat("relay-1", "i-1", "127.0.0.1:1", beat_at, 7), 2.0
        )
        assert held
        assert await asyncio.wait_for(store.relays.sweep(beat_at, 15), 2.0) == []
        await asyncio.gather(*sleepers)
        (relay,) = await store.relays.list()
        assert (relay.relay_id, relay.tethers) == ("relay-1", 7)
    finally:
        await store.aclose()
