"""What the relay admits: each bad-key class, expiry, and its own resource limits."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.integration.harness import Agent, EchoServer, Vendor, vendor_setup
from tether.agent.status import TunnelState
from tether.clock import FrozenClock
from tether.keys import SigningKey, issue_key
from tether.relay.server import Relay
from tether.vendor_service.authority import Authority


async def _expect_refused(
    vendor: Vendor, key: str, claims_from: str, port: int, words: str
) -> None:
    _, claims = await vendor.issue(claims_from, ports=[port])  # any claims: the relay reads the key
    async with Agent(key, claims, [port]) as agent:
        await agent.wait_for(TunnelState.REFUSED)
        assert words in (agent.tunnel.status.reason or ""), agent.tunnel.status
    assert len(vendor.relay.registry) == 0


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("garbled", "not a tether key"),
        ("truncated", "incomplete"),
        ("tampered", "altered"),
        ("unknown-signer", "does not trust"),
        ("expired", "expired"),
        ("unknown-key", "not issued by this vendor service"),
        ("revoked", "revoked"),
    ],
)
async def test_relay_refuses_each_bad_key_class(tmp_path: Path, kind: str, words: str) -> None:
    async with vendor_setup(tmp_path) as vendor, EchoServer() as service:
        port = service.port
        now = datetime.now(UTC)
        good, claims = await vendor.issue("M-1", ports=[port])
        if kind == "garbled":
            key = "hello, this is the key you asked for"
        elif kind == "truncated":
            key = good[: len(good) // 2]
        elif kind == "tampered":
            key = _tamper(good, b'"sub":"M-1"', b'"sub":"M-2"')
        elif kind == "unknown-signer":
            key, _ = issue_key(
                SigningKey.generate(),
                serial="M-1",
                now=now,
                lifetime=timedelta(days=1),
                relay=claims.relay,
                relay_host_key=claims.relay_host_key,
                ports=[port],
                vendor="Evil",
            )
        elif kind == "expired":
            other = Authority(
                vendor.authority.config, vendor.store, clock=FrozenClock(now - timedelta(days=3))
            )
            key, _ = await other.issue_key(
                "M-1", lifetime=timedelta(days=1), ports=(port,), relay=claims.relay
            )
        elif kind == "unknown-key":
            # Properly signed by the vendor's key but never recorded as issued.
            key, _ = issue_key(
                vendor.authority.signing_key,
                serial="M-1",
                now=now,
                lifetime=timedelta(days=1),
                relay=claims.relay,
                relay_host_key=claims.relay_host_key,
                ports=[port],
                vendor="ACME",
            )
        else:
            key = good
            await vendor.authority.revoke_key(claims.key_id, reason="test")
        await _expect_refused(vendor, key, "M-1", port, words)
        if kind != "unknown-key" and kind != "revoked":
            # A refused key is not burnt: the good key still binds on first use.
            async with Agent(good, claims, [port]) as agent:
                await agent.wait_for(TunnelState.CONNECTED)


async def test_key_not_yet_valid_at_the_relay_is_retried_not_dropped(tmp_path: Path) -> None:
    """The relay's clock may be behind: the agent keeps trying instead of giving up."""
    async with vendor_setup(tmp_path) as vendor, EchoServer() as service:
        later = Authority(
            vendor.authority.config,
            vendor.store,
            clock=FrozenClock(datetime.now(UTC) + timedelta(days=3)),
        )
        key, claims = await later.issue_key(
            "M-1",
            lifetime=timedelta(days=1),
            ports=(service.port,),
            relay=f"127.0.0.1:{vendor.relay_port}",
        )
        async with Agent(key, claims, [service.port]) as agent:
            await agent.wait_for(TunnelState.RECONNECTING)
            assert "valid only from" in (agent.tunnel.status.reason or "")


async def test_relay_drops_tether_when_key_expires(tmp_path: Path) -> None:
    async with vendor_setup(tmp_path) as vendor, EchoServer() as service:
        key, claims = await vendor.issue("M-1", ports=[service.port], lifetime=timedelta(seconds=3))
        async with Agent(key, claims, [service.port]) as agent:
            await agent.wait_for(TunnelState.CONNECTED)
            await agent.wait_for(TunnelState.REFUSED, timeout=6)
            assert "expired" in (agent.tunnel.status.reason or "")
        assert vendor.relay.registry.get("M-1") is None


