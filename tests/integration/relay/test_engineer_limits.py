"""Caps on what one engineer may hold open, and on how long a one-click request waits."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from tests.integration.harness import Agent, EchoServer, Engineer, Vendor, vendor_setup
from tether.agent.tunnel import TunnelState
from tether.relay.server import Relay
from tether.sshlib import asyncssh
from tether.store import CaseStatus


async def _login(vendor: Vendor, engineer: Engineer) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(
        "127.0.0.1",
        vendor.relay_port,
        username=engineer.name,
        client_keys=[
            (
                asyncssh.read_private_key(str(engineer.key)),
                asyncssh.read_certificate(str(engineer.key) + "-cert.pub"),
            )
        ],
        known_hosts=([vendor.relay.host_public_key], [], []),
        config=None,
        agent_path=None,
    )


async def test_channels_are_capped_per_connection_and_per_engineer(tmp_path: Path) -> None:
    async with (
        vendor_setup(
            tmp_path, max_channels_per_connection=2, max_channels_per_engineer=3
        ) as vendor,
        EchoServer() as service,
    ):
        key, claims = await vendor.issue("M-1", ports=[service.port])
        async with Agent(key, claims, [service.port]) as agent:
            await agent.wait_for(TunnelState.CONNECTED)
            alice = await vendor.engineer("alice", tmp_path)
            first = await _login(vendor, alice)
            second = await _login(vendor, alice)
            async with first, second:
                opened = []
                for _ in range(2):
                    reader, writer = await first.open_connection("M-1", service.port)
                    assert await reader.readline() == b"hello from the machine\n"
                    opened.append(writer)
                with pytest.raises(asyncssh.ChannelOpenError) as per_connection:
                    await first.open_connection("M-1", service.port)
                assert "too many open channels on this connection (at most 2)" in (
                    per_connection.value.reason
                )
                reader, writer = await second.open_connection("M-1", service.port)
                assert await reader.readline() == b"hello from the machine\n"
                with pytest.raises(asyncssh.ChannelOpenError) as per_engineer:
                    await second.open_connection("M-1", service.port)
                assert "too many open channels for engineer alice" in per_engineer.value.reason
                # Closing one frees its slot.
                opened[0].close()
                deadline = asyncio.get_running_loop().time() + 5
                while vendor.relay.engineer_channels["alice"] > 2:
                    assert asyncio.get_running_loop().time() < deadline, "slot not freed"
                    await asyncio.sleep(0.02)
                reader, _ = await second.open_connection("M-1", service.port)
                assert await reader.readline() == b"hello from the machine\n"
            # The engineer's connections are gone: nothing stays counted.
            deadline = asyncio.get_running_loop().time() + 5
            while vendor.relay.engineer_channels:
                assert asyncio.get_running_loop().time() < deadline, "channels still counted"
                await asyncio.sleep(0.02)


async def test_a_pending_request_times_out(tmp_path: Path) -> None:
    from tests.integration.test_one_click import customer, wait_for_case
    from tether.errors import Refused

    async with vendor_setup(tmp_path) as vendor:
        # 1 s is below relay.toml's floor (10 s): set in code, as a test may.
        quick = replace(vendor.relay.config, listen=("127.0.0.1", 0), request_timeout=1.0)
        await vendor.relay.aclose()
        vendor.relay = Relay(quick, vendor.store)
        await vendor.relay.start()
        machine = customer(vendor, tmp_path)
        asking = asyncio.ensure_future(machine.ask("nobody will answer"))
        case_id = await wait_for_case(vendor)
        with pytest.raises(Refused, match="no answer from the vendor within 1 s"):
            await asyncio.wait_for(asking, 10)
        case = await vendor.store.cases.get(case_id)
        assert case is not None
        assert case.status == CaseStatus.CANCELLED
