"""One-click requests: agent → relay → case → vendor decision → key back to the agent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from tests.integration.harness import Agent, Vendor, vendor_setup
from tether.agent.request import request_key
from tether.agent.status import TunnelState
from tether.config import AgentConfig, RequestPolicy, TetherSettings
from tether.errors import Refused
from tether.keys import KeyKind, parse_key
from tether.protocol import CaseUpdate
from tether.sshlib import asyncssh
from tether.store import CaseStatus
from tether.vendor_service.service import VendorService


@dataclass
class Customer:
    config: AgentConfig
    machine_key: asyncssh.SSHKey
    updates: list[CaseUpdate]

    async def ask(self, description: str) -> str:
        return await request_key(
            self.config, self.machine_key, description, on_update=self.updates.append
        )


def customer(vendor: Vendor, tmp: Path, serial: str = "M-1") -> Customer:
    config = AgentConfig(
        path=tmp / "agent.toml",
        serial=serial,
        vendor_keys=(vendor.authority.signing_key.verify_key(),),
        state_dir=tmp / "state",
        request_relay=f"127.0.0.1:{vendor.relay_port}",
        request_relay_host_key=vendor.relay.host_key_fingerprint,
        tether=TetherSettings(connect_timeout=5),
    )
    return Customer(config, asyncssh.generate_private_key("ssh-ed25519"), [])


@pytest.fixture
async def vendor(tmp_path: Path) -> AsyncIterator[Vendor]:
    async with vendor_setup(tmp_path) as v:
        yield v


async def wait_for_case(vendor: Vendor, status: CaseStatus = CaseStatus.PENDING) -> int:
    for _ in range(100):
        cases = await vendor.store.cases.list(status=status)
        if cases:
            return cases[0].id
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {status.value} case appeared")


async def test_hold_policy_waits_for_an_engineer_then_tethers(
    vendor: Vendor, tmp_path: Path
) -> None:
    machine = customer(vendor, tmp_path)
    asking = asyncio.ensure_future(machine.ask("disk full on /var, app down"))
    case_id = await wait_for_case(vendor)
    await asyncio.sleep(0.5)
    assert not asking.done()  # still waiting for a human
    assert machine.updates[0].status == "pending"
    case = await vendor.authority.approve_case(case_id, by="alice")
    key = await asyncio.wait_for(asking, 5)
    claims = parse_key(
        key, machine.config.vendor_keys, now=vendor.authority.clock.now(), serial="M-1"
    )
    assert claims.kind == KeyKind.REQUEST
    assert claims.key_id == case.key_id
    issued = await vendor.store.keys.get(claims.key_id)
    assert issued is not None
    assert issued.description == "disk full on /var, app down"
    assert (claims.expires_at - claims.issued_at).days == 21
    # Flow 1 continues: the same machine key tethers with the key it was given.
    async with Agent(key, claims, [22], machine_key=machine.machine_key) as agent:
        await agent.wait_for(TunnelState.CONNECTED)


async def test_auto_policy_answers_a_known_machine_at_once(vendor: Vendor, tmp_path: Path) -> None:
    machine = customer(vendor, tmp_path)
    # The serial is bound to this machine: it used a key the vendor issued before.
    fingerprint = machine.machine_key.get_fingerprint("sha256")
    await vendor.store.machines.bind_first_use("M-1", fingerprint, vendor.authority.clock.now())
    config = replace(vendor.authority.config, request_policy=RequestPolicy.AUTO)
    service = VendorService(config, vendor.store, listen=("127.0.0.1", 0))
    serving = asyncio.ensure_future(service.serve())
    try:
        await service.wait_ready()
        key = await asyncio.wait_for(machine.ask("please look at the backup job"), 10)
        assert key.startswith("v4.public.")
    finally:
        await service.aclose()
        await serving


async def test_a_request_never_binds_a_serial_so_a_stranger_cannot_lock_the_machine_out(
    vendor: Vendor, tmp_path: Path
) -> None:
    """Security review, defect 16: one request from an unknown machine key claimed a serial."""
    config = replace(vendor.authority.config, request_policy=RequestPolicy.AUTO)
    service = VendorService(config, vendor.store, listen=("127.0.0.1", 0))
    serving = asyncio.ensure_future(service.serve())
    try:
        await service.wait_ready()
        stranger = customer(vendor, tmp_path / "stranger")  # claims M-1 with its own key
        claiming = asyncio.ensure_future(stranger.ask("let me in"))
        claimed = await wait_for_case(vendor)
        assert await service.process_pending() == 0  # a round of the auto policy: no key
        assert not claiming.done()  # without a person, for an unbound serial
        assert stranger.updates[0].status == "pending"
        assert "does not know this machine yet" in stranger.updates[0].message
        assert await vendor.store.machines.get("M-1") is None  # asking bound nothing

        # The real machine asks too: it is not refused, its case waits next to the other.
        real = customer(vendor, tmp_path / "real")
        asking = asyncio.ensure_future(real.ask("disk full"))
        for _ in range(100):
            pending = await vendor.store.cases.list(status=CaseStatus.PENDING)
            if len(pending) == 2:
                break
            await asyncio.sleep(0.05)
        assert len(pending) == 2, [c.machine_key for c in pending]
        ours = next(c for c in pending if c.id != claimed)
        fingerprint = real.machine_key.get_fingerprint("sha256")
        assert ours.machine_key == fingerprint
        # An engineer approves the real machine's case, seeing its fingerprint: that binds.
        await vendor.authority.approve_case(ours.id, by="alice")
        key = await asyncio.wait_for(asking, 5)
        claims = parse_key(key, real.config.vendor_keys, now=vendor.authority.clock.now())
        assert claims.serial == "M-1"
        owner = await vendor.store.machines.get("M-1")
        assert owner is not None
        assert owner.machine_key == fingerprint
        # The stranger's case can no longer be approved, and its next request is refused.
        with pytest.raises(Refused, match="is bound to another machine"):
            await vendor.authority.approve_case(claimed, by="alice")
        await vendor.authority.deny_case(claimed, by="alice", reason="not our customer")
        with pytest.raises(Refused, match="not our customer"):
            await asyncio.wait_for(claiming, 5)
        with pytest.raises(Refused, match="registered to another machine"):
            await asyncio.wait_for(stranger.ask("again"), 5)
    finally:
        await service.aclose()
        await serving


async def test_denied_request_says_why(vendor: Vendor, tmp_path: Path) -> None:
    machine = customer(vendor, tmp_path)
    asking = asyncio.ensure_future(machine.ask("help"))
    case_id = await wait_for_case(vendor)
    await vendor.authority.deny_case(
        case_id, by="alice", reason="no support contract for this unit"
    )
    with pytest.raises(Refused, match="no support contract for this unit"):
        await asyncio.wait_for(asking, 5)


async def test_cancel_withdraws_the_case(vendor: Vendor, tmp_path: Path) -> None:
    machine = customer(vendor, tmp_path)
    asking = asyncio.ensure_future(machine.ask("never mind"))
    case_id = await wait_for_case(vendor)
    asking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asking
    for _ in range(50):
        case = await vendor.store.cases.get(case_id)
        assert case is not None
        if case.status == CaseStatus.CANCELLED:
            break
        await asyncio.sleep(0.05)
    assert case.status == CaseStatus.CANCELLED


async def test_withdrawing_a_request_leaves_no_traceback_on_the_relay(
    vendor: Vendor, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Ctrl-C on `tether access enable --request`: the case closes, the relay stays quiet."""
    caplog.set_level(logging.INFO, logger="tether")
    machine = customer(vendor, tmp_path)
    asking = asyncio.ensure_future(machine.ask("never mind"))
    case_id = await wait_for_case(vendor)
    asking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asking
    for _ in range(100):
        case = await vendor.store.cases.get(case_id)
        watching = [n for n in vendor.relay.tasks.names() if n.startswith("relay.request.")]
        if case is not None and case.status == CaseStatus.CANCELLED and not watching:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"case {case_id} still watched by the relay: {watching}")
    loud = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not loud, [(r.getMessage(), r.exc_info) for r in loud]
    assert "Traceback" not in caplog.text


