"""Byte-stream layers under SSH: TLS and WebSocket, on the relay and on the agent.

The tether's SSH runs unchanged over raw TCP, over TLS, or over a WebSocket (inside TLS
or not): the pinned relay host key is the trust, TLS and WebSocket only carry bytes so
that the tether passes networks that allow only HTTPS. Each layer is a sans-IO *codec*
(:class:`TlsCodec` on :class:`ssl.SSLObject` with memory BIOs, :class:`WebSocketCodec`
on ``wsproto`` for the upgrade and ``websockets`` for the frames) driven by one :class:`CodecLayer`: the asyncio protocol of the outer
transport and, at once, the asyncio transport of the inner protocol (asyncssh's
connection, or the next layer). Layers stack: SSH over WebSocket over TLS over TCP.

:class:`Sniff` looks at a stream's first bytes and picks what runs on it: ``SSH-`` is
SSH, a TLS record (``0x16``) is TLS, ``GET`` is an HTTP request for a WebSocket upgrade.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from typing import Any, Protocol

from websockets.exceptions import InvalidState
from websockets.frames import CloseCode, Frame, Opcode
from websockets.protocol import Protocol as WsProtocol
from websockets.protocol import Side, State
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, Request
from wsproto.utilities import RemoteProtocolError

#: The HTTP path the relay's WebSocket answers on (any other path is refused).
WEBSOCKET_PATH = "/tether"
#: The WebSocket subprotocol name both sides speak.
WEBSOCKET_SUBPROTOCOL = "tether-ssh"
#: Plaintext read from a TLS object at once.
_CHUNK = 256 * 1024
#: The largest WebSocket frame sent or taken: a frame is buffered whole before it is
#: passed on, so this is what one connection that has not logged in can make the relay
#: hold (times the gate's max_unauthenticated). Larger writes (SSH packets of up to
#: CHANNEL_MAX_PACKET) become several frames.
_MAX_FRAME = 64 * 1024


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


class TlsCodec:
    """TLS on memory BIOs (server or client side).

    :param context: the server's context (its certificate), or the client's (the agent
        accepts any certificate: the SSH inside is the trust, see module docstring).
    :param server_hostname: the client's SNI, ``None`` on the server.
    """

    def __init__(
        self, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None
    ) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = context.wrap_bio(
            self._in, self._out, server_side=server_side, server_hostname=server_hostname
        )
        self.ready = False
        self.closed = False

    def start(self) -> bytes:
        self._handshake()
        return self._out.read()

    def _handshake(self) -> None:
        try:
            self._obj.do_handshake()
        except ssl.SSLWantReadError:
            return
        except ssl.SSLError as exc:
            raise LayerError(f"TLS handshake failed: {exc.reason or exc}") from None
        self.ready = True

    def receive(self, data: bytes) -> tuple[bytes, bytes]:
        self._in.write(data)
        if not self.ready:
            self._handshake()
            if not self.ready:
                return self._out.read(), b""
        plain: list[bytes] = []
        while True:
            try:
                chunk = self._obj.read(_CHUNK)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.closed = True
                break
            except ssl.SSLError as exc:
                raise LayerError(f"TLS error: {exc.reason or exc}") from None
            if not chunk:
                self.closed = True
                break
            plain.append(chunk)
        return self._out.read(), b"".join(plain)

    def send(self, data: bytes) -> bytes:
        view = memoryview(data)
        while view:
            written = self._obj.write(view)
            view = view[written:]
        return self._out.read()

    def closing(self) -> bytes:
        with contextlib.suppress(ssl.SSLError):
            self._obj.unwrap()
        return self._out.read()

    def extra(self) -> dict[str, Any]:
        return {
            "tls_version": self._obj.version(),
            "tls_peer_certificate": self._obj.getpeercert(binary_form=True),
        }


class WebSocketCodec:
    """A WebSocket carrying the inner stream as binary messages.

    Two well-kept libraries share the work, each where it is strongest: ``wsproto`` does
    the HTTP upgrade (the part proxies see and judge), ``websockets``' sans-IO
    :class:`~websockets.protocol.Protocol` then frames the data, masking and unmasking
    with its C ``apply_mask`` rather than wsproto's pure-Python one. The client masks
    every frame with a fresh key from :mod:`secrets` (RFC 6455 section 5.3); the server
    refuses unmasked frames and the client masked ones. (The masked direction, codec
    alone, on the bench machine: ~300 MB/s with wsproto's masker, ~2.6 GB/s with this.)

    :param host: the client's ``Host`` header; ``None`` for the server side.
    :param target: the client's request target: :data:`WEBSOCKET_PATH`, or an absolute
        ``http://relay:port/tether`` when the request goes through an HTTP proxy.
    :param headers: further request headers of the client (none on the server).
    """

    def __init__(
        self,
        *,
        host: str | None = None,
        target: str = WEBSOCKET_PATH,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self._target = target
        self._client = host is not None
        self._ws = WSConnection(ConnectionType.CLIENT if self._client else ConnectionType.SERVER)
        self._host = host or ""
        self._headers = headers or []
        #: The last bytes of the HTTP head so far: its blank line may span two reads.
        self._tail = b""
        #: The frame layer, once the upgrade is done.
        self._frames: WsProtocol | None = None
        self.ready = False
        self.closed = False
        self.status: int | None = None

    def start(self) -> bytes:
        if not self._client:
            return b""
        return self._ws.send(
            Request(
                host=self._host,
                target=self._target,
                subprotocols=[WEBSOCKET_SUBPROTOCOL],
                extra_headers=self._headers,
            )
        )

    def receive(self, data: bytes) -> tuple[bytes, bytes]:
        out: list[bytes] = []
        while self._frames is None and data:
            head, data = self._split_head(data)
            out.append(self._upgrade(head))
        if self._frames is None or not data:
            return b"".join(out), b""
        to_peer, inner = self._receive_frames(self._frames, data)
        out.append(to_peer)
        return b"".join(out), inner

    def _split_head(self, data: bytes) -> tuple[bytes, bytes]:
        """Cut ``data`` after the HTTP head's blank line: what follows is frames already."""
        probe = self._tail + data
        end = probe.find(b"\r\n\r\n")
        if end < 0:
            self._tail = probe[-3:]
            return data, b""
        cut = end + 4 - len(self._tail)
        self._tail = b""
        return data[:cut], data[cut:]

    def _upgrade(self, head: bytes) -> bytes:
        """Feed (part of) the HTTP upgrade to wsproto; start the frames once it is done."""
        try:
            self._ws.receive_data(head)
        except RemoteProtocolError as exc:
            raise LayerError(f"not a WebSocket upgrade: {exc}") from None
        out: list[bytes] = []
        for event in self._ws.events():
            if isinstance(event, Request):
                if event.target != WEBSOCKET_PATH:
                    out.append(self._ws.send(RejectConnection(status_code=404)))
                    raise LayerError(f"WebSocket upgrade for {event.target!r}")
                out.append(self._ws.send(AcceptConnection(subprotocol=WEBSOCKET_SUBPROTOCOL)))
            elif isinstance(event, AcceptConnection):
                pass
            elif isinstance(event, RejectConnection):
                self.status = event.status_code
                raise LayerError(f"WebSocket upgrade refused with HTTP {event.status_code}")
            else:
                continue  # nothing else comes before the upgrade is done
            self._frames = WsProtocol(
                Side.CLIENT if self._client else Side.SERVER,
                state=State.OPEN,
                max_size=(None, _MAX_FRAME),
            )
            self.ready = True
            break
        return b"".join(out)

    def _receive_frames(self, frames: WsProtocol, data: bytes) -> tuple[bytes, bytes]:
        frames.receive_data(data)
        inner: list[bytes] = []
        for frame in frames.events_received():
            if not isinstance(frame, Frame):  # pragma: no cover - handshakes are wsproto's
                continue
            if frame.opcode in (Opcode.BINARY, Opcode.CONT):
                inner.append(bytes(frame.data))
            elif frame.opcode is Opcode.TEXT:
                raise LayerError("text on the tether's WebSocket")
            elif frame.opcode is Opcode.CLOSE:
                self.closed = True  # websockets has queued the answering close
        if frames.parser_exc is not None:
            raise LayerError(f"bad WebSocket frame: {frames.parser_exc}")
        return self._to_send(frames), b"".join(inner)

    @staticmethod
    def _to_send(frames: WsProtocol) -> bytes:
        # b"" in the list asks the caller to close the stream; CodecLayer does that when
        # the codec says ``closed``.
        return b"".join(frames.data_to_send())

    def send(self, data: bytes) -> bytes:
        frames = self._frames
        if frames is None:
            return b""
        view = memoryview(data)
        try:
            for at in range(0, len(view), _MAX_FRAME):
                frames.send_binary(view[at : at + _MAX_FRAME])
        except InvalidState:
            return b""  # closing: nothing more is sent
        return self._to_send(frames)

    def closing(self) -> bytes:
        frames = self._frames
        if frames is None:
            return b""
        with contextlib.suppress(InvalidState):
            frames.send_close(CloseCode.NORMAL_CLOSURE)
        return self._to_send(frames)

    def extra(self) -> dict[str, Any]:
        return {"websocket": True}


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


__all__ = [
    "WEBSOCKET_PATH",
    "WEBSOCKET_SUBPROTOCOL",
    "Codec",
    "CodecLayer",
    "Kind",
    "LayerError",
    "Sniff",
    "TlsCodec",
    "WebSocketCodec",
    "classify",
]
