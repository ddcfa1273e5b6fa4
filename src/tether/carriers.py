"""Byte-stream layers under SSH: TLS and WebSocket, on the relay and on the agent.

The tether's SSH runs unchanged over raw TCP, over TLS, or over a WebSocket (inside TLS
or not): the pinned relay host key is the trust, TLS and WebSocket only carry bytes so
that the tether passes networks that allow only HTTPS. Each layer is a sans-IO *codec*
(:class:`TlsCodec` on :class:`ssl.SSLObject` with memory BIOs, :class:`WebSocketCodec`
on ``wsproto`` for the upgrade and :class:`Frames` for the data) driven by one
:class:`CodecLayer`: the asyncio protocol of the outer transport and, at once, the asyncio transport of the inner protocol (asyncssh's
connection, or the next layer). Layers stack: SSH over WebSocket over TLS over TCP.

:class:`Sniff` looks at a stream's first bytes and picks what runs on it: ``SSH-`` is
SSH, a TLS record (``0x16``) is TLS, ``GET`` is an HTTP request for a WebSocket upgrade.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import ssl
import struct
from collections.abc import Callable
from typing import Any, Protocol

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, Request
from wsproto.utilities import RemoteProtocolError

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

#: The HTTP path the relay's WebSocket answers on (any other path is refused).
WEBSOCKET_PATH = "/tether"
#: The WebSocket subprotocol name both sides speak.
WEBSOCKET_SUBPROTOCOL = "tether-ssh"
#: Plaintext read from a TLS object at once.
_CHUNK = 256 * 1024
#: The largest WebSocket frame sent: one SSH packet of up to CHANNEL_MAX_PACKET (192 KiB)
#: goes as one frame; larger writes (several packets of one loop pass) as several.
#: Frames received may be of any length: their payload is passed on as it arrives,
#: never held whole (see :class:`Frames`).
_MAX_FRAME = 256 * 1024


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


#: RFC 6455 section 5.2 opcodes.
_CONT, _TEXT, _BINARY, _CLOSE, _PING, _PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
#: A control frame's payload is at most this long (RFC 6455 section 5.5).
_MAX_CONTROL = 125
#: Status code of a normal close (RFC 6455 section 7.4.1).
_NORMAL_CLOSURE = 1000


class Frames:
    """The frames of an upgraded WebSocket (RFC 6455 section 5), streamed.

    A data frame's payload goes to the inner stream as it arrives, unmasked chunk by
    chunk, so that no frame is ever held whole: a peer that has not logged in makes
    the relay hold at most a frame header and a control frame's 125 bytes, whatever
    length it announces. Each :meth:`send` becomes one binary frame (up to
    :data:`_MAX_FRAME`). The client masks every frame with a fresh key from
    :mod:`secrets` (section 5.3), with ``websockets``' C ``apply_mask``; the server
    refuses unmasked frames and the client masked ones. Pings are answered, text
    frames, reserved bits and unknown opcodes are protocol errors (:class:`LayerError`).

    :param client: the agent's side (masks what it sends); ``False``: the relay's.
    """

    def __init__(self, *, client: bool) -> None:
        self._client = client
        #: A header not complete yet (it may span reads).
        self._head = b""
        #: The frame being read: its opcode, payload bytes still to come, masking key,
        #: and how many of its payload bytes were unmasked already (the key's phase).
        self._in_frame = False
        self._opcode = _BINARY
        self._left = 0
        self._key: bytes | None = None
        self._done = 0
        #: A control frame's payload so far.
        self._control = b""
        #: A binary message continues in CONT frames (its last frame had FIN clear).
        self._continued = False
        #: The peer's close arrived: nothing after it is read.
        self.closed = False
        self._close_sent = False

    # --- sending ------------------------------------------------------------------------

    def send(self, data: bytes) -> bytes:
        """``data`` as binary frames for the peer (``b""`` once a close was sent)."""
        if self._close_sent:
            return b""
        if len(data) <= _MAX_FRAME:
            return self._frame(_BINARY, data)
        view = memoryview(data)
        return b"".join(
            self._frame(_BINARY, view[at : at + _MAX_FRAME])
            for at in range(0, len(view), _MAX_FRAME)
        )

    def close(self) -> bytes:
        """A close frame (normal closure), once."""
        if self._close_sent:
            return b""
        frame = self._frame(_CLOSE, _NORMAL_CLOSURE.to_bytes(2, "big"))
        self._close_sent = True
        return frame

    def _frame(self, opcode: int, payload: bytes | memoryview) -> bytes:
        length = len(payload)
        mask_bit = 0x80 if self._client else 0
        if length < 126:
            head = bytes((0x80 | opcode, mask_bit | length))
        elif length < 1 << 16:
            head = struct.pack("!BBH", 0x80 | opcode, mask_bit | 126, length)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, mask_bit | 127, length)
        if not self._client:
            return b"".join((head, payload))
        key = secrets.token_bytes(4)
        return b"".join((head, key, apply_mask(payload, key)))

    # --- receiving ----------------------------------------------------------------------

    def receive(self, data: bytes) -> tuple[bytes, bytes]:
        """Take bytes from the peer; return ``(to_peer, to_inner)``. Raises LayerError."""
        to_peer: list[bytes] = []
        inner: list[bytes] = []
        view = memoryview(data)
        at, end = 0, len(data)
        while at < end and not self.closed:
            if not self._in_frame:
                at = self._read_head(data, at)
                if not self._in_frame:
                    break  # the header continues in the next read
                if self._left == 0:
                    self._frame_done(to_peer)
                continue
            take = min(self._left, end - at)
            chunk = view[at : at + take]
            at += take
            if self._key is None:
                payload = bytes(chunk)
            else:
                phase = self._done % 4
                payload = apply_mask(chunk, self._key[phase:] + self._key[:phase])
            self._done += take
            self._left -= take
            if self._opcode == _BINARY:
                inner.append(payload)
            else:
                self._control += payload
            if self._left == 0:
                self._frame_done(to_peer)
        return b"".join(to_peer), inner[0] if len(inner) == 1 else b"".join(inner)

    def _read_head(self, data: bytes, at: int) -> int:
        """Gather a header from ``data[at:]``; start its frame once whole. Returns the
        new position."""
        head = self._head
        need = 2
        if len(head) >= 2:
            need = self._head_size(head[1])
        while len(head) < need and at < len(data):
            take = min(need - len(head), len(data) - at)
            head += data[at : at + take]
            at += take
            if len(head) == 2:
                need = self._head_size(head[1])
        if len(head) < need:
            self._head = head
            return at
        self._head = b""
        self._start(head)
        return at

    @staticmethod
    def _head_size(second: int) -> int:
        length = second & 0x7F
        return 2 + (2 if length == 126 else 8 if length == 127 else 0) + (4 if second & 0x80 else 0)

    def _start(self, head: bytes) -> None:
        """Check a whole header and start reading its frame's payload."""
        fin, rsv, opcode = head[0] & 0x80, head[0] & 0x70, head[0] & 0x0F
        masked, length = bool(head[1] & 0x80), head[1] & 0x7F
        at = 2
        if length == 126:
            length, at = int.from_bytes(head[2:4], "big"), 4
        elif length == 127:
            length, at = int.from_bytes(head[2:10], "big"), 10
            if length >> 63:
                raise LayerError("bad WebSocket frame: length out of range")
        if rsv:
            raise LayerError("bad WebSocket frame: reserved bits set (no extension was agreed)")
        if masked == self._client:
            raise LayerError("bad WebSocket frame: incorrect masking")
        if opcode == _TEXT:
            raise LayerError("text on the tether's WebSocket")
        if opcode in (_BINARY, _CONT):
            if (opcode == _CONT) != self._continued:
                raise LayerError("bad WebSocket frame: unexpected continuation")
            self._continued = not fin
            opcode = _BINARY
        elif opcode in (_CLOSE, _PING, _PONG):
            if not fin or length > _MAX_CONTROL:
                raise LayerError("bad WebSocket frame: control frame fragmented or too long")
        else:
            raise LayerError(f"bad WebSocket frame: unknown opcode {opcode:#x}")
        self._in_frame = True
        self._opcode = opcode
        self._left = length
        self._key = head[at : at + 4] if masked else None
        self._done = 0
        self._control = b""

    def _frame_done(self, to_peer: list[bytes]) -> None:
        self._in_frame = False
        opcode, payload = self._opcode, self._control
        if opcode == _PING and not self._close_sent:
            to_peer.append(self._frame(_PONG, payload))
        elif opcode == _CLOSE:
            if len(payload) == 1:
                raise LayerError("bad WebSocket frame: close with a one-byte payload")
            self.closed = True
            to_peer.append(self.close())


class WebSocketCodec:
    """A WebSocket carrying the inner stream as binary messages.

    ``wsproto`` does the HTTP upgrade (the part proxies see and judge); :class:`Frames`
    then carries the data, streamed. (The frames went through ``websockets``' sans-IO
    protocol before: it holds each frame whole and copies it four times each way, and
    the WebSocket ways lost a fifth more throughput than TLS alone, bench/README.md.)

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
        self._frames: Frames | None = None
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
            self._frames = Frames(client=self._client)
            self.ready = True
            break
        return b"".join(out)

    def _receive_frames(self, frames: Frames, data: bytes) -> tuple[bytes, bytes]:
        to_peer, inner = frames.receive(data)
        self.closed = frames.closed
        return to_peer, inner

    def send(self, data: bytes) -> bytes:
        frames = self._frames
        if frames is None:
            return b""
        return frames.send(data)

    def closing(self) -> bytes:
        frames = self._frames
        if frames is None:
            return b""
        return frames.close()

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
    "Frames",
    "Kind",
    "LayerError",
    "Sniff",
    "TlsCodec",
    "WebSocketCodec",
    "classify",
]
