"""Telling what a stream carries from its first bytes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Kind:
    """What a stream's first bytes say it carries."""

    SSH = "ssh"
    TLS = "tls"
    HTTP = "http"


def classify(head: bytes) -> str | None:
    """``Kind.SSH``, ``Kind.TLS``, ``Kind.HTTP``; ``None``: need more bytes; ``""``: none."""
    if not head:
        return None
    if head[0] == 0x16:
        return Kind.TLS
    for prefix, kind in ((b"SSH-", Kind.SSH), (b"GET ", Kind.HTTP)):
        probe = head[: len(prefix)]
        if prefix.startswith(probe):
            return kind if len(probe) == len(prefix) else None
    return ""


class Sniff(asyncio.Protocol):
    """Reads a stream's first bytes and hands the transport to what they announce.

    :param choose: called with the kind (``""`` for unknown) and the transport; it
        returns the protocol to run on the stream, or ``None`` if it closed it.
    """

    def __init__(
        self, choose: Callable[[str, asyncio.Transport], asyncio.BaseProtocol | None]
    ) -> None:
        self._choose = choose
        self._transport: asyncio.Transport | None = None
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, asyncio.Transport):
            self._transport = transport

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        self._buffer += data
        kind = classify(self._buffer)
        if kind is None:
            return
        self._transport = None
        protocol = self._choose(kind, transport)
        if protocol is None:
            return
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if isinstance(protocol, asyncio.Protocol):
            protocol.data_received(self._buffer)
        self._buffer = b""

    def eof_received(self) -> bool | None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


__all__ = ["Kind", "Sniff", "classify"]
