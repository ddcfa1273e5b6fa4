"""Byte-stream layers under SSH: TLS and WebSocket, on the relay and on the agent.

The tether's SSH runs unchanged over raw TCP, over TLS, or over a WebSocket (inside TLS
or not): the pinned relay host key is the trust, TLS and WebSocket only carry bytes so
that the tether passes networks that allow only HTTPS. Each layer is a sans-IO *codec*
(:class:`TlsCodec` on :class:`ssl.SSLObject` with memory BIOs, :class:`WebSocketCodec`
on ``wsproto`` for the upgrade and :class:`Frames` for the data) driven by one
:class:`CodecLayer`: the asyncio protocol of the outer transport and, at once, the
asyncio transport of the inner protocol (asyncssh's connection, or the next layer).
Layers stack: SSH over WebSocket over TLS over TCP. One module each: ``layer``,
``tls``, ``websocket``, ``sniff``.

:class:`Sniff` looks at a stream's first bytes and picks what runs on it: ``SSH-`` is
SSH, a TLS record (``0x16``) is TLS, ``GET`` is an HTTP request for a WebSocket upgrade.
"""

from tether.carriers.layer import Codec, CodecLayer, LayerError
from tether.carriers.sniff import Kind, Sniff, classify
from tether.carriers.tls import TlsCodec
from tether.carriers.websocket import (
    WEBSOCKET_PATH,
    WEBSOCKET_SUBPROTOCOL,
    Frames,
    WebSocketCodec,
)

__all__ = [
    "WEBSOCKET_PATH",
    "WEBSOCKET_SUBPROTOCOL",
    "Codec",
    "CodecLayer",
    "Frames",
    "Kind",
    "LayerError",
    "Sniff",
    "TlsCodec",
    "WebSocketCodec",
    "classify",
]
