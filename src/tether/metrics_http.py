"""A part's internal HTTP endpoint: ``/metrics``, ``/healthz`` and ``/readyz``.

One listener per server part (``[metrics] listen`` in ``relay.toml`` or
``vendor.toml``), on an internal address, never the SSH or API port:

- ``/metrics``: the part's Prometheus metrics, rendered by ``prometheus_client``
  from the part's own :class:`~prometheus_client.CollectorRegistry` (never by hand).
- ``/healthz``: 200 while the process runs.
- ``/readyz``: 200 while the part takes new work *and* its store answers; 503 with
  the reason otherwise. HAProxy checks relays with ``option httpchk GET /readyz``.

The server speaks just enough HTTP/1.x for a health checker or a Prometheus scrape
(one GET, one response, close): it reads at most :data:`MAX_REQUEST` bytes of request
head for at most :data:`REQUEST_TIMEOUT` seconds, answers nothing but these three
paths, and tells nothing but metrics, "ok" or why it is not ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from tether import log
from tether.keys import format_address

MAX_REQUEST = 4096
REQUEST_TIMEOUT = 5.0

#: The readiness reason of a part whose store does not answer.
DATABASE_UNAVAILABLE = "vendor database unavailable"

#: Returns ``None`` when ready, else a short reason (for the 503 body and the log).
ReadinessCheck = Callable[[], Awaitable[str | None]]


class MetricsServer:
    """``await start()``, read :attr:`port`, ``await aclose()``.

    :param host: address to listen on (keep it internal: loopback or a private network).
    :param port: port (0: the OS picks).
    :param registry: the metrics ``/metrics`` exposes (the part's own registry).
    :param ready: the readiness check behind ``/readyz``.
    :param part: names the part in the readiness log event (``relay.readiness``).
    :param refresh: run before each scrape, for figures read from elsewhere (the store).
    """

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        ready: ReadinessCheck,
        *,
        part: str,
        refresh: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._registry = registry
        self._ready = ready
        self._part = part
        self._refresh = refresh
        self._server: asyncio.Server | None = None
        self._last_reason: str | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("metrics endpoint not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def address(self) -> str:
        """``HOST:PORT`` it listens on (for logs, the load balancer and Prometheus)."""
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
                )  # a checker or scraper sends a few lines; anything longer is not one
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return
            if len(head) > MAX_REQUEST:
                return
            status, content_type, body = await self._answer(head.split(b"\r\n", 1)[0])
            writer.write(
                f"HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, request_line: bytes) -> tuple[str, str, bytes]:
        parts = request_line.split(b" ")
        if len(parts) != 3 or parts[0] != b"GET" or not parts[2].startswith(b"HTTP/1."):
            return _text("400 Bad Request", "bad request")
        path = parts[1].split(b"?", 1)[0]
        if path == b"/metrics":
            if self._refresh is not None:
                await self._refresh()
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self._registry)
        if path == b"/healthz":
            return _text("200 OK", "ok")
        if path != b"/readyz":
            return _text("404 Not Found", "not found")
        reason = await self._ready()
        if reason != self._last_reason:  # log changes, not every check
            self._last_reason = reason
            log.event(
                logging.getLogger(f"tether.{self._part}"),
                f"{self._part}.readiness",
                level=logging.INFO if reason is None else logging.WARNING,
                ready=reason is None,
                reason=reason or "",
            )
        if reason is None:
            return _text("200 OK", "ready")
        return _text("503 Service Unavailable", f"not ready: {reason}")


def _text(status: str, body: str) -> tuple[str, str, bytes]:
    return status, "text/plain; charset=utf-8", (body + "\n").encode()
