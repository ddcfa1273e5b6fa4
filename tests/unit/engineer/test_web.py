"""`tether web`: its URL, and how a running forwarding ends (certificate end, relay gone)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from tether.clock import FrozenClock
from tether.engineer.state import CertificateExpired
from tether.engineer.web import WebForward, _Client, client_hello, speaks_tls, web_url
from tether.errors import NotReady
from tether.sshlib import asyncssh

NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)


def test_url_names_the_scheme_the_port_speaks() -> None:
    assert web_url(8443, "https") == "https://127.0.0.1:8443/"
    assert web_url(8080, "http") == "http://127.0.0.1:8080/"


def test_the_probe_is_a_client_hello_and_only_tls_records_count_as_tls() -> None:
    hello = client_hello()
    assert hello[:2] == b"\x16\x03"  # a TLS handshake record
    assert speaks_tls(b"\x16\x03\x03\x00\x7a")  # ServerHello
    assert speaks_tls(b"\x15\x03\x01\x00\x02")  # an alert: TLS, though unhappy
    for other in (b"HTTP/1.1 400 Bad Request", b"SSH-2.0-OpenSSH_9.2", b"", b"\x16"):
        assert not speaks_tls(other)


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
        "https",
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