async def test_key_ports_limit_what_the_agent_may_offer(tmp_path: Path) -> None:
    async with vendor_setup(tmp_path) as vendor, EchoServer() as allowed, EchoServer() as other:
        key, claims = await vendor.issue("M-1", ports=[allowed.port])
        # A modified agent offering more than its key allows gets only the key's ports.
        async with Agent(key, claims, [allowed.port, other.port]) as agent:
            await agent.wait_for(TunnelState.CONNECTED)
            entry = vendor.relay.registry.get("M-1")
            assert entry is not None
            assert entry.offered_ports == {allowed.port}


async def test_unauthenticated_connections_are_capped(tmp_path: Path) -> None:
    """At the cap the oldest stalled connection makes room; a busy block is refused."""
    async with vendor_setup(tmp_path) as vendor:
        limited = replace(
            vendor.relay.config,
            relay_id="relay-2",  # a second relay beside the vendor's: its own id
            listen=("127.0.0.1", 0),
            max_unauthenticated=3,
            early_drop_start=3,
            stall_after=0.0,  # a connection stalls at once: its block is early-dropped
        )
        relay = Relay(limited, vendor.store)
        await relay.start()
        try:
            idle = [
                await asyncio.open_connection(
                    "127.0.0.1", relay.port, local_addr=(f"127.0.{i}.1", 0)
                )
                for i in (1, 2, 3)
            ]
            for reader, _ in idle:
                assert (await asyncio.wait_for(reader.readline(), 5)).startswith(
                    b"SSH-2.0-Tether_relay"
                )
            # A newcomer from a quiet block is let in: the oldest silent one is closed.
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", relay.port, local_addr=("127.0.4.1", 0)
            )
            assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"SSH-2.0-")
            assert b"evicted" in await asyncio.wait_for(idle[0][0].read(), 5)
            assert relay.gate.evictions == 1
            # One from a block whose connection stalls, at the cap, is hung up on at
            # once, saying why (before any key exchange).
            busy_reader, busy_writer = await asyncio.open_connection(
                "127.0.0.1", relay.port, local_addr=("127.0.2.9", 0)
            )
            data = await asyncio.wait_for(busy_reader.read(), 5)
            assert b"too many connections waiting to log in" in data
            assert len(relay.gate) == 3
            for _, w in [*idle, (reader, writer), (busy_reader, busy_writer)]:
                w.close()
        finally:
            await relay.aclose()


async def test_login_timeout_disconnects_silent_clients(tmp_path: Path) -> None:
    async with vendor_setup(tmp_path) as vendor:
        quick = replace(
            vendor.relay.config, relay_id="relay-2", listen=("127.0.0.1", 0), login_timeout=1.0
        )
        relay = Relay(quick, vendor.store)
        await relay.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            await asyncio.wait_for(reader.readline(), 5)
            # Say nothing more: the relay must hang up by itself.
            await asyncio.wait_for(reader.read(), 5)
            writer.close()
            for _ in range(50):
                if relay.unauthenticated == 0:
                    break
                await asyncio.sleep(0.05)
            assert relay.unauthenticated == 0
        finally:
            await relay.aclose()


def _tamper(key: str, old: bytes, new: bytes) -> str:
    """Change the signed claims without re-signing (what an attacker would try)."""
    import base64

    body, _, footer = key[len("v4.public.") :].partition(".")
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    assert old in raw
    changed = base64.urlsafe_b64encode(raw.replace(old, new)).rstrip(b"=").decode()
    return f"v4.public.{changed}.{footer}"


async def test_another_machine_cannot_take_over_a_serial_route(tmp_path: Path) -> None:
    """Security: a valid key for the same serial (any case) from another machine is refused."""
    async with vendor_setup(tmp_path) as vendor, EchoServer() as service:
        port = service.port
        key, claims = await vendor.issue("ABC123", ports=[port])
        async with Agent(key, claims, [port]) as genuine:
            await genuine.wait_for(TunnelState.CONNECTED)
            for serial in ("ABC123", "abc123"):
                other_key, other_claims = await vendor.issue(serial, ports=[port])
                async with Agent(other_key, other_claims, [port]) as impostor:
                    await impostor.wait_for(TunnelState.REFUSED)
                    assert "another machine" in (impostor.tunnel.status.reason or "")
            entry = vendor.relay.registry.get("abc123")
            assert entry is not None
            assert entry.machine_key == genuine.machine_key.get_fingerprint("sha256")
            assert genuine.tunnel.status.state == TunnelState.CONNECTED


