"""Process-wide tuning for the parts that carry bulk data (relay and agent).

An SSH packet on the tether is up to :data:`tether.wire.CHANNEL_MAX_PACKET` bytes, and
asyncssh builds each one from several fresh ``bytes`` objects. glibc's malloc serves
blocks above its mmap threshold (128 KiB at first) with a fresh ``mmap`` and returns
them with ``munmap``: every packet then costs page faults and zeroed pages, which made
the relay and agent spend most of their time in the kernel (measured in bench/README.md).
Raising the threshold keeps those buffers in the heap, where they are reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import logging
import socket
import sys
from collections.abc import Callable, Iterable
from typing import Any

from tether import log
from tether.sshlib import asyncssh
from tether.wire import TRANSPORT_CIPHERS

logger = logging.getLogger("tether.tuning")

#: mallopt() parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Blocks up to this size come from the heap (reused), not from mmap.
MMAP_THRESHOLD = 4 * 1024 * 1024
#: Free memory at the heap's top kept for reuse rather than returned at once.
TRIM_THRESHOLD = 16 * 1024 * 1024


def tune_allocator() -> bool:
    """Keep per-packet buffers in malloc's heap; return whether it could be done.

    A no-op (returning ``False``) where the C library is not glibc.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    if not done:
        log.event(logger, "tuning.malloc_refused")
    return done


