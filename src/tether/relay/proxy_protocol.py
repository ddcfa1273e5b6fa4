"""PROXY protocol v2 in front of the relay's SSH port (HAProxy ``send-proxy-v2``).

Behind a TCP load balancer every connection comes from the balancer's address, so
per-source limits, logs and the audit would all name the balancer. With
``proxy_protocol = true`` in relay.toml the relay's port speaks PROXY v2 first: the
balancer sends a binary header naming the real client, then the client's SSH bytes.

:class:`ProxyFront` is the asyncio protocol on the listening socket. It refuses, before
any SSH byte is sent, a connection from an address outside ``trusted_proxies`` (anyone
could otherwise claim any source), one whose header is malformed, not version 2, or
missing, and one that sends no complete header in time. Then it hands the very same
transport to an asyncssh server connection, with the real client address as the
connection's ``peername``. Parsing is the ``proxy-protocol`` library's; this module adds
the checks the library leaves out (lengths, families, size bound) so that every
malformed header is a :class:`ProxyHeaderError` with a reason, never another exception.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from proxyprotocol import ProxyProtocolIncompleteError
from proxyprotocol.result import is_ipv4, is_ipv6, is_local
from proxyprotocol.v2 import ProxyProtocolV2

from tether import log

logger = logging.getLogger("tether.relay")

#: The 12-byte signature every v2 header starts with.
SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_FIXED = 16
#: Largest header accepted: addresses plus room for the TLVs HAProxy may add. A longer
#: one is refused rather than buffered (the length field allows 64 KiB per connection).
MAX_HEADER = 1024
_ADDRESS_LENGTH = {0x1: 12, 0x2: 36}  # AF_INET, AF_INET6 (upper nibble of byte 13)

_V2 = ProxyProtocolV2()

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ProxyHeaderError(Exception):
    """The bytes are not an acceptable PROXY v2 header; the message says why."""


@dataclass(frozen=True)
class ProxyHeader:
    """A parsed header.

    :ivar source: the real client's ``(address, port)``; ``None`` for a LOCAL header
        (the balancer's own connection, e.g. a health check): use the socket's peer.
    :ivar length: bytes the header took; what follows is the client's stream.
    """

    source: tuple[str, int] | None
    length: int


def parse_header(data: bytes) -> ProxyHeader | None:
    """Parse a PROXY v2 header at the start of ``data``.

    :returns: the header, or ``None`` if ``data`` is a valid beginning that is not
        complete yet (read more).
    :raises ProxyHeaderError: the bytes cannot become a valid v2 header: a wrong
        signature (including a v1 text header or a client's plain ``SSH-2.0-``), a
        version other than 2, an unknown command, a PROXY command for anything but TCP
        over IPv4 or IPv6, an address block shorter than its family needs, or a header
        longer than :data:`MAX_HEADER`.
    """
    probe = data[: len(SIGNATURE)]
    if SIGNATURE[: len(probe)] != probe:
        if data.startswith(b"PROXY "):
            raise ProxyHeaderError("a PROXY v1 (text) header; only v2 is accepted")
        raise ProxyHeaderError("no PROXY v2 signature")
    if len(data) < _FIXED:
        return None
    version, command = data[12] >> 4, data[12] & 0x0F
    family, transport = data[13] >> 4, data[13] & 0x0F
    (length,) = struct.unpack_from("!H", data, 14)
    if version != 2:
        raise ProxyHeaderError(f"PROXY protocol version {version}; only 2 is accepted")
    if command not in (0x0, 0x1):
        raise ProxyHeaderError(f"unknown PROXY v2 command {command:#x}")
    if _FIXED + length > MAX_HEADER:
        raise ProxyHeaderError(f"PROXY v2 header of {_FIXED + length} bytes (at most {MAX_HEADER})")
    if command == 0x1:
        if family not in _ADDRESS_LENGTH or transport != 0x1:
            raise ProxyHeaderError("PROXY v2 header for something other than TCP over IPv4/IPv6")
        if length < _ADDRESS_LENGTH[family]:
            raise ProxyHeaderError("PROXY v2 address block shorter than its family needs")
    if len(data) < _FIXED + length:
        return None
    if command == 0x1:  # a LOCAL header's body is to be skipped, whatever it holds
        _check_tlvs(data[_FIXED + _ADDRESS_LENGTH[family] : _FIXED + length])
    try:
        result = _V2.unpack(data[: _FIXED + length])
    except (ProxyProtocolIncompleteError, ValueError, struct.error, IndexError) as exc:
        # A bad CRC32C TLV, or what the checks above missed: refused, never raised on.
        raise ProxyHeaderError(f"malformed PROXY v2 header: {exc}") from None
    if is_local(result):
        return ProxyHeader(None, _FIXED + length)
    if is_ipv4(result) or is_ipv6(result):
        address, port = result.source
        return ProxyHeader((str(address), int(port)), _FIXED + length)
    raise ProxyHeaderError("PROXY v2 header without a client address")  # pragma: no cover


def _check_tlvs(block: bytes) -> None:
    """Each TLV (type, 16-bit length, value) must end inside the header."""
    at = 0
    while at < len(block):
        if at + 3 > len(block):
            raise ProxyHeaderError("malformed PROXY v2 header: a TLV is cut short")
        (size,) = struct.unpack_from("!H", block, at + 1)
        at += 3 + size
        if at > len(block):
            raise ProxyHeaderError("malformed PROXY v2 header: a TLV overruns the header")


def parse_networks(texts: Sequence[str]) -> tuple[Network, ...]:
    """``trusted_proxies`` entries as networks (``ValueError`` names a bad one)."""
    return tuple(ipaddress.ip_network(t, strict=False) for t in texts)


def is_trusted(address: str, networks: Sequence[Network]) -> bool:
    """Whether ``address`` (IPv4-mapped IPv6 included) lies in one of ``networks``."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in networks)


class ProxyFront(asyncio.Protocol):
    """Reads one PROXY v2 header, then hands the connection to ``hand_off``.

    :param trusted: the networks a header is accepted from.
    :param hand_off: called with the transport, the real ``(address, port)`` and the
        bytes that followed the header; it must install the SSH protocol on the transport.
    :param timeout: seconds a connection may take to send its whole header.
    """

    def __init__(
        self,
        trusted: Sequence[Network],
        hand_off: Callable[[asyncio.Transport, tuple[str, int], bytes, float], None],
        timeout: float,
    ) -> None:
        self._trusted = trusted
        self._hand_off = hand_off
        self._timeout = timeout
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._peer: tuple[str, int] = ("?", 0)
        self._timer: asyncio.TimerHandle | None = None
        self._accepted = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not isinstance(transport, asyncio.Transport):  # pragma: no cover
            transport.close()
            return
        self._transport = transport
        self._accepted = time.monotonic()
        peer = transport.get_extra_info("peername") or ("?", 0)
        self._peer = (str(peer[0]), int(peer[1]))
        if not is_trusted(self._peer[0], self._trusted):
            self._refuse("untrusted-proxy", "connection from an address not in trusted_proxies")
            return
        self._timer = asyncio.get_running_loop().call_later(
            self._timeout, self._refuse, "proxy-timeout", "no complete PROXY v2 header in time"
        )

    def data_received(self, data: bytes) -> None:
        if self._transport is None:
            return
        self._buffer += data
        try:
            header = parse_header(self._buffer)
        except ProxyHeaderError as exc:
            self._refuse("proxy-header", str(exc))
            return
        if header is None:
            return
        self._cancel_timer()
        transport, self._transport = self._transport, None
        rest = self._buffer[header.length :]
        self._buffer = b""
        self._hand_off(transport, header.source or self._peer, rest, self._accepted)

    def eof_received(self) -> bool | None:
        self._refuse("proxy-header", "connection closed before a complete PROXY v2 header")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._transport = None

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _refuse(self, reason: str, detail: str) -> None:
        self._cancel_timer()
        if self._transport is None:
            return
        log.event(
            logger,
            "relay.proxy_refused",
            level=logging.WARNING,
            peer=f"{self._peer[0]}:{self._peer[1]}",
            reason=reason,
            detail=detail,
        )
        # An abort, not a close: a refused connection gets nothing, not even a FIN
        # after buffered data, and its socket is freed at once.
        self._transport.abort()
        self._transport = None


__all__ = [
    "MAX_HEADER",
    "SIGNATURE",
    "ProxyFront",
    "ProxyHeader",
    "ProxyHeaderError",
    "is_trusted",
    "parse_header",
    "parse_networks",
]