async def test_engineer_connection_ends_when_the_certificate_expires(tmp_path: Path) -> None:
    """Security: a certificate is checked at login only, so the relay closes at its end."""
    import subprocess

    from tether.sshlib import asyncssh

    async with vendor_setup(tmp_path) as vendor, EchoServer() as service:
        key, claims = await vendor.issue("M-1", ports=[service.port])
        alice = await vendor.engineer("alice", tmp_path)
        public = asyncssh.read_public_key(str(alice.key) + ".pub")
        short = await vendor.authority.sign("alice", public, ttl=timedelta(seconds=3))
        (tmp_path / "alice_key-cert.pub").write_text(short.openssh() + "\n")
        async with Agent(key, claims, [service.port]) as agent:
            await agent.wait_for(TunnelState.CONNECTED)
            proc = await asyncio.create_subprocess_exec(
                *alice.ssh_args(vendor.relay_port, "-N", "alice@127.0.0.1"),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            started = asyncio.get_running_loop().time()
            await asyncio.wait_for(proc.wait(), 10)  # closed by the relay at valid_before
            lasted = asyncio.get_running_loop().time() - started
            assert proc.returncode == 255
            assert 1.5 < lasted < 6, f"connection lasted {lasted:.1f} s for a 3 s certificate"


async def test_one_click_request_may_wait_past_the_register_deadline(tmp_path: Path) -> None:
    from tests.integration.test_one_click import customer, wait_for_case

    async with vendor_setup(tmp_path) as vendor:
        quick = replace(vendor.relay.config, listen=("127.0.0.1", 0), register_timeout=0.5)
        await vendor.relay.aclose()
        vendor.relay = Relay(quick, vendor.store)
        await vendor.relay.start()
        vendor.authority.config = replace(
            vendor.authority.config, relay=f"127.0.0.1:{vendor.relay.port}"
        )
        machine = customer(vendor, tmp_path)
        asking = asyncio.ensure_future(machine.ask("needs a human"))
        case_id = await wait_for_case(vendor)
        await asyncio.sleep(1.5)  # three times the registration deadline
        await vendor.authority.approve_case(case_id, by="alice")
        key = await asyncio.wait_for(asking, 5)
        assert key.startswith("v4.public.")


async def test_one_source_cannot_hold_every_login_slot(tmp_path: Path) -> None:
    async with vendor_setup(tmp_path) as vendor:
        limited = replace(
            vendor.relay.config,
            relay_id="relay-2",
            listen=("127.0.0.1", 0),
            max_unauthenticated_per_source=2,
        )
        relay = Relay(limited, vendor.store)
        await relay.start()
        try:
            idle = [await asyncio.open_connection("127.0.0.1", relay.port) for _ in range(2)]
            for reader, _ in idle:
                await asyncio.wait_for(reader.readline(), 5)
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            data = await asyncio.wait_for(reader.read(), 5)
            assert b"too many connections waiting to log in" in data
            writer.close()
            for _, w in idle:
                w.close()
                await w.wait_closed()
            for _ in range(50):
                if len(relay.gate) == 0:
                    break
                await asyncio.sleep(0.05)
            assert len(relay.gate) == 0
        finally:
            await relay.aclose()


async def test_one_pending_request_per_machine(tmp_path: Path) -> None:
    from tests.integration.test_one_click import customer, wait_for_case
    from tether.errors import Refused

    async with vendor_setup(tmp_path) as vendor:
        machine = customer(vendor, tmp_path)
        first = asyncio.ensure_future(machine.ask("first"))
        case_id = await wait_for_case(vendor)
        with pytest.raises(Refused, match=f"already waiting \\(case {case_id}\\)"):
            await asyncio.wait_for(machine.ask("second"), 5)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first


async def test_a_vendor_certificate_without_principals_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Security: a CA-signed certificate naming nobody is no engineer (OpenSSH refuses it too)."""
    import subprocess

    from tests.integration.harness import run_ssh

    caplog.set_level("INFO", logger="tether.relay")
    async with vendor_setup(tmp_path) as vendor, EchoServer() as service:
        key, claims = await vendor.issue("M-1", ports=[service.port])
        alice = await vendor.engineer("alice", tmp_path)
        reach = alice.ssh_args(vendor.relay_port, "-W", f"M-1:{service.port}", "alice@127.0.0.1")
        async with Agent(key, claims, [service.port]) as agent:
            await agent.wait_for(TunnelState.CONNECTED)
            named = await run_ssh(reach)
            assert named.stdout == b"hello from the machine\n", named.stderr
            # The same key, signed by the same vendor CA, with no -n: no principals at all.
            subprocess.run(
                ["ssh-keygen", "-q", "-s", str(vendor.dir / "engineer_ca"), "-I", "alice",
                 "-V", "-1m:+1h", f"{alice.key}.pub"],
                check=True,
            )  # fmt: skip
            nameless = await run_ssh(reach)
    assert nameless.returncode == 255
    assert b"Permission denied" in nameless.stderr
    assert nameless.stdout == b""
    refused = [r.message for r in caplog.records if r.message.startswith("login.refused")]
    assert any("reason=certificate-without-principals" in line for line in refused), refused


async def _vendor_audit(vendor: Vendor, *args: str) -> tuple[int, str, str]:
    """``tether vendor audit ARGS`` as the vendor runs it, on this vendor's database."""
    import subprocess
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tether", "vendor", "audit", "--data-dir", str(vendor.dir), *args,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def _relay_events(vendor: Vendor, event: str) -> list[dict[str, object]]:
    """The fields of ``event`` in the relay's chain, as `tether vendor audit --json` shows them.

    Waits until the relay's background writer has put at least one there.
    """
    import json

    chain = vendor.relay.audit.chain
    for _ in range(100):
        report = await vendor.store.audit.read(chain)
        if any(e.event == event for e in report.entries):
            break
        await asyncio.sleep(0.05)
    code, out, err = await _vendor_audit(vendor, "--chain", chain, "--verify", "--json")
    assert code == 0, err
    (shown,) = json.loads(out)["chains"]
    return [row["fields"] for row in shown["rows"] if row["event"] == event]


async def test_a_revoked_tether_is_audited_as_revoked(tmp_path: Path) -> None:
    async with vendor_setup(tmp_path) as vendor, EchoServer() as service:
        key, claims = await vendor.issue("M-1", ports=[service.port])
        async with Agent(key, claims, [service.port]) as agent:
            await agent.wait_for(TunnelState.CONNECTED)
            await vendor.authority.revoke_key(claims.key_id, reason="customer asked")
            await agent.wait_for(TunnelState.REFUSED)
        (down,) = await _relay_events(vendor, "tether.down")
    assert (down["serial"], down["key_id"], down["reason"]) == ("M-1", claims.key_id, "revoked")


async def test_a_tether_refused_for_another_machine_is_in_the_relays_chain(
    tmp_path: Path,
) -> None:
    async with vendor_setup(tmp_path) as vendor, EchoServer() as service:
        port = service.port
        key, claims = await vendor.issue("ABC123", ports=[port])
        async with Agent(key, claims, [port]) as genuine:
            await genuine.wait_for(TunnelState.CONNECTED)
            other_key, other_claims = await vendor.issue("ABC123", ports=[port])
            async with Agent(other_key, other_claims, [port]) as impostor:
                await impostor.wait_for(TunnelState.REFUSED)
            (refused,) = await _relay_events(vendor, "tether.refused")
    assert refused["serial"] == "ABC123"
    assert refused["key_id"] == other_claims.key_id
    assert refused["reason"] == "other-machine"
    assert refused["machine"] == impostor.machine_key.get_fingerprint("sha256")


async def test_audit_of_an_unknown_chain_is_bad_input(tmp_path: Path) -> None:
    async with vendor_setup(tmp_path) as vendor, EchoServer() as service:
        key, claims = await vendor.issue("M-1", ports=[service.port])
        async with Agent(key, claims, [service.port]) as agent:
            await agent.wait_for(TunnelState.CONNECTED)
        await _relay_events(vendor, "tether.down")
        code, out, err = await _vendor_audit(vendor, "--chain", "relay:nowhere")
        known_code, _, _ = await _vendor_audit(vendor, "--chain", "relay:relay-1")
    assert code == 2
    assert "no audit chain 'relay:nowhere' in the database" in err
    assert "relay:relay-1, vendor" in err
    assert out == ""
    assert known_code == 0
