"""Relay + agent tunnel + stock ssh, in one process's loopback (no root needed).

The machine's services are stand-ins on OS-picked loopback ports that the key allows
(as a customer's ``extra_ports`` would); the real-sshd path is in the sandbox tests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tests.integration.harness import FAST, Agent, EchoServer, open_session, run_ssh, vendor_setup
from tether.agent.tunnel import TunnelState
from tether.protocol import RefusalReason
from tether.sshlib import asyncssh


async def test_engineer_reaches_allowed_port_through_tether(tmp_path: Path) -> None:
    async with vendor_setup(tmp_path) as vendor, EchoServer() as service:
        key, claims = await vendor.issue("M-1", ports=[service.port])
        alice = await vendor.engineer("alice", tmp_path)
        async with Agent(key, claims, [service.port]) as agent:
            await agent.wait_for(TunnelState.CONNECTED)
            result = await run_ssh(
                alice.ssh_args(vendor.relay_port, "-W", f"m-1:{service.port}", "alice@127.0.0.1"),
                input=b"ping\n",
            )
        assert result.stdout == b"hello from the machine\nping\n", result.stderr


async def test_refusals_are_shown_by_engineer_ssh(tmp_path: Path) -> None:
    async with vendor_setup(tmp_path) as vendor, EchoServer() as service:
        key, claims = await vendor.issue("M-1", ports=[service.port])
        alice = await vendor.engineer("alice", tmp_path)
        async with Agent(key, claims, [service.port]) as agent:
            await agent.wait_for(TunnelState.CONNECTED)
            cases = {
                "M-1:8080": "port 8080 is not open on machine M-1",
                "M-2:22": "machine M-2 is not tethered to this relay",
                "example.com:443": "machine example.com is not tethered",
                "127.0.0.1:22": "127.0.0.1 is not tethered",
                "a;b:22": "is not a serial",
            }
            for target, message in cases.items():
                result = await run_ssh(
                    alice.ssh_args(vendor.relay_port, "-W", target, "alice@127.0.0.1")
                )
                assert result.returncode != 0
                assert message in result.stderr.decode(), (target, result.stderr)
            shell = await run_ssh(alice.ssh_args(vendor.relay_port, "alice@127.0.0.1", "id"))
            assert shell.returncode != 0
            assert b"this relay gives no shell or commands" in shell.stderr


async def test_revoked_key_drops_tether_and_live_session_within_a_second(tmp_path: Path) -> None:
    async with vendor_setup(tmp_path) as vendor, EchoServer() as service:
        key, claims = await vendor.issue("M-1", ports=[service.port])
        alice = await vendor.engineer("alice", tmp_path)
        async with Agent(key, claims, [service.port]) as agent:
            await agent.wait_for(TunnelState.CONNECTED)
            proc = await open_session(alice, vendor.relay_port, f"M-1:{service.port}")
            started = time.monotonic()
            await vendor.authority.revoke_key(claims.key_id, reason="test")
            await asyncio.wait_for(proc.wait(), 1.0)
            await agent.wait_for(TunnelState.REFUSED, timeout=1.0)
            assert time.monotonic() - started <= 1.0
            assert agent.task is not None
            refusal = await agent.task
            assert getattr(refusal, "reason", None) == RefusalReason.REVOKED


async def test_key_from_second_machine_is_refused(tmp_path: Path) -> None:
    async with vendor_setup(tmp_path) as vendor, EchoServer() as service:
        key, claims = await vendor.issue("M-1", ports=[service.port])
        async with Agent(key, claims, [service.port]) as first:
            await first.wait_for(TunnelState.CONNECTED)
        async with Agent(key, claims, [service.port]) as second:
            await second.wait_for(TunnelState.REFUSED)
            assert "already used by another machine" in (second.tunnel.status.reason or "")
        # The first machine may still reconnect with its own key until expiry.
        async with Agent(key, claims, [service.port], machine_key=first.machine_key) as again:
            await again.wait_for(TunnelState.CONNECTED)


async def test_relay_restart_agent_comes_back_within_backoff(tmp_path: Path) -> None:
    async with vendor_setup(tmp_path) as vendor, EchoServer() as service:
        key, claims = await vendor.issue("M-1", ports=[service.port])
        alice = await vendor.engineer("alice", tmp_path)
        async with Agent(key, claims, [service.port]) as agent:
            await agent.wait_for(TunnelState.CONNECTED)
            first = agent.tunnel.status.since
            await vendor.restart_relay()
            # One tether: the relay asks it back within 1/300 s, so the reconnecting
            # state may be too short to see; a newer connection is what counts.
            for _ in range(250):
                status = agent.tunnel.status
                if status.state == TunnelState.CONNECTED and status.since > first:
                    break
                await asyncio.sleep(0.02)
            assert status.state == TunnelState.CONNECTED, status
            assert status.since > first, "the tether never went down and came back"
            result = await run_ssh(
                alice.ssh_args(vendor.relay_port, "-W", f"M-1:{service.port}", "alice@127.0.0.1"),
                input=b"back\n",
            )
            assert result.stdout.endswith(b"back\n"), result.stderr


async def test_a_relay_that_stops_and_stays_down_is_not_met_by_a_tight_loop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One tether: the relay asks it back within 1/300 s; the agent's backoff still holds."""
    async with vendor_setup(tmp_path) as vendor, EchoServer() as service:
        key, claims = await vendor.issue("M-1", ports=[service.port])
        async with Agent(key, claims, [service.port]) as agent:
            await agent.wait_for(TunnelState.CONNECTED)
            caplog.set_level(logging.INFO, logger="tether.agent")
            await vendor.relay.aclose()
            await asyncio.sleep(2.0)
            retries = [r for r in caplog.records if "reconnecting in" in r.getMessage()]
            # FAST backoff (0.2 s doubling to 1 s, full jitter) makes a handful of attempts
            # in 2 s; a window that replaced the backoff made hundreds.
            assert 1 <= len(retries) <= 15, [r.getMessage() for r in retries]


