"""Pure words the customer reads (issue 11): connection failures, who closes access."""

from __future__ import annotations

import errno
import socket
from datetime import UTC, date, datetime, timedelta

from tether.agent.layers import layers, summary
from tether.agent.reach import cannot_reach, connect_failure
from tether.agent.state import AccessMode, AccessState, AccessStatus
from tether.agent.status import describe_access, describe_agent, describe_closer

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def test_a_refused_connection_is_said_in_words_with_the_relays_address() -> None:
    plain = ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed ('10.0.0.1', 2222)")
    # asyncio's message after trying several addresses keeps only "[Errno N]" in text.
    multi = OSError("Multiple exceptions: [Errno 111] Connect call failed ('::1', 2222, 0, 0)")
    for exc in (plain, multi):
        said = cannot_reach("relay.example:2222", exc)
        assert said == "cannot reach the relay at relay.example:2222 (connection refused)"
    assert connect_failure(TimeoutError()) == "timed out"
    assert connect_failure(OSError(errno.EHOSTUNREACH, "x")) == "no route to host"
    assert connect_failure(socket.gaierror(-2, "Name or service not known")).startswith(
        "name not found"
    )


def _open(expires: datetime, mode: AccessMode = AccessMode.DIRECT) -> AccessState:
    return AccessState(status=AccessStatus.OPEN, mode=mode, expires_at=expires)


def test_past_expiry_names_who_closes_it_or_that_nothing_does() -> None:
    past = _open(NOW - timedelta(seconds=5))
    nobody = describe_access(past, "S-1", NOW, describe_closer(False, None))
    assert "NOTHING closes it" in nobody
    assert "at once" not in nobody
    cron = describe_access(past, "S-1", NOW, describe_closer(False, "cron"))
    assert cron.endswith("the expiry timer (cron) closes it within a minute")
    agent = describe_access(past, "S-1", NOW, describe_closer(True, None))
    assert agent.endswith("the agent closes it at once")
    assert describe_agent(False, None).startswith("NOT running, and no expiry timer")
    assert describe_agent(True, None).startswith("running")


def test_layers_say_which_are_armed_and_the_account_dates_precision() -> None:
    state = _open(NOW + timedelta(hours=2), AccessMode.TETHER)
    found = layers(state, daemon_running=False, timer="cron", account_expires=date(2026, 12, 7))
    armed = {layer.name: layer.armed for layer in found}
    assert armed == {
        "agent timer": False,
        "expiry timer": True,
        "account expiry date": True,
        "engineer certificate": True,
        "relay key expiry": True,
    }
    line = summary(found)
    assert line.startswith("armed: expiry timer, account expiry date")
    assert "not armed: agent timer (the agent is not running)" in line
    assert "whole days" in line
