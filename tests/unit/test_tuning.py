"""Write coalescing and allocator tuning used by the relay and agent data path."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

from tether.tuning import CoalescingTransport, tune_allocator


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