async def test_an_unannounced_drop_spreads_the_return_over_reconnect_spread(
    tmp_path: Path,
) -> None:
    """A relay that dies says nothing: its agents' first return is spread, not at once."""
    async with vendor_setup(tmp_path) as vendor, EchoServer() as service:
        key, claims = await vendor.issue("M-1", ports=[service.port])
        spread = replace(FAST, reconnect_spread=10.0)
        async with Agent(key, claims, [service.port], settings=spread) as agent:
            await agent.wait_for(TunnelState.CONNECTED)
            entry = vendor.relay.registry.get("M-1")
            assert entry is not None
            assert entry.link.conn is not None
            entry.link.conn.abort()  # as a SIGKILLed relay: no goodbye, no hint
            await agent.wait_for(TunnelState.RECONNECTING, timeout=5)
            status = agent.tunnel.status
            assert status.retry_at is not None
            wait = (status.retry_at - status.since).total_seconds()
            # The seeded agent's first draw from uniform(0, 10), as in the relay-hint
            # test above: the same spread, though nobody announced it.
            assert wait == pytest.approx(3.238, abs=0.01)


#: What the harness's seeded agent (random.Random(7)) draws second from uniform(0, 10).
SECOND_DRAW = 1.5085


async def test_a_relay_going_down_spreads_its_agents_return(tmp_path: Path) -> None:
    async with vendor_setup(tmp_path) as vendor, EchoServer() as service:
        # A relay that wants its tethers back at 0.1 per second: one tether, 10 s window.
        vendor.relay.config = replace(vendor.relay.config, reconnect_rate=0.1)
        key, claims = await vendor.issue("M-1", ports=[service.port])
        async with Agent(key, claims, [service.port]) as agent:
            await agent.wait_for(TunnelState.CONNECTED)
            await vendor.relay.aclose()
            await agent.wait_for(TunnelState.RECONNECTING, timeout=5)
            status = agent.tunnel.status
            assert status.retry_at is not None
            wait = (status.retry_at - status.since).total_seconds()
            # The agent's own backoff would wait at most 1 s (FAST settings); the relay's
            # spread makes it wait a random time within 10 s (this seeded one: 3.24 s).
            assert wait == pytest.approx(3.238, abs=0.01)
            assert "the relay is shutting down" in (status.reason or "")
            # The relay is still down when the agent tries: its next wait is drawn from
            # the same window, not from the short backoff that would meet the relay's
            # return together with every other agent.
            first = status
            for _ in range(300):  # the first retry is refused at once: a new wait starts
                await asyncio.sleep(0.02)
                status = agent.tunnel.status
                if status.state == TunnelState.RECONNECTING and status.since != first.since:
                    break
            assert status.retry_at is not None
            assert status.reason == f"cannot reach the relay at {claims.relay} (connection refused)"
            again = (status.retry_at - status.since).total_seconds()
            assert again == pytest.approx(SECOND_DRAW, abs=0.01)


