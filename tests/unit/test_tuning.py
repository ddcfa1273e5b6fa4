"""Write coalescing and allocator tuning used by the relay and agent data path."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import pytest

from tether.sshlib import asyncssh
from tether.tuning import (
    CoalescingTransport,
    lazy_packet_logs,
    skip_ignore_packets,
    tune_allocator,
)
from tether.wire import TRANSPORT_CIPHERS


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, Any]] = []
        self.closing = False

    def write(self, data: Any) -> None:
        self.calls.append(("write", bytes(data)))

    def close(self) -> None:
        self.calls.append(("close", None))
        self.closing = True

    def abort(self) -> None:
        self.calls.append(("abort", None))
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0


async def test_writes_of_one_loop_pass_leave_as_one_write_in_order() -> None:
    inner = RecordingTransport()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())
    transport.write(b"ignore")
    transport.write(b"")
    transport.writelines([b"-data1", bytearray(b"-data2")])
    assert inner.calls == []
    assert transport.get_write_buffer_size() == len(b"ignore-data1-data2")
    await asyncio.sleep(0)
    assert inner.calls == [("write", b"ignore-data1-data2")]
    transport.write(b"next")
    await asyncio.sleep(0)
    assert inner.calls[-1] == ("write", b"next")


@pytest.mark.parametrize("ending", ["close", "abort"])
async def test_close_and_abort_send_what_is_pending_first(ending: str) -> None:
    inner = RecordingTransport()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())
    transport.write(b"disconnect: bye")
    getattr(transport, ending)()
    assert inner.calls == [("write", b"disconnect: bye"), (ending, None)]
    transport.write(b"too late")
    await asyncio.sleep(0)
    assert inner.calls[-1] == (ending, None), "nothing is written to a closing transport"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_allocator_tuning_applies_on_glibc() -> None:
    assert tune_allocator() is True


class FakeConnection:
    def __init__(self, sock: object) -> None:
        self.sock = sock
        self.received: list[bytes] = []

    def get_extra_info(self, name: str) -> object:
        return self.sock if name == "socket" else None

    def data_received(self, data: bytes) -> None:
        self.received.append(data)


@pytest.mark.skipif(not hasattr(__import__("socket"), "TCP_QUICKACK"), reason="Linux only")
def test_quick_acks_arm_tcp_quickack_before_each_read_is_handled() -> None:
    import socket

    from tether.tuning import quick_acks

    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    try:
        conn = FakeConnection(accepted)
        quick_acks(conn)  # type: ignore[arg-type]
        accepted.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)
        conn.data_received(b"kexinit")
        assert conn.received == [b"kexinit"]
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) == 1
    finally:
        for s in (client, accepted, server):
            s.close()


class _Client(asyncssh.SSHClient):
    """Its connection is tuned when ``tuned``."""

    def __init__(self, tuned: bool) -> None:
        self.tuned = tuned

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        if self.tuned:
            assert skip_ignore_packets(conn) is True


class _Server(asyncssh.SSHServer):
    """Lets anyone in; its connections are tuned when ``tuned``."""

    def __init__(self, tuned: bool) -> None:
        self.tuned = tuned

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        if self.tuned:
            assert skip_ignore_packets(conn) is True

    def begin_auth(self, username: str) -> bool:
        return False


async def _bulk_reply(tuned: bool, caplog: pytest.LogCaptureFixture) -> tuple[str, list[str]]:
    """100 KB from a server process over a loopback SSH connection (AES-GCM, as Tether's),
    both ends tuned or neither; the output and the packets either end logged receiving."""

    def process(proc: asyncssh.SSHServerProcess[str]) -> None:
        proc.stdout.write("x" * 100_000)
        proc.exit(0)

    host_key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.create_server(
        lambda: _Server(tuned),
        "127.0.0.1",
        0,
        server_host_keys=[host_key],
        encryption_algs=list(TRANSPORT_CIPHERS),
        process_factory=process,
    )
    port = server.sockets[0].getsockname()[1]
    lazy_packet_logs()
    asyncssh.set_debug_level(3)
    caplog.set_level(logging.DEBUG, logger="asyncssh")
    try:
        async with asyncssh.connect(
            "127.0.0.1",
            port,
            username="anyone",
            known_hosts=None,
            config=None,
            agent_path=None,
            encryption_algs=list(TRANSPORT_CIPHERS),
            client_factory=lambda: _Client(tuned),
        ) as conn:
            result = await conn.run("bulk", check=True)
    finally:
        asyncssh.set_debug_level(1)
        server.close()
        await server.wait_closed()
    # Lines read "[conn=N, pktid=M] Received MSG_NAME (type), N bytes".
    received = [
        r.getMessage().partition("] ")[2]
        for r in caplog.records
        if "] Received MSG_" in r.getMessage()
    ]
    return str(result.stdout), received


async def test_tuned_side_sends_no_ignore_packet_before_each_data_packet(
    caplog: pytest.LogCaptureFixture,
) -> None:
    output, received = await _bulk_reply(True, caplog)
    assert output == "x" * 100_000
    assert any(line.startswith("Received MSG_CHANNEL_DATA") for line in received)
    # Packet debug lines are still written at asyncssh's debug level 3 (lazy_packet_logs).
    assert not [line for line in received if line.startswith("Received MSG_IGNORE")]


async def test_untuned_asyncssh_sends_an_ignore_packet_before_each_packet(
    caplog: pytest.LogCaptureFixture,
) -> None:
    output, received = await _bulk_reply(False, caplog)
    assert output == "x" * 100_000
    assert [line for line in received if line.startswith("Received MSG_IGNORE")]


def test_ignore_packets_stay_when_a_non_aead_cipher_is_allowed() -> None:
    conn = FakeConnection(None)
    assert skip_ignore_packets(conn, ["aes128-ctr"]) is False  # type: ignore[arg-type]
    assert "send_packet" not in vars(conn)
