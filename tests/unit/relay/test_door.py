"""The relay's listening sockets (relay/door.py): a deep kernel queue, short accept turns."""

from __future__ import annotations

import asyncio
import socket

from tether.relay.door import ACCEPT_BURST, LISTEN_BACKLOG, listen


class Counting(asyncio.Protocol):
    accepted = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        Counting.accepted += 1
        transport.close()


async def test_a_burst_far_larger_than_one_accept_turn_is_queued_by_the_kernel() -> None:
    """While the relay is busy (its loop not accepting), the kernel completes and queues
    every connection of a burst: none waits for a SYN retry (a second) because asyncio's
    accept turn is short."""
    burst = 300
    assert ACCEPT_BURST < burst < LISTEN_BACKLOG
    Counting.accepted = 0
    server = await listen(Counting, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    clients: list[socket.socket] = []
    try:
        # The event loop is blocked here: only the kernel's backlog takes these.
        for _ in range(burst):
            client = socket.create_connection(("127.0.0.1", port), timeout=0.5)
            clients.append(client)
        for _ in range(200):
            if Counting.accepted == burst:
                break
            await asyncio.sleep(0.01)
        assert Counting.accepted == burst
    finally:
        for client in clients:
            client.close()
        server.close()
        await server.wait_closed()
