"""Who closes access on time, as the customer is told (issue 11, machine side).

`tether agent install` must not install a timer that cannot run; `status` must not
promise a close that nothing will do; `check` and `status` list the layers armed.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta

import pytest

from tests.integration.agent.test_cli import Machine, setup  # noqa: F401 - the fixture
from tests.integration.harness import Vendor

pytestmark = pytest.mark.sandbox

INSTALL = ("agent", "install")


def _hide_cron(machine: Machine) -> None:
    """Make this machine one without a cron daemon (inside its own mount namespace)."""
    for daemon in ("/usr/sbin/cron", "/usr/sbin/crond", "/usr/bin/crond"):
        machine.sandbox.run(["sh", "-c", f"[ -e {daemon} ] && mount --bind /dev/null {daemon}"])
    probe = machine.sandbox.run(["sh", "-c", "test -x /usr/sbin/cron"])
    assert probe.returncode != 0


async def test_install_refuses_a_timer_that_cannot_run(
    setup: tuple[Vendor, Machine, int],  # noqa: F811
) -> None:
    _, machine, _ = setup
    _hide_cron(machine)
    result = await machine.tether(*INSTALL)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "neither systemd nor a cron daemon runs on this machine" in result.stderr
    assert "install cron" in result.stderr
    assert "Installed" not in result.stdout
    assert not machine.sandbox.host_path("/etc").joinpath("cron.d", "tether").exists()


async def test_status_never_promises_a_close_that_nothing_does(
    setup: tuple[Vendor, Machine, int],  # noqa: F811
) -> None:
    _, machine, _ = setup
    _hide_cron(machine)
    enabled = await machine.tether("access", "enable", "--direct", "--duration", "1s")
    assert enabled.returncode == 0, enabled.stderr
    assert "Agent:    NOT running, and no expiry timer is installed" in enabled.stdout
    status = await machine.tether("access", "status")
    assert "Agent:    NOT running, and no expiry timer is installed" in status.stdout
    await asyncio.sleep(1.2)  # past its expiry, and no agent, no timer
    status = await machine.tether("access", "status")
    assert "past its expiry" in status.stdout
    assert "closes it at once" not in status.stdout
    assert "NOTHING closes it" in status.stdout
    body = json.loads((await machine.tether("access", "status", "--json")).stdout)
    assert body["daemon_running"] is False
    assert (await machine.tether("access", "disable")).returncode == 0


async def test_status_and_check_list_the_layers_armed_and_the_account_dates_precision(
    setup: tuple[Vendor, Machine, int],  # noqa: F811
) -> None:
    _, machine, _ = setup
    enabled = await machine.tether("access", "enable", "--direct", "--duration", "2h")
    assert enabled.returncode == 0, enabled.stderr
    try:
        body = json.loads((await machine.tether("access", "status", "--json")).stdout)
        armed = {layer["name"]: layer["armed"] for layer in body["layers"]}
        assert armed["agent timer"] is False  # no agent runs here
        assert armed["account expiry date"] is True
        assert armed["engineer certificate"] is True
        expires = body["access"]["expires_at"]
        account = next(x for x in body["layers"] if x["name"] == "account expiry date")
        # Day precision, and said so: the day after access ends, from 00:00 UTC.
        day_after = (datetime.fromisoformat(expires).date() + timedelta(days=1)).isoformat()
        assert account["detail"].startswith(
            f"{day_after}: the OS keeps account expiry in whole days"
        )
        human = await machine.tether("access", "status")
        assert "Closes on time by:" in human.stdout
        assert "armed     account expiry date: " in human.stdout
        assert "NOT armed agent timer: the agent is not running" in human.stdout
        checked = await machine.tether("access", "check")
        assert "closing layers: armed: account expiry date, engineer certificate" in checked.stdout
        assert "whole days" in checked.stdout
    finally:
        assert (await machine.tether("access", "disable")).returncode == 0
