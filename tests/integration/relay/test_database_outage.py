"""A PostgreSQL outage under a relay (issue 13, "Faults"): what is live stays live.

The relay runs on a private PostgreSQL server (not the session's: this one is stopped
and restarted), with the relay's default revocation pacing. While the database is down,
tethers and an engineer's stock ``ssh`` session that were up stay up; a new agent is
refused for now ("vendor database unavailable") and backs off instead of giving up.
After the restart, a revocation applies within the 1 s budget and the new agent gets in.

``/readyz`` answering 503 without the database is tested in test_haproxy.py
(``test_readyz_reports_a_lost_database``).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fixtures.postgres import postgres_directory, start_postgres
from tests.integration.harness import Agent, EchoServer, vendor_setup
from tests.integration.relay.test_haproxy import http_get
from tests.integration.relay.test_metrics import eventually, value
from tether.agent.status import TunnelState
from tether.protocol import RefusalReason
from tether.sandbox.postgres import LocalPostgres

pytestmark = pytest.mark.postgres

#: The relay's own defaults (RelayConfig): re-read every 0.25 s while LISTEN is down.
POLL, LISTEN_POLL = 0.25, 5.0


@pytest.fixture
def private_postgres() -> Iterator[LocalPostgres]:
    """A PostgreSQL server of this test's own, free to be stopped."""
    base = postgres_directory()
    try:
        server = start_postgres(base)
        try:
            yield server
        finally:
            server.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def _until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {timeout} s")
        await asyncio.sleep(0.02)


async def _echo(proc: asyncio.subprocess.Process, line: bytes) -> bytes:
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.write(line)
    await proc.stdin.drain()
    return await asyncio.wait_for(proc.stdout.readline(), 5)


async def test_database_outage_keeps_live_tethers_and_sessions_and_defers_new_agents(
    tmp_path: Path, private_postgres: LocalPostgres
) -> None:
    url = await asyncio.to_thread(private_postgres.create_database, "tether")
    async with (
        vendor_setup(
            tmp_path,
            database=url,
            poll=POLL,
            listen_poll=LISTEN_POLL,
            metrics_listen=("127.0.0.1", 0),
        ) as vendor,
        EchoServer() as service,
    ):
        relay = vendor.relay
        feed = relay.changes
        assert feed is not None, "a relay on PostgreSQL listens for revocations"
        await _until(lambda: feed.listening, "listening")
        port = service.port
        issued = [await vendor.issue(f"M-{n}", ports=[port]) for n in range(1, 5)]
        alice = await vendor.engineer("alice", tmp_path)
        live = [Agent(key, claims, [port]) for key, claims in issued[:3]]
        late = Agent(*issued[3], [port])  # its key was issued before the outage
        for agent in live:
            await agent.__aenter__()
        session: asyncio.subprocess.Process | None = None
        try:
            for agent in live:
                await agent.wait_for(TunnelState.CONNECTED)
            session = await asyncio.create_subprocess_exec(
                *alice.ssh_args(relay.port, "-W", f"M-1:{port}", "alice@127.0.0.1"),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            assert session.stdout is not None
            assert await asyncio.wait_for(session.stdout.readline(), 10) == (
                b"hello from the machine\n"
            )

            assert await http_get(relay, "/readyz") == (200, "ready")
            # --- the outage --------------------------------------------------------------
            await asyncio.to_thread(private_postgres.stop)
            await _until(lambda: not feed.listening, "seen the database go")
            # HAProxy's check: not ready while the database is stopped, alive all the same.
            assert await http_get(relay, "/readyz") == (
                503,
                "not ready: vendor database unavailable",
            )
            assert (await http_get(relay, "/healthz"))[0] == 200
            async with late:
                # Refused for now, with the reason, and retried after a backoff: never
                # refused for good, never admitted without its key being checked.
                await _until(
                    lambda: "vendor database unavailable" in (late.tunnel.status.reason or ""),
                    "told the database is unavailable",
                )
                status = late.tunnel.status
                assert status.state == TunnelState.RECONNECTING, status
                assert status.retry_at is not None
                assert status.retry_at > status.since
                assert "M-4" not in {entry.serial for entry in relay.registry}
                # What was up before the outage is still up, and still carries data.
                assert await _echo(session, b"still there?\n") == b"still there?\n"
                assert [a.tunnel.status.state for a in live] == [TunnelState.CONNECTED] * 3
                assert len(relay.registry) == 3
                assert late.task is not None
                assert not late.task.done()

                # --- the database is back ----------------------------------------------
                await asyncio.to_thread(private_postgres.restart)
                started = time.monotonic()
                await vendor.authority.revoke_key(issued[1][1].key_id, reason="leaked")
                await live[1].wait_for(TunnelState.REFUSED, timeout=1.0)
                assert time.monotonic() - started <= 1.0
                assert live[1].task is not None
                refusal = await asyncio.wait_for(live[1].task, 5)
                assert getattr(refusal, "reason", None) == RefusalReason.REVOKED

                await late.wait_for(TunnelState.CONNECTED, timeout=10.0)
                assert {entry.serial for entry in relay.registry} == {"M-1", "M-3", "M-4"}
                assert await _echo(session, b"and now?\n") == b"and now?\n"
                assert live[0].tunnel.status.state == TunnelState.CONNECTED
                assert live[2].tunnel.status.state == TunnelState.CONNECTED
                await _until(lambda: feed.listening, "listening again")
                assert await http_get(relay, "/readyz") == (200, "ready")
        finally:
            if session is not None and session.returncode is None:
                session.kill()
                await session.wait()
            for agent in live:
                await agent.__aexit__(None, None, None)


async def test_the_audit_backlog_shows_events_held_while_the_database_is_away(
    tmp_path: Path, private_postgres: LocalPostgres
) -> None:
    url = await asyncio.to_thread(private_postgres.create_database, "tether")
    async with (
        vendor_setup(tmp_path, database=url, metrics_listen=("127.0.0.1", 0)) as vendor,
        EchoServer() as service,
    ):
        relay = vendor.relay
        key, claims = await vendor.issue("M-1", ports=[service.port])
        async with Agent(key, claims, [service.port]) as agent:
            await agent.wait_for(TunnelState.CONNECTED)
            up = await eventually(relay, lambda s: value(s, "tether_relay_audit_backlog") == 0)
            await asyncio.to_thread(private_postgres.stop)
        appends = "tether_relay_store_latency_seconds_count"
        written = value(up, appends, operation="audit-append")
        # The tether went down during the outage: its audit event waits in the relay, and
        # the failed attempts to write it are timed as store writes too.
        held = await eventually(
            relay,
            lambda s: (
                value(s, "tether_relay_audit_backlog") >= 1
                and value(s, appends, operation="audit-append") > written
            ),
        )
        assert value(held, "tether_relay_database_up") == 0
        await asyncio.to_thread(private_postgres.restart)
        await eventually(relay, lambda s: value(s, "tether_relay_audit_backlog") == 0)
        report = await vendor.store.audit.read(relay.audit.chain)
        assert [entry.event for entry in report.entries][-1] == "tether.down"
