"""A key works once (issue 11, machine side): spent keys, the relay's verdict, passwords.

A key whose access was closed (disable, expiry, revocation) is spent: the machine
refuses it before changing anything, and the relay refuses it even to a copy of the
machine's state. Opening the same open grant again, or reconnecting it, is no new use.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.agent.test_cli import Machine, setup, stop  # noqa: F401 - fixture
from tests.integration.harness import Vendor
from tether.agent.control import ask_daemon
from tether.sandbox import Sandbox

pytestmark = pytest.mark.sandbox


async def _wait(predicate: object, what: str, timeout: float = 10.0) -> None:
    assert callable(predicate)
    for _ in range(int(timeout / 0.05)):
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never: {what}")


async def test_a_closed_key_is_spent_on_the_machine_and_at_the_relay(
    setup: tuple[Vendor, Machine, int],  # noqa: F811
) -> None:
    vendor, machine, service = setup
    agent = await machine.start_agent()
    try:
        key, claims = await vendor.issue("M-1", ports=[service])
        assert (await machine.tether("access", "enable", "--key", key)).returncode == 0
        await machine.wait_tunnel("connected")

        async def password_kept() -> bool:
            return await vendor.store.passwords.get(claims.key_id) is not None

        await _wait(password_kept, "the relay keeps the sealed password")
        # The same open grant again, and a reset, are no new uses of the key.
        again = await machine.tether("access", "enable", "--key", key)
        assert again.returncode == 0, again.stderr
        assert (await machine.tether("access", "reset")).returncode == 0
        await machine.wait_tunnel("connected")
        state_file = machine.state_dir / "access.json"
        open_copy = state_file.read_text()

        disabled = await machine.tether("access", "disable")
        assert disabled.returncode == 0, disabled.stderr

        async def spent() -> bool:
            issued = await vendor.store.keys.get(claims.key_id)
            return issued is not None and issued.spent

        await _wait(spent, "the relay marks the closed key spent")

        async def password_forgotten() -> bool:  # the account it opened is gone
            return await vendor.store.passwords.get(claims.key_id) is None

        await _wait(password_forgotten, "the vendor forgets the sealed password")

        # On the machine: refused at once, with why, and nothing changes.
        reused = await machine.tether("access", "enable", "--key", key)
        assert reused.returncode == 2
        assert "this key was already used on this machine" in reused.stderr
        assert "closed (customer)" in reused.stderr
        assert "each key works once: ask the vendor for a new key" in reused.stderr
        assert json.loads(state_file.read_text())["status"] == "closed"
        assert machine.sandbox.run(["id", "tether-support"]).returncode != 0

        # A copy of the machine's state from while it was open: the relay refuses it.
        state_file.write_text(open_copy)
        sock = machine.sandbox.host_path("/run") / "tether" / "agent.sock"
        await asyncio.to_thread(ask_daemon, sock, "reconcile")

        async def closed() -> bool:
            access = (await machine.status())["access"]
            return isinstance(access, dict) and access["status"] == "closed"

        await _wait(closed, "the agent closes the refused copy")
        status = await machine.tether("access", "status")
        assert "each key works once" in status.stdout, status.stdout
    finally:
        await stop(machine, agent)


async def test_a_second_machine_with_a_used_key_waits_for_and_shows_the_refusal(
    setup: tuple[Vendor, Machine, int],  # noqa: F811
    sandbox_factory: Callable[..., Sandbox],
    tmp_path: Path,
) -> None:
    vendor, first, service = setup
    key, _ = await vendor.issue("M-1", ports=[service])
    # Another machine that claims the same serial (a copied disk, a stolen key).
    other = sandbox_factory(hostname="M-1-copy", uplink_ports=[vendor.relay_port])
    other.host_path("/etc/tether").joinpath("agent.toml").write_text(
        (first.sandbox.host_path("/etc/tether") / "agent.toml").read_text()
    )
    second = Machine(other, tmp_path / "second-agent.log")
    first_agent = await first.start_agent()
    try:
        second_agent = await second.start_agent()
    except BaseException:
        await stop(first, first_agent)
        raise
    try:
        assert (await first.tether("access", "enable", "--key", key)).returncode == 0
        await first.wait_tunnel("connected")
        result = await second.tether("access", "enable", "--key", key)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "open until" not in result.stdout
        assert "Waiting for relay" in result.stderr
        assert "the relay refused the key: " in result.stderr
        assert "another machine" in result.stderr
        status = await second.tether("access", "status")
        assert "closed (refused" in status.stdout
        assert "another machine" in status.stdout, status.stdout
        # The first machine keeps its tether.
        assert (await first.wait_tunnel("connected"))["access"]
    finally:
        await stop(second, second_agent)
        await stop(first, first_agent)


async def test_your_own_password_replaces_the_vendors_sealed_copy(
    setup: tuple[Vendor, Machine, int],  # noqa: F811
) -> None:
    vendor, machine, service = setup
    agent = await machine.start_agent()
    try:
        key, claims = await vendor.issue("M-1", ports=[service])
        assert (await machine.tether("access", "enable", "--key", key)).returncode == 0
        await machine.wait_tunnel("connected")

        async def sealed_kept() -> bool:
            return await vendor.store.passwords.get(claims.key_id) is not None

        await _wait(sealed_kept, "the relay keeps the generated password, sealed")
        shadow_before = _shadow_hash(machine)

        again = await machine.tether(
            "access", "enable", "--key", key, "--password-prompt", input=b"my-own-secret-pw\n"
        )
        assert again.returncode == 0, again.stderr
        assert "now has your password" in again.stdout
        assert _shadow_hash(machine) != shadow_before  # the account's password changed

        async def withdrawn() -> bool:
            return await vendor.store.passwords.get(claims.key_id) is None

        await _wait(withdrawn, "the vendor's copy is forgotten")
    finally:
        await stop(machine, agent)


def _shadow_hash(machine: Machine) -> str:
    line = machine.sandbox.run(["getent", "shadow", "tether-support"]).stdout
    return str(line).split(":")[1]


async def test_a_key_closed_while_the_agent_was_down_is_reported_spent_when_it_runs(
    setup: tuple[Vendor, Machine, int],  # noqa: F811
) -> None:
    vendor, machine, service = setup
    key, claims = await vendor.issue("M-1", ports=[service])
    agent = await machine.start_agent()
    try:
        assert (await machine.tether("access", "enable", "--key", key)).returncode == 0
        await machine.wait_tunnel("connected")
    finally:
        await stop(machine, agent)
    state_file = machine.state_dir / "access.json"
    open_copy = state_file.read_text()
    # Closed with no agent running: nothing can tell the relay now.
    assert (await machine.tether("access", "disable")).returncode == 0
    issued = await vendor.store.keys.get(claims.key_id)
    assert issued is not None
    assert not issued.spent
    agent = await machine.start_agent()  # it tells the relay as soon as it runs
    try:

        async def spent() -> bool:
            issued = await vendor.store.keys.get(claims.key_id)
            return issued is not None and issued.spent

        await _wait(spent, "the agent reports the key spent")
        state_file.write_text(open_copy)  # a copy of the state from while it was open
        sock = machine.sandbox.host_path("/run") / "tether" / "agent.sock"
        await asyncio.to_thread(ask_daemon, sock, "reconcile")

        async def closed() -> bool:
            access = (await machine.status())["access"]
            return isinstance(access, dict) and access["status"] == "closed"

        await _wait(closed, "the relay refuses the copy and the agent closes it")
        status = await machine.tether("access", "status")
        assert "each key works once" in status.stdout, status.stdout
        assert json.loads(state_file.read_text()).get("unreported_key") is None
    finally:
        await stop(machine, agent)


@pytest.mark.parametrize("closed_by", ["expiry", "revoke"])
async def test_a_key_whose_access_ended_by_expiry_or_revoke_is_spent_too(
    setup: tuple[Vendor, Machine, int],  # noqa: F811
    closed_by: str,
) -> None:
    """Defect 1's other two ways to close: the grant's own end, the vendor's revoke."""
    vendor, machine, service = setup
    agent = await machine.start_agent()
    try:
        key, claims = await vendor.issue("M-1", ports=[service])
        duration = ["--duration", "3s"] if closed_by == "expiry" else []
        opened = await machine.tether("access", "enable", "--key", key, *duration)
        assert opened.returncode == 0, opened.stderr
        await machine.wait_tunnel("connected")
        if closed_by == "revoke":
            await vendor.authority.revoke_key(claims.key_id, reason="case closed")

        async def closed() -> bool:
            access = (await machine.status())["access"]
            return isinstance(access, dict) and access["status"] == "closed"

        await _wait(closed, f"access closed by {closed_by}", timeout=15)
        reused = await machine.tether("access", "enable", "--key", key)
        assert reused.returncode == 2, reused.stdout + reused.stderr
        assert "this key was already used on this machine" in reused.stderr
        assert "each key works once: ask the vendor for a new key" in reused.stderr
        assert machine.sandbox.run(["id", "tether-support"]).returncode != 0
    finally:
        await stop(machine, agent)
