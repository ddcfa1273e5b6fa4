"""`tether web`: its URL, and how a running forwarding ends (certificate end, relay gone)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from tether.clock import FrozenClock
from tether.engineer.state import CertificateExpired
from tether.engineer.web import WebForward, _Client, web_url
from tether.errors import NotReady
from tether.sshlib import asyncssh

NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)


def test_url_is_https_except_for_port_80() -> None:
    assert web_url(8443, 443) == "https://127.0.0.1:8443/"
    assert web_url(8080, 80) == "http://127.0.0.1:8080/"
    assert web_url(5000, 5000) == "https://127.0.0.1:5000/"


class FakeConnection:
    """Just enough of an SSHClientConnection: ``wait_closed`` ends when told to."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()

    async def wait_closed(self) -> None:
        await self.closed.wait()

    def close(self) -> None:
        self.closed.set()


class FakeListener:
    def get_port(self) -> int:
        return 4321

    def close(self) -> None:
        pass


def _forward(conn: FakeConnection, client: _Client) -> WebForward:
    return WebForward(
        cast(asyncssh.SSHClientConnection, conn),
        client,
        cast(asyncssh.SSHListener, cast(Any, FakeListener())),
        "M-1",
        443,
    )


async def test_forwarding_ends_when_the_certificate_does() -> None:
    clock = FrozenClock(NOW)
    forward = _forward(FakeConnection(), _Client())
    assert forward.url == "https://127.0.0.1:4321/"
    with pytest.raises(CertificateExpired, match="your certificate expired at 12:00 UTC") as got:
        await forward.run_until(NOW + timedelta(milliseconds=50), clock, vendor="https://v")
    assert "run `tether login --vendor https://v` again" in str(got.value)


async def test_forwarding_ends_with_the_relays_reason_when_it_drops_us() -> None:
    conn, client = FakeConnection(), _Client()
    forward = _forward(conn, client)

    async def drop() -> None:
        await asyncio.sleep(0.02)
        client.connection_lost(asyncssh.ConnectionLost("engineer alice was disabled"))
        conn.close()

    task = asyncio.get_running_loop().create_task(drop())
    with pytest.raises(
        NotReady, match=r"relay closed the connection \(engineer alice was disabled\)"
    ):
        await forward.run_until(NOW + timedelta(hours=1), FrozenClock(NOW), vendor="https://v")
    await task
