"""Two relays on one PostgreSQL: an engineer on one relay reaches a machine tethered to the other.

Relay A (``vendor.relay``) holds the machine's tether; relay B (the engineer's, "front")
carries the engineer's channels to A over one authenticated relay-to-relay link. The
machine's services are stand-ins on loopback ports (as in test_tether_inprocess.py);
the real-sshd path (the demo's sandboxed machine with stock sshd and a page on 443,
relay B on the demo's store) is at the end.
"""

from __future__ import annotations

import asyncio
import os
import socket
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
    open_session,
    run_ssh,
    vendor_setup,
)
from tests.integration.relay.test_haproxy import BEHIND_HAPROXY, haproxy, issue
from tether.agent.status import TunnelState
from tether.demo import DemoSystem
from tether.relay.peering import PeerOrigin, PeerSession
from tether.relay.server import Relay
from tether.sandbox import sandbox_unavailable_reason
from tether.sandbox.haproxy import haproxy_unavailable_reason
from tether.sshlib import asyncssh
from tether.store import Store, relay_chain
from tether.wire import PEER_USERNAME

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

    def trust(self, engineer: Engineer, port: int) -> None:
        """The engineer's known_hosts also names this port (same fleet host key)."""
        line = engineer.known_hosts.read_text().splitlines()[0].split(" ", 1)[1]
        with engineer.known_hosts.open("a") as known:
            known.write(f"[127.0.0.1]:{port} {line}\n")

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
    home_peer_listen: bool = False,
) -> AsyncIterator[Fleet]:
    peer_key = make_peer_key(tmp)
    async with vendor_setup(tmp, database=database) as vendor:
        # Relay A again on its port, now holding the peer key. Its advertised address
        # (in its tether rows) stays relay.toml's 127.0.0.1:2222, which nothing listens
        # on: peers dial the address the fleet's membership names.
        port = vendor.relay.port
        await vendor.relay.aclose()
        home_config = replace(
            vendor.relay.config,
            listen=("127.0.0.1", port),
            peer_key=peer_key if home_peer_key else None,
            peer_listen=("127.0.0.1", 0) if home_peer_listen else None,
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
                peer_key=peer_key if front_peer_key else None,
                peer_listen=None,
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
    fleet.trust(alice, fleet.front.port)
    return Agent(key, claims, [service.port]), alice


async def end(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
    await proc.wait()


@pytest.mark.postgres
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


@pytest.mark.postgres
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


@pytest.mark.postgres
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


@pytest.mark.postgres
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


@pytest.mark.postgres
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


@pytest.mark.postgres
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


@pytest.mark.postgres
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


@pytest.mark.postgres
async def test_a_relay_to_relay_port_takes_peer_links_only_and_is_the_one_peers_dial(
    tmp_path: Path, postgres_url: str
) -> None:
    async with (
        fleet_setup(tmp_path, postgres_url, home_peer_listen=True) as fleet,
        EchoServer() as service,
    ):
        agent, alice = await tethered(fleet, service, tmp_path)
        peer_port = int(fleet.home.membership.address.rsplit(":", 1)[1])
        assert peer_port != fleet.home.port
        fleet.trust(alice, peer_port)
        async with agent:
            await agent.wait_for(TunnelState.CONNECTED)
            result = await run_ssh(
                alice.ssh_args(fleet.front.port, "-W", f"M-1:{service.port}", "alice@127.0.0.1"),
                input=b"ping\n",
            )
            assert result.stdout == b"hello from the machine\nping\n", result.stderr
            links = [c for c in fleet.home.connections if isinstance(c.link, PeerSession)]
            assert [c.peers_only for c in links] == [True]
            # The public port takes no peer login now; the peer port takes nothing else.
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
            refused = await run_ssh(
                alice.ssh_args(peer_port, "-W", f"M-1:{service.port}", "alice@127.0.0.1")
            )
            assert refused.returncode == 255
            assert b"Permission denied" in refused.stderr, refused.stderr


@pytest.mark.postgres
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


# --- real sshd through a peer relay ---------------------------------------------------


@dataclass
class PeeredDemo:
    demo: DemoSystem
    front: Relay
    #: The demo engineer's OpenSSH config, with relay B as ``tether-relay``.
    ssh_config: Path

    async def ssh(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
        proc = await asyncio.create_subprocess_exec(
            "ssh",
            "-F",
            str(self.ssh_config),
            *args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
        return subprocess.CompletedProcess(args, proc.returncode or 0, out, err)


@pytest.fixture
async def peered(tmp_path: Path) -> AsyncIterator[PeeredDemo]:
    reason = sandbox_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    peer_key = tmp_path / "peer_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(peer_key)], check=True)
    demo = DemoSystem(tmp_path / "demo")
    front: Relay | None = None
    try:
        await demo.start()
        assert demo.relay is not None
        assert demo.store is not None
        assert demo.engineer is not None
        # Relay A takes the fleet's peer key; the agent comes back to it at once.
        demo.relay.config = replace(demo.relay.config, peer_key=peer_key)
        await demo.restart_relay()
        for _ in range(1000):
            if demo.relay.registry.get(demo.serial) is not None:
                break
            await asyncio.sleep(0.02)
        assert demo.relay.registry.get(demo.serial) is not None, "the agent did not come back"
        front = Relay(
            replace(demo.relay.config, relay_id="relay-2", listen=("127.0.0.1", 0), advertise=""),
            demo.store,
        )
        await front.start()
        home = demo.engineer.ssh_config
        config = tmp_path / "ssh_config_via_b"
        config.write_text(
            home.read_text().replace(f"Port {demo.relay_port}\n", f"Port {front.port}\n")
        )
        known = home.parent / "known_hosts"
        line = known.read_text().splitlines()[0].split(" ", 1)[1]
        with known.open("a") as file:
            file.write(f"[127.0.0.1]:{front.port} {line}\n")
        yield PeeredDemo(demo, front, config)
    finally:
        if front is not None:
            await front.aclose()
        await demo.aclose()


@pytest.mark.sandbox
async def test_stock_ssh_through_a_peer_relay_runs_commands_copies_files_and_forwards_443(
    peered: PeeredDemo, tmp_path: Path
) -> None:
    demo = peered.demo
    assert demo.machine is not None
    assert peered.front.registry.get(demo.serial) is None  # relay B holds no tether
    result = await peered.ssh(demo.serial, "hostname; id -un")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().split() == [demo.serial, "tether-support"]
    # scp through the same path.
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(300_000))
    copy = await asyncio.create_subprocess_exec(
        "scp",
        "-F",
        str(peered.ssh_config),
        str(payload),
        f"{demo.serial}:payload.bin",
        stderr=subprocess.PIPE,
    )
    _, copy_err = await asyncio.wait_for(copy.communicate(), 30)
    assert copy.returncode == 0, copy_err
    stored = demo.machine.host_path("/home") / "tether-support" / "payload.bin"
    assert stored.read_bytes() == payload.read_bytes()
    # ssh -L to the machine's 443.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    forward = await asyncio.create_subprocess_exec(
        "ssh",
        "-F",
        str(peered.ssh_config),
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        "-L",
        f"127.0.0.1:{port}:{demo.serial}:443",
        "tether-relay",
        stderr=subprocess.PIPE,
    )
    try:
        page = await fetch(port)
        assert f"Web UI of machine {demo.serial}" in page
    finally:
        forward.terminate()
        await asyncio.wait_for(forward.wait(), 5)
    # Everything went through one link from B to A.
    assert peered.front.peers is not None
    assert peered.front.peers.connects == 1


@pytest.mark.sandbox
async def test_refusals_through_a_peer_relay_to_a_real_machine(peered: PeeredDemo) -> None:
    demo = peered.demo
    refused = {
        f"{demo.serial}:8080": f"port 8080 is not open on machine {demo.serial}",
        "OTHER-0002:22": "machine OTHER-0002 is not tethered to this relay",
        "127.0.0.1:22": "machine 127.0.0.1 is not tethered to this relay",
        "localhost:443": "machine localhost is not tethered to this relay",
    }
    for target, message in refused.items():
        result = await peered.ssh("-W", target, "tether-relay")
        assert result.returncode != 0
        assert message in result.stderr.decode(), (target, result.stderr)


async def fetch(port: int, attempts: int = 50) -> str:
    """GET / on the forwarded port, once ssh has started listening on it."""
    for _ in range(attempts):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.write(b"GET / HTTP/1.0\r\nHost: machine\r\n\r\n")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return data.decode(errors="replace")
    raise AssertionError(f"nothing listened on forwarded port {port}")


# --- behind HAProxy (PROXY v2 on the public port, peers on peer_listen) ---------------


@pytest.mark.haproxy
async def test_behind_haproxy_every_relay_reaches_every_machine(tmp_path: Path) -> None:
    reason = haproxy_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    peer_key = make_peer_key(tmp_path)
    fleet: dict[str, object] = {
        **BEHIND_HAPROXY,
        "peer_key": peer_key,
        "peer_listen": ("127.0.0.1", 0),
    }
    async with (
        vendor_setup(tmp_path, **fleet) as vendor,
        EchoServer() as service,
    ):
        second = Relay(
            replace(vendor.relay.config, relay_id="relay-2", listen=("127.0.0.1", 0)),
            vendor.store,
        )
        await second.start()
        relays = (vendor.relay, second)
        try:
            async with haproxy(tmp_path, *relays) as proxy:
                alice = await vendor.engineer("alice", tmp_path, port=proxy.port)
                agents = [await issue(vendor, f"M-{i}", service.port, proxy) for i in (1, 2)]
                for agent in agents:  # round robin: one tether on each relay
                    await agent.__aenter__()
                    await agent.wait_for(TunnelState.CONNECTED)
                assert [len(r.registry) for r in relays] == [1, 1]
                # Round robin again: each machine is asked for through both relays.
                for serial in ("M-1", "M-1", "M-2", "M-2"):
                    result = await run_ssh(
                        alice.ssh_args(
                            proxy.port, "-W", f"{serial}:{service.port}", "alice@127.0.0.1"
                        ),
                        input=b"ping\n",
                    )
                    assert result.stdout == b"hello from the machine\nping\n", (
                        serial,
                        result.stderr,
                    )
                carried = [r.peers.connects for r in relays if r.peers is not None]
                assert sum(carried) >= 1, carried
                for agent in agents:
                    await agent.__aexit__(None, None, None)
        finally:
            await second.aclose()


@pytest.mark.postgres
async def test_fleet_revoke_ends_sessions_through_either_relay_within_a_second(
    tmp_path: Path, postgres_url: str
) -> None:
    """SPEC: revocation reaches every relay within 1 s; sessions via A and via B both end."""
    async with fleet_setup(tmp_path, postgres_url) as fleet, EchoServer() as service:
        key, claims = await fleet.vendor.issue("M-1", ports=[service.port])
        alice = await fleet.vendor.engineer("alice", tmp_path)
        fleet.trust(alice, fleet.front.port)
        async with Agent(key, claims, [service.port]) as agent:
            await agent.wait_for(TunnelState.CONNECTED)
            direct = await open_session(alice, fleet.home.port, f"M-1:{service.port}")
            via_peer = await open_session(alice, fleet.front.port, f"M-1:{service.port}")
            started = time.monotonic()
            await fleet.vendor.authority.revoke_key(claims.key_id, reason="case closed")
            await asyncio.wait_for(asyncio.gather(direct.wait(), via_peer.wait()), timeout=1.0)
            assert time.monotonic() - started <= 1.0
            # Neither relay lets a new session in.
            for port in (fleet.home.port, fleet.front.port):
                refused = await run_ssh(
                    alice.ssh_args(port, "-W", f"M-1:{service.port}", "alice@127.0.0.1")
                )
                assert b"not tethered" in refused.stderr, refused.stderr
