"""Request bodies are bounded on every route of the vendor service (security review, defect 17).

The reviewer sent one 300 MiB POST to ``/api/login`` and watched the process grow from
113 to 1,003 MiB: the body was read whole before anything looked at it. These tests
talk raw HTTP/1.1 to the real service (uvicorn on 127.0.0.1:0), as that client did, and
expect a 413 after at most :data:`MAX_REQUEST_BODY` bytes were read: a larger
``Content-Length`` is refused before the body is sent, and a chunked body without one
is cut off once it passes the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from tether.config import RequestPolicy, VendorConfig
from tether.store import Store
from tether.tasks import TaskSet
from tether.vendor_service.service import VendorService
from tether.webui.security import MAX_REQUEST_BODY

HUGE = 300 * 1024 * 1024
CHUNK = 64 * 1024


@asynccontextmanager
async def serving(config: VendorConfig) -> AsyncIterator[tuple[str, int]]:
    store = await Store.open(config.database)
    tasks = TaskSet()
    service = VendorService(
        dataclasses.replace(config, request_policy=RequestPolicy.HOLD),
        store,
        listen=("127.0.0.1", 0),
    )
    task = tasks.spawn(service.serve(), "test.vendor")
    try:
        await asyncio.wait_for(service.wait_ready(), 10)
        host, port = service.url.removeprefix("http://").rsplit(":", 1)
        yield host, int(port)
    finally:
        await service.aclose()
        await asyncio.wait_for(task, 10)
        await tasks.aclose()
        await store.aclose()


async def _status(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The status code of the response and everything the server sent (until it closed)."""
    head = await reader.readuntil(b"\r\n\r\n")
    rest = await reader.read(64 * 1024)
    return int(head.split(b" ", 2)[1]), head + rest


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/api/login"), ("POST", "/console/login"), ("GET", "/api/me"), ("POST", "/nowhere")],
)
async def test_a_huge_content_length_is_refused_before_the_body_is_read(
    vendor_config: VendorConfig, method: str, path: str
) -> None:
    async with serving(vendor_config) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(
                f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {HUGE}\r\n\r\n".encode()
                + b"{" * CHUNK
            )
            await writer.drain()
            # Only 64 KiB of the announced 300 MiB were sent: an answer proves it read no more.
            status, response = await asyncio.wait_for(_status(reader), 10)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    assert status == 413, response
    assert b"Content Too Large" in response


async def test_a_chunked_body_is_cut_off_once_it_passes_the_limit(
    vendor_config: VendorConfig,
) -> None:
    async with serving(vendor_config) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        answer = asyncio.ensure_future(_status(reader))
        sent = 0
        try:
            writer.write(
                f"POST /api/login HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                "Transfer-Encoding: chunked\r\n\r\n".encode()
            )
            with contextlib.suppress(ConnectionError):
                while not answer.done() and sent < 16 * MAX_REQUEST_BODY:
                    writer.write(f"{CHUNK:x}\r\n".encode() + b" " * CHUNK + b"\r\n")
                    await writer.drain()
                    sent += CHUNK
                    await asyncio.sleep(0)
            status, response = await asyncio.wait_for(answer, 10)
        finally:
            answer.cancel()
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    assert status == 413, response
    assert sent < 4 * MAX_REQUEST_BODY, f"the server read {sent} bytes before refusing"


async def test_an_ordinary_request_still_works(vendor_config: VendorConfig) -> None:
    async with serving(vendor_config) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        body = b'{"name": "nobody", "password": "' + b"x" * 1000 + b'"}'
        try:
            writer.write(
                f"POST /api/login HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
            status, response = await asyncio.wait_for(_status(reader), 10)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    assert status == 401, response  # read, parsed, and answered: no such engineer
