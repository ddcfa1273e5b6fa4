"""Two relays on one PostgreSQL: an engineer on one relay reaches a machine tethered to the other.

Relay A (``vendor.relay``) holds the machine's tether; relay B (the engineer's, "front")
carries the engineer's channels to A over one authenticated relay-to-relay link. The
machine's services are stand-ins on loopback ports (as in test_tether_inprocess.py);
the real-sshd path through a peer relay is in test_peering_sandbox.py.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import pytest

from tests.integration.harness import (
    Agent,
    EchoServer,
    Engineer,
    Vendor,
    run_ssh,
    vendor_setup,
)
from tether.agent.status import TunnelState
from tether.relay.peering import PeerOrigin, PeerSession
from tether.relay.server import Relay
from tether.sshlib import asyncssh
from tether.store import Store, relay_chain
from tether.wire import PEER_USERNAME

pytestmark = pytest.mark.postgres

T = TypeVar("T")


async def until(check: Callable[[], Awaitable[T | None]], what: str, within: float = 10) -> T:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = await check()
        if value is not None:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def make_peer_key(tmp: Path) -> Path:
    path = tmp / "peer_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


@dataclass
class Fleet:
    vendor: Vendor
    front: Relay
    peer_key: Path

    @property
    def home(self) -> Relay:
        return self.vendor.relay

    def trust_front(self, engineer: Engineer) -> None:
        """The engineer's known_hosts also names relay B (same fleet host key)."""
        line = engineer.known_hosts.read_text().splitlines()[0].split(" ", 1)[1]
        with engineer.known_hosts.open("a") as known:
            known.write(f"[127.0.0.1]:{self.front.port} {line}\n")

    def peer_sessions(self, relay: Relay) -> int:
        return sum(
            1 for c in relay.connections if c.authenticated and isinstance(c.link, PeerSession)
        )


@asynccontextmanager
async def fleet_setup(
    tmp: Path,
    database: str,
    *,
    home_peer_key: bool = True,
    front_peer_key: bool = True,
    front_poll: float = 0.1,
) -> AsyncIterator[Fleet]:
    peer_key = make_peer_key(tmp)
    async with vendor_setup(tmp, database=database) as vendor:
        # Relay A again on its port, now advertising its address and holding the peer key.
        port = vendor.relay.port
        await vendor.relay.aclose()
        home_config = replace(
            vendor.relay.config,
            listen=("127.0.0.1", port),
            advertise=f"127.0.0.1:{port}",
            peer_key=peer_key if home_peer_key else None,
        )
        vendor.relay = Relay(home_config, vendor.store)
        await vendor.relay.start()
        # Relay B: another process's view of the same database (its own pool).
        front_store = await Store.open(database)
        front = Relay(
            replace(
                home_config,
                relay_id="relay-2",
                listen=("127.0.0.1", 0),
                advertise="",
                peer_key=peer_key if front_peer_key else None,
                poll_interval=front_poll,
            ),
            front_store,
        )
        await front.start()
        try:
            yield Fleet(vendor, front, peer_key)
        finally:
            await front.aclose()
            await front_store.aclose()


async def tethered(fleet: Fleet, service: EchoServer, tmp: Path) -> tuple[Agent, Engineer]:
    key, claims = await fleet.vendor.issue("M-1", ports=[service.port])
    alice = await fleet.vendor.engineer("alice", tmp)
    fleet.trust_front(alice)
    return Agent(key, claims, [service.port]), alice


