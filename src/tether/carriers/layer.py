"""One layer under SSH: a sans-IO :class:`Codec` driven by a :class:`CodecLayer`.

The layer is the asyncio protocol of the outer transport and, at once, the asyncio
transport of the inner protocol (asyncssh's connection, or the next layer).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from typing import Any, Protocol


class LayerError(Exception):
    """A layer's peer broke its protocol (bad TLS, a refused upgrade...); says what."""


class Codec(Protocol):
    """A sans-IO layer: bytes from the peer in, bytes to the peer and to the inner out."""

    #: The handshake is done: inner data may flow.
    ready: bool
    #: The peer closed the layer (TLS close_notify, WebSocket close).
    closed: bool

    def start(self) -> bytes:
        """Bytes to send first (a client's hello); ``b""`` for a server."""

    def receive(self, data: bytes) -> tuple[bytes, bytes]:
        """Take bytes from the peer; return ``(to_peer, to_inner)``. Raises LayerError."""

    def send(self, data: bytes) -> bytes:
        """Wrap the inner protocol's ``data`` for the peer."""

    def closing(self) -> bytes:
        """Bytes that close the layer politely (may be ``b""``)."""

    def extra(self) -> dict[str, Any]:
        """What this layer tells about itself (``get_extra_info``)."""


class CodecLayer(asyncio.Transport, asyncio.Protocol):
    """Runs ``codec`` on an outer transport and offers the inner stream as a transport.

    :param codec: the layer's protocol.
    :param inner: the protocol that reads the inner stream; its ``connection_made`` is
        called once the codec's handshake is done.
    :param failed: called (once) with the error when the layer breaks before or after
        the handshake, e.g. to log it or to fail a connect.
    """

    def __init__(
        self,
        codec: Codec,
        inner: asyncio.BaseProtocol,
        failed: Callable[[LayerError], None] | None = None,
    ) -> None:
        super().__init__()
        self._codec = codec
        self._inner: asyncio.BaseProtocol = inner
        self._failed = failed
        self._outer: asyncio.Transport | None = None
        self._made = False
        self._closing = False

    # --- protocol of the outer transport ------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not isinstance(transport, asyncio.Transport):  # pragma: no cover
            transport.close()
            return
        self._outer = transport
        hello = self._codec.start()
        if hello:
            transport.write(hello)

    def data_received(self, data: bytes) -> None:
        if self._outer is None:
            return
        try:
            to_peer, to_inner = self._codec.receive(data)
        except LayerError as exc:
            self._break(exc)
            return
        if to_peer and not self._outer.is_closing():
            self._outer.write(to_peer)
        if self._codec.ready and not self._made:
            self._made = True
            self._inner.connection_made(self)
        if to_inner and isinstance(self._inner, asyncio.Protocol):
            self._inner.data_received(to_inner)
        if self._codec.closed:
            self._eof()

    def eof_received(self) -> bool | None:
        self._eof()
        return None

    def _eof(self) -> None:
        if not self._made:
            self._report(LayerError("the connection closed during the handshake"))
        elif isinstance(self._inner, asyncio.Protocol):
            keep = self._inner.eof_received()
            if keep:
                return
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._outer = None
        if self._made:
            self._made = False
            self._inner.connection_lost(exc)
        else:
            self._report(LayerError("the connection closed during the handshake"))

    def pause_writing(self) -> None:
        if self._made:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._made:
            self._inner.resume_writing()

    def _report(self, exc: LayerError) -> None:
        failed, self._failed = self._failed, None
        if failed is not None:
            failed(exc)

    def _break(self, exc: LayerError) -> None:
        self._report(exc)
        self.abort()

    # --- transport of the inner protocol ----------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._outer is None or self._closing:
            return
        try:
            wrapped = self._codec.send(bytes(data))
        except (ssl.SSLError, LayerError) as exc:
            self._break(LayerError(f"cannot send: {exc}"))
            return
        if wrapped:
            self._outer.write(wrapped)

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("a layered stream closes as a whole")

    def is_closing(self) -> bool:
        return self._closing or self._outer is None or self._outer.is_closing()

    def close(self) -> None:
        if self._closing or self._outer is None:
            return
        self._closing = True
        if self._codec.ready:
            with contextlib.suppress(LayerError, ssl.SSLError, OSError):
                goodbye = self._codec.closing()
                if goodbye:
                    self._outer.write(goodbye)
        self._outer.close()

    def abort(self) -> None:
        self._closing = True
        if self._outer is not None:
            self._outer.abort()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        mine = self._codec.extra()
        if name in mine:
            return mine[name]
        if self._outer is None:
            return default
        return self._outer.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._inner = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._inner

    def pause_reading(self) -> None:
        if self._outer is not None:
            self._outer.pause_reading()

    def resume_reading(self) -> None:
        if self._outer is not None:
            self._outer.resume_reading()

    def is_reading(self) -> bool:
        return self._outer is not None and self._outer.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self._outer is not None:
            self._outer.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return 0 if self._outer is None else self._outer.get_write_buffer_size()


__all__ = ["Codec", "CodecLayer", "LayerError"]
