"""What `tether access …` says to a person: human words first, flags by their name.

Issue 11's machine-side review: structured log lines printed before the message, a
raw ``[Errno 111] Connect call failed`` for an unreachable relay, and ``--from``
errors naming the configuration key instead of the flag.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.integration.agent.test_cli import Machine, setup  # noqa: F401 - the fixture
from tests.integration.harness import Vendor

pytestmark = pytest.mark.sandbox


async def test_unreachable_relay_is_named_with_its_address_not_an_errno(
    setup: tuple[Vendor, Machine, int],  # noqa: F811
) -> None:
    vendor, machine, service = setup
    # Nothing listens on port 1 of the machine's loopback: the connection is refused.
    key, claims = await vendor.authority.issue_key(
        "M-1", lifetime=timedelta(hours=1), ports=(service,), relay="127.0.0.1:1"
    )
    checked = await machine.tether("access", "check", "--key", key)
    assert checked.returncode == 1
    said = checked.stdout + checked.stderr
    assert f"cannot reach the relay at {claims.relay} (connection refused)" in said, said
    assert "Errno" not in said


async def test_a_bad_from_names_the_flag(setup: tuple[Vendor, Machine, int]) -> None:  # noqa: F811
    _, machine, _ = setup
    result = await machine.tether("access", "enable", "--direct", "--from", "10.0.0.0/33")
    assert result.returncode == 2
    assert result.stderr.startswith("error: --from: '10.0.0.0/33' is not an IP address"), (
        result.stderr
    )
    assert "allow_from" not in result.stderr
    assert not (machine.state_dir / "access.json").exists()