async def test_spoofed_serial_is_refused_until_admin_rebinds(
    vendor: Vendor, tmp_path: Path
) -> None:
    genuine = customer(vendor, tmp_path / "a")
    first = asyncio.ensure_future(genuine.ask("first request"))
    await vendor.authority.approve_case(await wait_for_case(vendor), by="alice")
    await asyncio.wait_for(first, 5)  # approving bound M-1 to the genuine machine key
    impostor = customer(vendor, tmp_path / "b")  # same serial, different machine key
    with pytest.raises(Refused, match="registered to another machine"):
        await asyncio.wait_for(impostor.ask("let me in"), 5)
    for _ in range(100):  # the relay's audit writer works in the background
        chain = await vendor.store.audit.read(vendor.relay.audit.chain)
        refused = [dict(e.fields) for e in chain.entries if e.event == "request.refused"]
        if refused:
            break
        await asyncio.sleep(0.05)
    assert [(f["serial"], f["reason"]) for f in refused] == [("M-1", "other-machine")]
    await vendor.store.machines.rebind("M-1", by="admin", now=vendor.authority.clock.now())
    replaced = asyncio.ensure_future(impostor.ask("the board was replaced"))
    case_id = await wait_for_case(vendor)
    case = await vendor.store.cases.get(case_id)
    assert case is not None
    assert case.description == "the board was replaced"
    replaced.cancel()
    with pytest.raises(asyncio.CancelledError):
        await replaced


