"""TLS on memory BIOs, as a :class:`~tether.carriers.layer.Codec`."""

from __future__ import annotations

import contextlib
import ssl
from typing import Any

from tether.carriers.layer import LayerError

#: Plaintext read from a TLS object at once.
_CHUNK = 256 * 1024


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


__all__ = ["TlsCodec"]