async def open_session(alice: Engineer, relay_port: int, target: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        *alice.ssh_args(relay_port, "-W", target, "alice@127.0.0.1"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert await asyncio.wait_for(proc.stdout.readline(), 10) == b"hello from the machine\n"
    return proc


async def end(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
    await proc.wait()


async def test_engineer_via_peer_relay_reaches_the_machine_and_both_relays_audit_it(
    tmp_path: Path, postgres_url: str
) -> None:
    async with fleet_setup(tmp_path, postgres_url) as fleet, EchoServer() as service:
        agent, alice = await tethered(fleet, service, tmp_path)
        async with agent:
            await agent.wait_for(TunnelState.CONNECTED)
            assert fleet.front.registry.get("M-1") is None  # B holds no tether for it
            result = await run_ssh(
                alice.ssh_args(fleet.front.port, "-W", f"m-1:{service.port}", "alice@127.0.0.1"),
                input=b"ping\n",
            )
            assert result.stdout == b"hello from the machine\nping\n", result.stderr

        async def audited(relay: Relay, event: str) -> dict[str, object] | None:
            entries = (
                await fleet.vendor.store.audit.read(relay_chain(relay.config.relay_id))
            ).entries
            found = [dict(e.fields) for e in entries if e.event == event]
            return found[0] if found else None

        # The machine's relay audits the engineer by name and the relay they came through.
        opened = await until(lambda: audited(fleet.home, "channel.opened"), "A's channel.opened")
        assert opened == {
            "engineer": "alice",
            "serial": "M-1",
            "port": service.port,
            "via": "relay-2",
        }
        closed = await until(lambda: audited(fleet.home, "channel.closed"), "A's channel.closed")
        assert (closed["via"], closed["bytes_to_machine"]) == ("relay-2", len(b"ping\n"))
        # The engineer's relay audits that it carried the channel, and to which relay.
        relayed = await until(lambda: audited(fleet.front, "channel.relayed"), "B's audit")
        assert relayed == {
            "engineer": "alice",
            "serial": "M-1",
            "port": service.port,
            "relay": "relay-1",
        }


def _open_failed(stderr: bytes) -> str:
    lines = [line for line in stderr.decode().splitlines() if "open failed" in line]
    assert lines, stderr
    return lines[0]


async def test_refusals_through_a_peer_relay_are_the_single_relay_messages(
    tmp_path: Path, postgres_url: str
) -> None:
    async with fleet_setup(tmp_path, postgres_url) as fleet, EchoServer() as service:
        agent, alice = await tethered(fleet, service, tmp_path)
        async with agent:
            await agent.wait_for(TunnelState.CONNECTED)
            cases = {
                "M-1:8080": "port 8080 is not open on machine M-1",
                "M-2:22": "machine M-2 is not tethered to this relay",
                "127.0.0.1:22": "machine 127.0.0.1 is not tethered to this relay",
                "localhost:443": "machine localhost is not tethered to this relay",
                "a;b:22": "is not a serial",
            }
            for target, message in cases.items():
                direct = await run_ssh(
                    alice.ssh_args(fleet.home.port, "-W", target, "alice@127.0.0.1")
                )
                via_peer = await run_ssh(
                    alice.ssh_args(fleet.front.port, "-W", target, "alice@127.0.0.1")
                )
                assert via_peer.returncode != 0
                assert message in via_peer.stderr.decode(), (target, via_peer.stderr)
                assert _open_failed(via_peer.stderr) == _open_failed(direct.stderr), target


async def test_engineer_certificate_cannot_open_a_relay_link(
    tmp_path: Path, postgres_url: str
) -> None:
    async with fleet_setup(tmp_path, postgres_url) as fleet, EchoServer() as service:
        agent, alice = await tethered(fleet, service, tmp_path)
        async with agent:
            await agent.wait_for(TunnelState.CONNECTED)
            # Stock ssh offers the certificate (and its plain key) as the peer user.
            result = await run_ssh(
                alice.ssh_args(
                    fleet.home.port, "-W", f"M-1:{service.port}", f"{PEER_USERNAME}@127.0.0.1"
                )
            )
            assert result.returncode == 255
            assert b"Permission denied" in result.stderr, result.stderr
            # Only the certificate, through asyncssh: refused as well.
            key = asyncssh.read_private_key(str(alice.key))
            cert = asyncssh.read_certificate(str(alice.key) + "-cert.pub")
            with pytest.raises(asyncssh.PermissionDenied):
                await asyncssh.connect(
                    "127.0.0.1",
                    fleet.home.port,
                    username=PEER_USERNAME,
                    client_keys=[(key, cert)],
                    known_hosts=None,
                    config=None,
                    agent_path=None,
                )
            assert fleet.peer_sessions(fleet.home) == 0


async def test_peer_key_cannot_log_in_as_an_engineer(tmp_path: Path, postgres_url: str) -> None:
    async with fleet_setup(tmp_path, postgres_url) as fleet, EchoServer() as service:
        agent, alice = await tethered(fleet, service, tmp_path)
        async with agent:
            await agent.wait_for(TunnelState.CONNECTED)
            as_engineer = replace(alice, key=fleet.peer_key)
            for relay in (fleet.home, fleet.front):
                result = await run_ssh(
                    as_engineer.ssh_args(relay.port, "-W", f"M-1:{service.port}", "alice@127.0.0.1")
                )
                assert result.returncode == 255
                assert b"Permission denied" in result.stderr, result.stderr


async def test_one_link_carries_many_channels_and_is_reopened_after_it_drops(
    tmp_path: Path, postgres_url: str
) -> None:
    async with fleet_setup(tmp_path, postgres_url) as fleet, EchoServer() as service:
        agent, alice = await tethered(fleet, service, tmp_path)
        async with agent:
            await agent.wait_for(TunnelState.CONNECTED)
            target = f"M-1:{service.port}"
            first = await open_session(alice, fleet.front.port, target)
            second = await open_session(alice, fleet.front.port, target)
            assert fleet.front.peers is not None
            assert (fleet.front.peers.connects, len(fleet.front.peers)) == (1, 1)
            assert fleet.peer_sessions(fleet.home) == 1
            # The link drops (here: relay A hangs up on it): its channels end with it...
            for conn in list(fleet.home.connections):
                if isinstance(conn.link, PeerSession):
                    conn.close()
            await asyncio.wait_for(asyncio.gather(first.wait(), second.wait()), 10)
            # ...and the next channel opens a new link.
            third = await open_session(alice, fleet.front.port, target)
            assert fleet.front.peers.connects == 2
            assert fleet.peer_sessions(fleet.home) == 1
            await end(third)


@pytest.mark.parametrize("front_notices", [True, False], ids=["front-relay", "home-relay-alone"])
async def test_disabling_the_engineer_cuts_a_channel_through_a_peer_within_a_second(
    tmp_path: Path, postgres_url: str, front_notices: bool
) -> None:
    # With the engineer's relay slow to notice, the machine's relay must cut on its own.
    poll = 0.1 if front_notices else 3600.0
    async with (
        fleet_setup(tmp_path, postgres_url, front_poll=poll) as fleet,
        EchoServer() as service,
    ):
        agent, alice = await tethered(fleet, service, tmp_path)
        async with agent:
            await agent.wait_for(TunnelState.CONNECTED)
            proc = await open_session(alice, fleet.front.port, f"M-1:{service.port}")
            started = time.monotonic()
            await fleet.vendor.store.engineers.disable(
                "alice", reason="left", now=fleet.vendor.authority.clock.now()
            )
            await asyncio.wait_for(proc.wait(), 1.0)
            assert time.monotonic() - started <= 1.0

            async def forgotten() -> bool | None:
                return True if not await fleet.vendor.store.channels.list("M-1") else None

            await until(forgotten, "the channel row to go")


async def test_home_relay_refuses_forged_or_disabled_identities_on_a_peer_link(
    tmp_path: Path, postgres_url: str
) -> None:
    async with fleet_setup(tmp_path, postgres_url) as fleet, EchoServer() as service:
        agent, _ = await tethered(fleet, service, tmp_path)
        await fleet.vendor.store.engineers.add("bob", fleet.vendor.authority.clock.now())
        await fleet.vendor.store.engineers.disable(
            "bob", reason="left", now=fleet.vendor.authority.clock.now()
        )
        async with agent:
            await agent.wait_for(TunnelState.CONNECTED)
            async with asyncssh.connect(
                "127.0.0.1",
                fleet.home.port,
                username=PEER_USERNAME,
                client_keys=[asyncssh.read_private_key(str(fleet.peer_key))],
                known_hosts=([fleet.home.host_public_key], [], []),
                config=None,
                agent_path=None,
            ) as link:
                expires = int(time.time()) + 3600
                cases = {
                    "not json": "no valid engineer identity",
                    '{"v":1,"engineer":"alice"}': "no valid engineer identity",
                    PeerOrigin("root", "k", "relay-2", expires).encode(): "reserved",
                    PeerOrigin("bob", "bob", "relay-2", expires).encode(): "may not connect",
                    PeerOrigin("carol", "c", "relay-2", expires).encode(): "may not connect",
                    PeerOrigin("alice", "alice", "relay-2", int(time.time()) - 1).encode(): (
                        "may not connect"
                    ),
                }
                for origin, words in cases.items():
                    with pytest.raises(asyncssh.ChannelOpenError) as refused:
                        await link.open_connection("M-1", service.port, orig_host=origin)
                    assert words in refused.value.reason, (origin, refused.value.reason)
                # A good identity opens the machine's port, as for the relay's own engineer.
                good = PeerOrigin("alice", "alice", "relay-2", expires).encode()
                reader, writer = await link.open_connection("M-1", service.port, orig_host=good)
                assert await reader.readline() == b"hello from the machine\n"
                writer.close()


async def test_relays_without_a_peer_key_neither_carry_nor_accept_relay_links(
    tmp_path: Path, postgres_url: str
) -> None:
    async with (
        fleet_setup(tmp_path, postgres_url, home_peer_key=False, front_peer_key=False) as fleet,
        EchoServer() as service,
    ):
        agent, alice = await tethered(fleet, service, tmp_path)
        async with agent:
            await agent.wait_for(TunnelState.CONNECTED)
            result = await run_ssh(
                alice.ssh_args(fleet.front.port, "-W", f"M-1:{service.port}", "alice@127.0.0.1")
            )
            assert result.returncode != 0
            assert b"machine M-1 is not tethered to this relay" in result.stderr
            with pytest.raises(asyncssh.PermissionDenied):
                await asyncssh.connect(
                    "127.0.0.1",
                    fleet.home.port,
                    username=PEER_USERNAME,
                    client_keys=[asyncssh.read_private_key(str(fleet.peer_key))],
                    known_hosts=None,
                    config=None,
                    agent_path=None,
                )