async def test_unauthenticated_and_wrong_users_cannot_log_in(tmp_path: Path) -> None:
    async with vendor_setup(tmp_path) as vendor:
        alice = await vendor.engineer("alice", tmp_path)
        for user in ("bob", "tether-support", "root"):
            result = await run_ssh(
                alice.ssh_args(vendor.relay_port, "-W", "M-1:22", f"{user}@127.0.0.1")
            )
            assert result.returncode == 255
            assert b"Permission denied" in result.stderr, (user, result.stderr)
        # Any key may log in as an agent, but an agent login reaches nothing.
        result = await run_ssh(
            alice.ssh_args(vendor.relay_port, "-W", "M-1:22", "tether-agent@127.0.0.1")
        )
        assert b"forwarding is for engineers only" in result.stderr
        await vendor.store.engineers.disable(
            "alice", reason="left", now=vendor.authority.clock.now()
        )
        result = await run_ssh(alice.ssh_args(vendor.relay_port, "-W", "M-1:22", "alice@127.0.0.1"))
        assert b"Permission denied" in result.stderr


@pytest.mark.parametrize("mutate", ["tampered", "garbage"])
async def test_relay_refuses_bad_keys_from_a_raw_agent(tmp_path: Path, mutate: str) -> None:
    """An agent that skips its own offline check still meets the relay's check."""
    async with vendor_setup(tmp_path) as vendor, EchoServer() as service:
        key, claims = await vendor.issue("M-1", ports=[service.port])
        bad = (
            key[:40] + ("A" if key[40] != "A" else "B") + key[41:]
            if mutate == "tampered"
            else "v4.public.zzzz"
        )
        async with Agent(bad, claims, [service.port]) as agent:
            await agent.wait_for(TunnelState.REFUSED)
            assert agent.tunnel.status.reason


async def test_machine_cannot_open_channels_or_shell_on_relay(tmp_path: Path) -> None:
    async with vendor_setup(tmp_path) as vendor:
        machine_key = asyncssh.generate_private_key("ssh-ed25519")
        async with asyncssh.connect(
            "127.0.0.1",
            vendor.relay_port,
            username="tether-agent",
            client_keys=[machine_key],
            known_hosts=None,
            config=None,
            agent_path=None,
        ) as conn:
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.create_connection(asyncssh.SSHTCPSession, "M-1", 22)
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.create_session(asyncssh.SSHClientSession, "id")  # exec is refused


async def test_one_log_line_per_tether_and_channel_with_bytes_and_duration(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="tether.relay")
    async with vendor_setup(tmp_path) as vendor, EchoServer() as service:
        port = service.port
        key, claims = await vendor.issue("M-1", ports=[port])
        alice = await vendor.engineer("alice", tmp_path)
        async with Agent(key, claims, [port]) as agent:
            await agent.wait_for(TunnelState.CONNECTED)
            await run_ssh(
                alice.ssh_args(vendor.relay_port, "-W", f"M-1:{port}", "alice@127.0.0.1"),
                input=b"x" * 1000,
            )
            for _ in range(50):
                if any(r.message.startswith("channel.close") for r in caplog.records):
                    break
                await asyncio.sleep(0.02)
        for _ in range(50):
            if any(r.message.startswith("tether.down") for r in caplog.records):
                break
            await asyncio.sleep(0.02)
    lines = [r.message for r in caplog.records]
    up = next(line for line in lines if line.startswith("tether.up"))
    assert f"serial=M-1 key={claims.key_id}" in up
    closed = next(line for line in lines if line.startswith("channel.close"))
    fields = dict(part.split("=", 1) for part in closed.split()[1:])
    assert fields["engineer"] == "alice"
    assert fields["serial"] == "M-1"
    assert fields["port"] == str(port)
    assert int(fields["bytes_to_machine"]) == 1000
    assert int(fields["bytes_to_engineer"]) == len(b"hello from the machine\n") + 1000
    assert float(fields["duration"]) > 0
    assert any(line.startswith("tether.down serial=M-1") for line in lines)
    assert not any("v4.public." in line for line in lines)  # keys never reach logs


def _listening_sockets() -> int:
    """TCP sockets in LISTEN state that belong to this process."""
    import os

    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:
                    count += 1
    return count


async def test_relay_opens_no_listening_socket_per_tether(tmp_path: Path) -> None:
    async with vendor_setup(tmp_path) as vendor, EchoServer() as service:
        before = _listening_sockets()
        agents = []
        for n in range(5):
            key, claims = await vendor.issue(f"M-{n}", ports=[service.port, 22, 443])
            agents.append(Agent(key, claims, [service.port, 22, 443]))
        for agent in agents:
            await agent.__aenter__()
        try:
            for agent in agents:
                await agent.wait_for(TunnelState.CONNECTED)
            assert len(vendor.relay.registry) == 5
            assert _listening_sockets() == before
        finally:
            for agent in agents:
                await agent.__aexit__(None, None, None)
