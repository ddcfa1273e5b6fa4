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
from tether.audit_log import AuditLog

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


async def test_disable_with_a_broken_unrelated_sshd_config_says_what_it_could_not_do(
    setup: tuple[Vendor, Machine, int],  # noqa: F811
) -> None:
    _, machine, _ = setup
    enabled = await machine.tether("access", "enable", "--direct", "--duration", "1h")
    assert enabled.returncode == 0, enabled.stderr
    ca_file = machine.sandbox.host_path("/etc/ssh") / "tether" / "vendor_ca.pub"
    assert ca_file.exists()
    # The customer breaks sshd's configuration in a file of their own meanwhile.
    broken = machine.sandbox.host_path("/etc/ssh") / "sshd_config.d" / "zz-customer.conf"
    broken.write_text("ThisIsNoSshdKeyword yes\n")
    disabled = await machine.tether("access", "disable")
    assert disabled.returncode == 0, disabled.stderr
    assert disabled.stdout.strip() == "Support access closed."
    # Said plainly, and first: no structured log line before it.
    assert disabled.stderr.startswith(
        "warning: sshd was NOT reloaded: its own configuration is broken"
    )
    assert "ThisIsNoSshdKeyword" in disabled.stderr
    assert "sshd trusts the vendor's certificates no more" in disabled.stderr
    assert "machine.close" not in disabled.stderr
    # Trust ended in the running sshd (it reads the CA file at every login), and sshd
    # itself still runs: nobody is locked out.
    assert not ca_file.exists()
    assert machine.sandbox.run(["pgrep", "-x", "sshd"]).returncode == 0
    status = await machine.tether("access", "status")
    assert "Note:     sshd was NOT reloaded" in status.stdout
    closed = [
        e for e in AuditLog(machine.state_dir / "audit.log").entries() if e.event == "access.closed"
    ]
    assert closed[-1].fields["sshd_reloaded"] is False
    could_not = closed[-1].fields["could_not"]
    assert isinstance(could_not, list | tuple)
    assert "sshd was NOT reloaded" in str(could_not[0])
