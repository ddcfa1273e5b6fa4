"""The relay's health endpoint for the load balancer: ``/healthz`` and ``/readyz``.

HAProxy checks each relay with ``option httpchk GET /readyz`` on this port and sends
new connections only to relays that answer 200. ``/healthz`` says the process runs;
``/readyz`` says it accepts connections *and* its store answers, so a relay that is
stopping or has lost its database gets no new agents or engineers.

The server speaks just enough HTTP/1.x for a health checker (one GET, one response,
close), on an internal address: it reads at most :data:`MAX_REQUEST` bytes for at
most :data:`REQUEST_TIMEOUT` seconds, answers nothing but these two paths, and tells
nothing but "ok" or why it is not ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from tether import log
from tether.keys import format_address

logger = logging.getLogger("tether.relay")

MAX_REQUEST = 4096
REQUEST_TIMEOUT = 5.0

#: Returns ``None`` when ready, else a short reason (for the 503 body and the log).
ReadinessCheck = Callable[[], Awaitable[str | None]]


class HealthServer:
    """``await start()``, read :attr:`port`, ``await aclose()``.

    :param host: address to listen on (keep it internal: loopback or a private network).
    :param port: port (0: the OS picks).
    :param ready: the readiness check behind ``/readyz``.
    """

    def __init__(self, host: str, port: int, ready: ReadinessCheck) -> None:
        self._host = host
        self._port = port
        self._ready = ready
        self._server: asyncio.Server | None = None
        self._last_reason: str | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("health endpoint not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def address(self) -> str:
        """``HOST:PORT`` it listens on (for logs and the load balancer's configuration)."""
        return format_address(self._host, self.port)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self._host, self._port)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(
                    reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT
                )  # a checker sends a few lines; anything longer is not one
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return
            if len(head) > MAX_REQUEST:
                return
            status, body = await self._answer(head.split(b"\r\n", 1)[0])
            writer.write(
                f"HTTP/1.0 {status}\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(body) + 1}\r\nConnection: close\r\n\r\n{body}\n".encode()
            )
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, request_line: bytes) -> tuple[str, str]:
        parts = request_line.split(b" ")
        if len(parts) != 3 or parts[0] != b"GET" or not parts[2].startswith(b"HTTP/1."):
            return "400 Bad Request", "bad request"
        path = parts[1].split(b"?", 1)[0]
        if path == b"/healthz":
            return "200 OK", "ok"
        if path != b"/readyz":
            return "404 Not Found", "not found"
        reason = await self._ready()
        if reason != self._last_reason:  # log changes, not every check
            self._last_reason = reason
            log.event(
                logger,
                "relay.readiness",
                level=logging.INFO if reason is None else logging.WARNING,
                ready=reason is None,
                reason=reason or "",
            )
        if reason is None:
            return "200 OK", "ready"
        return "503 Service Unavailable", f"not ready: {reason}"
