"""A WebSocket carrying the tether's stream: the upgrade (``wsproto``) and the frames."""

from __future__ import annotations

import secrets
import struct
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, Request
from wsproto.utilities import RemoteProtocolError

from tether.carriers.layer import LayerError

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

#: The HTTP path the relay's WebSocket answers on (any other path is refused).
WEBSOCKET_PATH = "/tether"
#: The WebSocket subprotocol name both sides speak.
WEBSOCKET_SUBPROTOCOL = "tether-ssh"
#: The largest WebSocket frame sent: one SSH packet of up to CHANNEL_MAX_PACKET (192 KiB)
#: goes as one frame; larger writes (several packets of one loop pass) as several.
#: Frames received may be of any length: their payload is passed on as it arrives,
#: never held whole (see :class:`Frames`).
_MAX_FRAME = 256 * 1024

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
    protocol before: it held each frame whole and copied it four times each way, 0.7
    CPU-s per GiB on the relay over TLS alone; 0.1 now, bench/README.md.)

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


__all__ = ["WEBSOCKET_PATH", "WEBSOCKET_SUBPROTOCOL", "Frames", "WebSocketCodec"]
