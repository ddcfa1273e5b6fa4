"""The relay stays reachable for legitimate engineers and agents under a pre-auth flood
from many addresses (SPEC invariant), penalises stalling sources and then forgives them,
and summarises what it refuses instead of logging each refusal."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import pytest

from tests.integration.harness import Agent, EchoServer, run_ssh, vendor_setup
from tether.agent.tunnel import TunnelState
from tether.protocol import RefusalReason
from tether.relay.gate import Drop
from tether.relay.server import Relay
from tether.tlscert import write_self_signed

ROOT = Path(__file__).resolve().parents[3]


async def _until(condition: object, what: str, timeout: float = 15) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_relay_stays_reachable_under_a_pre_auth_flood_from_many_addresses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tether.relay")
    async with (
        vendor_setup(
            tmp_path,
            max_unauthenticated=50,
            early_drop_start=20,
            max_unauthenticated_per_source=5,
            max_unauthenticated_per_netblock=10,
            login_timeout_busy=2.0,
            refused_log_interval=1.0,
        ) as vendor,
        EchoServer() as service,
    ):
        relay = vendor.relay
        key, claims = await vendor.issue("M-1", ports=[service.port])
        alice = await vendor.engineer("alice", tmp_path)
        # 250 connections at once from 400 addresses in 200 /24 blocks, refilled as they
        # drop, in a process of their own: 150 never speak, 100 stall mid-handshake.
        flood = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.flood",
            f"127.0.0.1:{relay.port}",
            "--seconds",
            "25",
            "--stalled",
            "150",
            "--slow",
            "100",
            "--addresses",
            "400",
            "--per-block",
            "2",
            cwd=ROOT,
            stdout=subprocess.PIPE,
        )
        try:
            await _until(lambda: len(relay.gate) >= 45, "the flood to fill the login slots")
            # An agent tethers for the first time during the flood ...
            async with Agent(key, claims, [service.port]) as agent:
                await agent.wait_for(TunnelState.CONNECTED, timeout=15)
                for i in range(8):
                    # ... a stock ssh engineer (from an address of its own) gets through
                    # every time ...
                    result = await run_ssh(
                        alice.ssh_args(
                            relay.port,
                            "-b",
                            "127.0.0.5",
                            "-W",
                            f"M-1:{service.port}",
                            "alice@127.0.0.1",
                        ),
                        input=b"ping\n",
                        timeout=20,
                    )
                    assert result.returncode == 0, result.stderr.decode()
                    assert result.stdout == b"hello from the machine\nping\n"
                    if i % 2 == 0:
                        # ... and the agent, sent away as by a relay restart, comes back.
                        entry = relay.registry.get("M-1")
                        assert entry is not None
                        entry.link.drop(RefusalReason.SHUTDOWN, "test", retry_within=0.5)
                        await agent.wait_for(TunnelState.RECONNECTING)
                        await agent.wait_for(TunnelState.CONNECTED, timeout=15)
            # The flood was really on: evicted, refused and penalised the whole time.
            assert relay.gate.evictions + relay.gate.expirations > 50
            assert sum(relay.gate.drops.values()) > 100
        finally:
            out, _ = await asyncio.wait_for(flood.communicate(), 60)
        stats = json.loads(out)
        assert stats["connects"] > 500, stats
    summaries = [r for r in caplog.records if r.getMessage().startswith("relay.refused ")]
    refused = sum(relay.gate.drops.values())
    # Refusals are summarised: one line per block per interval, never one per refusal.
    assert summaries
    assert len(summaries) < refused / 5
    last: dict[str, float] = defaultdict(lambda: -10.0)
    for record in summaries:
        block = record.getMessage().split("block=", 1)[1].split(" ", 1)[0]
        assert record.created - last[block] >= 0.9, f"two summaries of {block} in 1 s"
        last[block] = record.created
    assert not any(r.getMessage().startswith("relay.busy") for r in caplog.records)
    # At start the relay said what its limits are, as its relay.toml set them.
    (limits,) = [r for r in caplog.records if getattr(r, "tether_event", "") == "relay.limits"]
    said = limits.tether_fields
    assert (said["max_unauthenticated"], said["per_source"], said["per_netblock"]) == (50, 5, 10)
    assert said["early_drop"].startswith("20:")
    assert said["login_timeout"].endswith("..2s")


async def test_a_source_that_stalls_repeatedly_is_penalised_then_forgiven(
    tmp_path: Path,
) -> None:
    async with vendor_setup(tmp_path) as vendor:
        config = replace(
            vendor.relay.config,
            relay_id="relay-2",
            listen=("127.0.0.1", 0),
            login_timeout=0.5,
            penalty_stall=2.0,
            penalty_min=3.0,
            penalty_max=5.0,
        )
        relay = Relay(config, vendor.store)
        await relay.start()
        try:

            async def connect() -> bytes:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", relay.port, local_addr=("127.0.9.9", 0)
                )
                try:
                    return await asyncio.wait_for(reader.read(), 5)  # until the relay hangs up
                finally:
                    writer.close()

            # Two connections that say nothing are timed out; the block owes over 3 s.
            for _ in range(2):
                assert b"took too long to log in" in await connect()
            # The next is refused at once; another block is not.
            assert b"too many connections waiting to log in" in await connect()
            assert relay.gate.drops[Drop.PENALTY] == 1
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", relay.port, local_addr=("127.0.10.9", 0)
            )
            assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"SSH-2.0-")
            writer.close()
            # Once the penalty has drained the block is let in again.
            await _until(lambda: relay.gate.penalised == 0, "the penalty to drain", timeout=10)
            assert b"took too long to log in" in await connect()
        finally:
            await relay.aclose()


async def test_a_refused_engineer_sees_why_in_stock_ssh(tmp_path: Path) -> None:
    """Refused before any key exchange, stock ssh prints the relay's reason, not a
    garbled banner."""
    async with vendor_setup(tmp_path, max_unauthenticated_per_source=1) as vendor:
        alice = await vendor.engineer("alice", tmp_path)
        # Another login from alice's address is waiting: her address is at its cap.
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", vendor.relay_port, local_addr=("127.0.7.1", 0)
        )
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"SSH-2.0-")
        try:
            result = await run_ssh(
                alice.ssh_args(vendor.relay_port, "-b", "127.0.7.1", "alice@127.0.0.1", "true")
            )
        finally:
            writer.close()
        assert result.returncode == 255
        err = result.stderr.decode()
        assert "Received disconnect from 127.0.0.1" in err, err
        assert "too many connections waiting to log in; retry" in err, err
        assert "invalid characters" not in err
        assert vendor.relay.gate.drops[Drop.ADDRESS] == 1


async def _stall_in_tls(port: int, addresses: list[str], stop: asyncio.Event) -> int:
    """Connect, start a TLS ClientHello and never finish it, until the relay hangs up;
    then again. Returns how many connections the relay closed."""
    closed = 0
    for n in range(10**6):
        if stop.is_set():
            break
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, local_addr=(addresses[n % len(addresses)], 0)
            )
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.write(b"\x16\x03\x01\x02\x00\x01")  # a record header, then nothing
        done = asyncio.ensure_future(reader.read())
        halt = asyncio.ensure_future(stop.wait())
        await asyncio.wait({done, halt}, return_when=asyncio.FIRST_COMPLETED)
        halt.cancel()
        if done.done():
            closed += 1
        else:
            done.cancel()
        writer.close()
        await asyncio.sleep(0.02)
    return closed


async def test_a_stalled_tls_flood_from_many_addresses_does_not_lock_out_a_raw_ssh_engineer(
    tmp_path: Path,
) -> None:
    cert, tls_key = tmp_path / "relay-tls.crt", tmp_path / "relay-tls.key"
    write_self_signed("127.0.0.1", cert, tls_key)
    async with (
        vendor_setup(
            tmp_path,
            tls_certificate=cert,
            tls_key=tls_key,
            max_unauthenticated=40,
            early_drop_start=10,
            max_unauthenticated_per_source=2,
            max_unauthenticated_per_netblock=4,
            login_timeout_busy=2.0,
        ) as vendor,
        EchoServer() as service,
    ):
        relay = vendor.relay
        key, claims = await vendor.issue("M-1", ports=[service.port])
        alice = await vendor.engineer("alice", tmp_path)
        async with Agent(key, claims, [service.port]) as agent:
            await agent.wait_for(TunnelState.CONNECTED)
            # 150 connections stalled inside TLS from 150 addresses in 50 /24 blocks,
            # each reconnecting as soon as the relay closes it.
            stop = asyncio.Event()
            flood = [
                asyncio.ensure_future(
                    _stall_in_tls(relay.port, [f"127.0.{20 + w % 50}.{1 + w // 50}"], stop)
                )
                for w in range(150)
            ]
            try:
                # The TLS stalls hold gate slots: the gate fills with them ...
                await _until(lambda: len(relay.gate) >= 38, "TLS stalls to fill the gate")
                for _ in range(4):
                    result = await run_ssh(
                        alice.ssh_args(
                            relay.port,
                            "-b",
                            "127.0.9.5",
                            "-W",
                            f"M-1:{service.port}",
                            "alice@127.0.0.1",
                        ),
                        input=b"ping\n",
                        timeout=20,
                    )
                    # ... and a raw-SSH engineer gets through every time.
                    assert result.returncode == 0, result.stderr.decode()
                    assert result.stdout == b"hello from the machine\nping\n"
                    # Never more pre-auth connections than the cap, TLS or not.
                    assert len(relay.gate) <= 40
                # The gate ended TLS stalls to make room (evicted, timed out, refused).
                assert relay.gate.evictions + relay.gate.expirations > 20
            finally:
                stop.set()
                closed = sum(await asyncio.gather(*flood))
        assert closed > 100