class CoalescingTransport(asyncio.Transport):
    """Gathers the writes of one event-loop pass into one write of the real transport.

    asyncssh writes every SSH packet separately, and sends an ``SSH_MSG_IGNORE`` before
    each data packet: a relay forwarding one 192 KiB tether packet as six 32 KiB packets
    to a stock client would make twelve ``send()`` calls. Writes made while handling one
    read are joined and handed over once, at the end of the loop pass. Order is kept,
    and :meth:`close`, :meth:`abort` and :meth:`write_eof` first hand over what is pending
    (so a disconnect message still leaves before the socket is closed).
    """

    def __init__(self, inner: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._inner = inner
        self._loop = loop
        self._pending: list[bytes] = []
        self._scheduled = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self._pending.append(bytes(data))
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in list_of_data:
            self.write(data)

    def _flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        if self._inner.is_closing():
            return
        self._inner.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self._flush()
        self._inner.close()

    def abort(self) -> None:
        self._flush()
        self._inner.abort()

    def can_write_eof(self) -> bool:
        return self._inner.can_write_eof()

    def write_eof(self) -> None:
        self._flush()
        self._inner.write_eof()

    def get_write_buffer_size(self) -> int:
        return self._inner.get_write_buffer_size() + sum(len(d) for d in self._pending)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._inner.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._inner.set_write_buffer_limits(high, low)

    def is_closing(self) -> bool:
        return self._inner.is_closing()

    def is_reading(self) -> bool:
        return self._inner.is_reading()

    def pause_reading(self) -> None:
        self._inner.pause_reading()

    def resume_reading(self) -> None:
        self._inner.resume_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._inner.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._inner.get_protocol()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._inner.get_extra_info(name, default)


#: Allocations between two young-generation collections (Python's default: 700).
GC_YOUNG_THRESHOLD = 10_000


def freeze_startup_heap() -> int:
    """Take every object alive now out of the garbage collector's full collections, and
    collect the young generation less often.

    A long-running server's heap is mostly what it built at start (modules, the
    store's metadata, asyncssh's tables); each full collection walks all of it again.
    Under a pre-auth flood, whose connections leave cyclic garbage, the relay ran five
    full collections a minute of about 0.8 s each on a loaded 2-core machine, every
    client waiting for each (bench/README.md); frozen, twelve a minute of 0.15 s. Every
    young collection promotes the connections it finds alive towards the next full one:
    with a larger young threshold fewer are (the cycles a closed connection leaves are
    freed as surely, a few thousand allocations later). Frozen objects are never
    collected; call this once, after start-up. Returns how many objects were frozen.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)
    return gc.get_freeze_count()


#: How long a thread may hold the GIL while another waits for it (Python's default: 5 ms).
GIL_SWITCH_INTERVAL = 0.0005


def prompt_thread_handoffs() -> None:
    """Let a thread that waits for the GIL have it within half a millisecond, not five.

    The embedded store's writes run in a thread of their own (SQLite,
    :meth:`tether.store.db.Database.write_at_once`), which gives up the GIL at each
    call into SQLite and needs it back to go on. While the event loop is busy (a
    pre-auth flood keeps it so) each such return waited up to the default 5 ms, a dozen
    times per tether admission. A shorter interval costs nothing while one thread runs.
    """
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)


def coalesce_writes(conn: asyncssh.SSHClientConnection | asyncssh.SSHServerConnection) -> None:
    """Make ``conn`` send through a :class:`CoalescingTransport`.

    Call from an ``SSHClient``/``SSHServer`` ``connection_made`` (before any packet is
    sent). asyncssh keeps its transport in a private attribute; if a future version
    renames it, this does nothing rather than break the connection.
    """
    inner = getattr(conn, "_transport", None)
    if isinstance(inner, asyncio.Transport) and not isinstance(inner, CoalescingTransport):
        conn._transport = CoalescingTransport(inner, asyncio.get_running_loop())


def quick_acks(conn: asyncssh.SSHClientConnection | asyncssh.SSHServerConnection) -> None:
    """Acknowledge each segment the peer sends at once (``TCP_QUICKACK``).

    A stock OpenSSH client writes some handshake messages as separate small segments
    with Nagle's algorithm on: each waits for the ACK of the one before, and Linux
    delays that ACK by 40 ms when it has no reply to piggyback it on. Twice per login
    that made ``ssh -J relay machine`` 80 ms slower than it needs to be. Setting
    ``TCP_QUICKACK`` after a read sends the pending ACK now (the kernel turns quick ACKs
    off again by itself, hence after every read: one cheap syscall per read).
    """
    sock = conn.get_extra_info("socket")
    quickack = getattr(socket, "TCP_QUICKACK", None)
    if sock is None or quickack is None:
        return
    received = conn.data_received

    def data_received(data: bytes) -> None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)
        received(data)

    # An instance attribute shadows the method asyncio calls for this connection.
    setattr(conn, "data_received", data_received)  # noqa: B010


#: Ciphers whose every packet has a fresh nonce and its own tag (AEAD): RFC 4251's
#: SSH_MSG_IGNORE countermeasure for CBC mode protects nothing with them.
AEAD_CIPHERS = frozenset(
    {"aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com"}
)
#: SSH_MSG_IGNORE (RFC 4253) and the empty string asyncssh sends in it.
_MSG_IGNORE = 2
_EMPTY_IGNORE = (b"\x00\x00\x00\x00",)


def skip_ignore_packets(
    conn: asyncssh.SSHClientConnection | asyncssh.SSHServerConnection,
    ciphers: Iterable[str] = TRANSPORT_CIPHERS,
) -> bool:
    """Stop ``conn`` sending an empty ``SSH_MSG_IGNORE`` before each packet; return
    whether it was done.

    Once keys are in use, asyncssh sends an empty ``SSH_MSG_IGNORE`` ahead of every
    packet: RFC 4251 section 9.3.1's countermeasure against the predictable IVs of CBC
    mode. ``ciphers`` are the only ones ``conn`` may negotiate (Tether's connections
    allow :data:`tether.wire.TRANSPORT_CIPHERS`, AES-GCM); when all are AEAD ciphers,
    whose nonce is fresh per packet, the extra packet protects nothing, yet costs a
    second encryption and packet build per data packet (measured in bench/README.md).
    With any other cipher allowed this does nothing. OpenSSH sends no such packets.

    Call from ``connection_made``. Only asyncssh's own empty ignore packet is dropped;
    every other packet leaves unchanged and in order.
    """
    if not set(ciphers) <= AEAD_CIPHERS:
        return False
    send: Callable[..., None] = conn.send_packet

    def send_packet(pkttype: int, *args: bytes, handler: Any = None) -> None:
        if pkttype == _MSG_IGNORE and args == _EMPTY_IGNORE:
            return
        send(pkttype, *args, handler=handler)

    # asyncssh sends the ignore packet by calling self.send_packet, which finds this
    # instance attribute first.
    setattr(conn, "send_packet", send_packet)  # noqa: B010
    return True


def lazy_packet_logs() -> None:
    """Format asyncssh's per-packet debug lines only when they will be logged.

    asyncssh names every packet it sends or receives and counts its bytes for a debug
    line, then drops the line unless its debug level is 3 (``asyncssh.set_debug_level``,
    which Tether never raises): several per cent of a relay's CPU in a bulk transfer.
    After this, that work is done only at level 3, where the lines are still logged.
    Process-wide and idempotent.
    """
    from asyncssh.logging import SSHLogger
    from asyncssh.packet import SSHPacketLogger

    for name in ("log_sent_packet", "log_received_packet"):
        original = getattr(SSHPacketLogger, name)
        if getattr(original, "_tether_lazy", False):
            continue

        def logged(
            self: SSHPacketLogger,
            pkttype: int,
            pktid: int | None,
            packet: Any,
            note: str = "",
            _original: Callable[..., None] = original,
        ) -> None:
            # A class attribute asyncssh.set_debug_level sets; missing, log as before.
            if getattr(SSHLogger, "_debug_level", 3) >= 3:
                _original(self, pkttype, pktid, packet, note)

        logged._tether_lazy = True  # type: ignore[attr-defined]
        setattr(SSHPacketLogger, name, logged)