async def test_a_look_alike_serial_opens_no_second_case(vendor: Vendor, tmp_path: Path) -> None:
    """Security review, defect 21: ``M-1.`` or ``m-1`` next to M-1 is refused or is M-1."""
    real = customer(vendor, tmp_path / "real")
    first = asyncio.ensure_future(real.ask("first request"))
    await vendor.authority.approve_case(await wait_for_case(vendor), by="alice")
    await asyncio.wait_for(first, 5)  # M-1 is now bound to the real machine
    stranger = customer(vendor, tmp_path / "stranger")
    # A modified client sends whatever serial it likes; our agent could not be configured so.
    object.__setattr__(stranger.config, "serial", "M-1.")
    with pytest.raises(Refused, match="invalid serial"):
        await asyncio.wait_for(stranger.ask("let me in"), 5)
    object.__setattr__(stranger.config, "serial", "m-1")
    with pytest.raises(Refused, match="serial M-1 is registered to another machine"):
        await asyncio.wait_for(stranger.ask("let me in"), 5)
    assert [c.serial for c in await vendor.store.cases.list()] == ["M-1"]


async def test_relay_host_key_is_pinned_for_requests(vendor: Vendor, tmp_path: Path) -> None:
    machine = customer(vendor, tmp_path)
    machine.config = replace(machine.config, request_relay_host_key="SHA256:" + "A" * 43)
    with pytest.raises(Refused, match="refusing to send anything"):
        await machine.ask("secret problem description")
    assert await vendor.store.cases.list() == []


@pytest.mark.parametrize("bad", ["", " ", "x" * 2001, "bell\x07"])
async def test_bad_descriptions_are_refused(vendor: Vendor, tmp_path: Path, bad: str) -> None:
    machine = customer(vendor, tmp_path)
    with pytest.raises(Refused):
        await asyncio.wait_for(machine.ask(bad), 5)
    assert await vendor.store.cases.list() == []


async def test_a_request_tells_the_vendor_the_grants_limits(vendor: Vendor, tmp_path: Path) -> None:
    """Issue 17: the vendor sees, with the case, what the customer's grant will allow."""
    machine = customer(vendor, tmp_path)
    limits = ("no administrator rights (sudo)", "each login waits for the customer to admit it")
    asking = asyncio.ensure_future(
        request_key(machine.config, machine.machine_key, "printer queue stuck", limits=limits)
    )
    try:
        case = await vendor.store.cases.get(await wait_for_case(vendor))
        assert case is not None
        assert case.limits == limits
    finally:
        asking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asking
    # A request that names no limits (an older agent) leaves the case without any.
    other = customer(vendor, tmp_path / "other", serial="M-2")
    asking = asyncio.ensure_future(other.ask("no limits here"))
    try:
        for _ in range(100):
            cases = [c for c in await vendor.store.cases.list() if c.serial == "M-2"]
            if cases:
                break
            await asyncio.sleep(0.05)
        assert cases
        assert cases[0].limits is None
    finally:
        asking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asking
