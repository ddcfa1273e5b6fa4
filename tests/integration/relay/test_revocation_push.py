"""Revocation push: on PostgreSQL the relay applies revocations on NOTIFY, not on its poll.

Every relay here polls only every 30 s (both ``poll_interval`` and
``listen_poll_interval``), so anything applied within a second was pushed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.integration.harness import Agent, EchoServer, open_session, run_ssh, vendor_setup
from tether.agent.status import TunnelState
from tether.protocol import RefusalReason
from tether.relay.server import Relay
from tether.sandbox.postgres import LocalPostgres
from tether.store.changes import LISTEN_APPLICATION_NAME, ChangeFeed

pytestmark = pytest.mark.postgres

#: The relay's fallback poll: far slower than any push this file expects.
SLOW = 30.0


async def _until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {timeout} s")
        await asyncio.sleep(0.02)


async def _listening(relay: Relay) -> ChangeFeed:
    feed = relay.changes
    assert feed is not None, "a relay on PostgreSQL listens for revocations"
    await _until(lambda: feed.listening, "listening")
    return feed


async def test_revoked_key_drops_tether_and_session_within_a_second_by_notify(
    tmp_path: Path, postgres_url: str
) -> None:
    async with (
        vendor_setup(tmp_path, database=postgres_url, poll=SLOW, listen_poll=SLOW) as vendor,
        EchoServer() as service,
    ):
        await _listening(vendor.relay)
        key, claims = await vendor.issue("M-1", ports=[service.port])
        alice = await vendor.engineer("alice", tmp_path)
        async with Agent(key, claims, [service.port]) as agent:
            await agent.wait_for(TunnelState.CONNECTED)
            proc = await open_session(alice, vendor.relay_port, f"M-1:{service.port}")
            started = time.monotonic()
            await vendor.authority.revoke_key(claims.key_id, reason="leaked")
            await agent.wait_for(TunnelState.REFUSED, timeout=1.0)
            await asyncio.wait_for(proc.wait(), 1.0)
            assert time.monotonic() - started <= 1.0
            assert agent.task is not None
            refusal = await agent.task
            assert getattr(refusal, "reason", None) == RefusalReason.REVOKED


async def test_disabled_engineer_is_cut_within_a_second_by_notify(
    tmp_path: Path, postgres_url: str
) -> None:
    async with (
        vendor_setup(tmp_path, database=postgres_url, poll=SLOW, listen_poll=SLOW) as vendor,
        EchoServer() as service,
    ):
        await _listening(vendor.relay)
        key, claims = await vendor.issue("M-1", ports=[service.port])
        alice = await vendor.engineer("alice", tmp_path)
        async with Agent(key, claims, [service.port]) as agent:
            await agent.wait_for(TunnelState.CONNECTED)
            proc = await open_session(alice, vendor.relay_port, f"M-1:{service.port}")
            started = time.monotonic()
            await vendor.store.engineers.disable(
                "alice", reason="left the company", now=vendor.authority.clock.now()
            )
            await asyncio.wait_for(proc.wait(), 1.0)
            assert time.monotonic() - started <= 1.0
            # Only the engineer is cut: the machine's tether stays.
            assert agent.tunnel.status.state == TunnelState.CONNECTED
            again = await run_ssh(
                alice.ssh_args(vendor.relay_port, "-W", f"M-1:{service.port}", "alice@127.0.0.1")
            )
            assert b"Permission denied" in again.stderr


async def test_revocation_while_listen_was_down_is_applied_after_it_comes_back(
    tmp_path: Path, postgres_url: str, postgres_server: LocalPostgres
) -> None:
    database = make_url(postgres_url).database
    async with (
        vendor_setup(tmp_path, database=postgres_url, poll=SLOW, listen_poll=SLOW) as vendor,
        EchoServer() as service,
    ):
        feed = await _listening(vendor.relay)
        # A gap wide enough that the revocation below surely falls into it.
        feed.reconnect_delay = 3.0
        key, claims = await vendor.issue("M-1", ports=[service.port])
        async with Agent(key, claims, [service.port]) as agent:
            await agent.wait_for(TunnelState.CONNECTED)
            # Both names are ours (a constant, the fixture's t_<hex> database): no quoting needed.
            kill = (
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "  # noqa: S608
                f"WHERE application_name = '{LISTEN_APPLICATION_NAME}' AND datname = '{database}'"
            )
            killed = await asyncio.to_thread(postgres_server.psql, kill)
            assert killed.split() == ["t"], "exactly the relay's listening connection is killed"
            await _until(lambda: not feed.listening, "seen the LISTEN connection drop")
            connects = feed.connects

            await vendor.authority.revoke_key(claims.key_id, reason="leaked")
            # The NOTIFY went out while nobody listened: only a re-read can find it.
            assert not feed.listening
            assert feed.connects == connects
            assert agent.tunnel.status.state == TunnelState.CONNECTED

            await agent.wait_for(TunnelState.REFUSED, timeout=10.0)
            assert feed.listening
            assert feed.connects == connects + 1
            assert agent.task is not None
            refusal = await agent.task
            assert getattr(refusal, "reason", None) == RefusalReason.REVOKED
