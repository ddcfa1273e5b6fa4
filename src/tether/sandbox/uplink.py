"""Uplinks: let a sandboxed machine reach chosen TCP ports on the host's loopback.

The machine has its own network namespace (only ``lo``), so the host's 127.0.0.1 is out
of reach — which is the point: nothing on the host can connect *in*. For each uplink port
P two forwarders, joined by a Unix socket in the sandbox's private ``/run`` (Unix sockets
live in the file system, so they cross network namespaces), carry connections *out*::

    inside netns                                     host netns
    client -> 127.0.0.1:P -> [inside forwarder] -> /run/tether-sandbox/uplink/P.sock
                          -> [host forwarder] -> 127.0.0.1:P (the relay, a test server...)

Both forwarders are this module (``python -m tether.sandbox.uplink host|inside ...``).
Each byte stream is copied with large buffers and ``drain()`` for flow control; an EOF in
one direction becomes a half-close (``write_eof``) on the other side, so protocols that
shut down their sending side and then wait for the reply (like ``ssh``) work; a reset in
either direction aborts both sides. The forwarder prints :data:`~layout.READY_LINE` on
stdout once it listens. The host forwarder also exits when its stdin reaches EOF, so it
dies with the process that started it even if that process crashes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from tether.sandbox import layout

#: Bytes read at once, and the stream buffer limits (bulk data moves in big chunks).
CHUNK = 256 * 1024
_LIMIT = 4 * CHUNK
_BACKLOG = 1024
_CONNECT_TIMEOUT = 10.0

Opener = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


class _Tasks:
    """Named tasks with strong references (no bare ``create_task``).

    asyncio keeps only weak references to tasks, and a stream's protocol only a weak
    one to its reader: a connection task whose sockets are not being polled (a
    half-closed client, a paused reader) would otherwise be garbage-collected mid-copy.
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``coro`` as a task called ``name``, keeping a reference until it ends."""
        self.adopt(asyncio.get_running_loop().create_task(coro, name=name))

    def adopt(self, task: asyncio.Task[None]) -> None:
        """Keep a reference to ``task`` (e.g. one asyncio's server made) until it ends."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Cancel every task still running and wait for them."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _log(message: str) -> None:
    print(f"uplink[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


def _tune(writer: asyncio.StreamWriter) -> None:
    writer.transport.set_write_buffer_limits(high=_LIMIT)


async def _pump(
    label: str,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    other: asyncio.StreamWriter,
) -> None:
    """Copy ``reader`` to ``writer`` until EOF, then half-close ``writer``.

    On a connection error both transports are aborted, so the opposite pump ends too.
    """
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof() and not writer.is_closing():
            writer.write_eof()
    except (ConnectionError, OSError) as exc:
        _log(f"{label}: connection broken: {exc!r}")
        writer.transport.abort()
        other.transport.abort()


async def _splice(
    label: str,
    a_reader: asyncio.StreamReader,
    a_writer: asyncio.StreamWriter,
    b_reader: asyncio.StreamReader,
    b_writer: asyncio.StreamWriter,
) -> None:
    """Copy both directions between connection ``a`` and connection ``b`` until done."""
    try:
        await asyncio.gather(
            _pump(f"{label} out", a_reader, b_writer, a_writer),
            _pump(f"{label} back", b_reader, a_writer, b_writer),
        )
    finally:
        for writer in (a_writer, b_writer):
            writer.close()
        for writer in (a_writer, b_writer):
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()


def _handler(
    label: str, open_peer: Opener, tasks: _Tasks
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        current = asyncio.current_task()
        if current is not None:
            current.set_name(f"uplink {label}")
            tasks.adopt(current)
        _tune(writer)
        try:
            peer_reader, peer_writer = await open_peer()
        except OSError as exc:
            _log(f"{label}: cannot reach the other side: {exc}")
            writer.transport.abort()
            return
        _tune(peer_writer)
        await _splice(label, reader, writer, peer_reader, peer_writer)

    return handle


def _connect_unix(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(_CONNECT_TIMEOUT)
        sock.connect(str(path))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def _open_unix(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to a Unix socket, waiting while its listen queue is full.

    A non-blocking connect(2) to a Unix socket with a full queue fails with EAGAIN,
    which asyncio mistakes for "in progress" and then for success; a blocking connect
    in a worker thread just waits for room.
    """
    sock = await asyncio.get_running_loop().run_in_executor(None, _connect_unix, path)
    return await asyncio.open_unix_connection(sock=sock, limit=_LIMIT)


async def _start_servers(
    mode: str, socket_dir: Path, ports: Sequence[int], tasks: _Tasks, source: str | None
) -> list[asyncio.Server]:
    servers: list[asyncio.Server] = []
    for port in ports:
        sock_path = socket_dir / layout.uplink_socket_name(port)
        if mode == "host":
            # Bind relative to the socket directory: a workdir path can exceed the
            # 107-byte limit of a Unix socket address.
            with contextlib.suppress(FileNotFoundError):
                sock_path.unlink()

            def open_tcp(port: int = port) -> Awaitable[Any]:
                local = (source, 0) if source else None
                return asyncio.open_connection("127.0.0.1", port, limit=_LIMIT, local_addr=local)

            server = await asyncio.start_unix_server(
                _handler(f"port {port}", open_tcp, tasks),
                path=sock_path.name,
                limit=_LIMIT,
                backlog=_BACKLOG,
            )
        else:

            def open_unix(path: Path = sock_path) -> Awaitable[Any]:
                return _open_unix(path)

            server = await asyncio.start_server(
                _handler(f"port {port}", open_unix, tasks),
                host="127.0.0.1",
                port=port,
                limit=_LIMIT,
                reuse_address=True,
                backlog=_BACKLOG,
            )
        servers.append(server)
    return servers


async def _stdin_eof(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.read(4096):
        pass
    stop.set()


async def serve(
    mode: str,
    socket_dir: Path,
    ports: Sequence[int],
    *,
    exit_on_eof: bool,
    source: str | None = None,
) -> None:
    """Run one forwarder until SIGTERM/SIGINT (or stdin EOF when ``exit_on_eof``).

    Args:
        mode: ``"host"`` listens on the Unix sockets and connects to the host's
            127.0.0.1:P; ``"inside"`` listens on 127.0.0.1:P and connects to the sockets.
        socket_dir: the directory of the Unix sockets, as this process sees it.
        ports: the TCP ports to forward.
        exit_on_eof: also stop when stdin reaches EOF.
        source: in ``"host"`` mode, the loopback address to connect from (e.g.
            ``127.0.0.2``), so the server can tell carried clients from its own machine's.
    """
    if mode == "host":
        os.chdir(socket_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    tasks = _Tasks()
    if exit_on_eof:
        tasks.spawn(_stdin_eof(stop), "uplink-stdin-eof")
    servers = await _start_servers(mode, socket_dir, ports, tasks, source)
    print(layout.READY_LINE, flush=True)
    _log(f"{mode}: forwarding ports {', '.join(map(str, ports))} via {socket_dir}")
    await stop.wait()
    for server in servers:
        server.close()
    await tasks.aclose()


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m tether.sandbox.uplink {host|inside} --socket-dir D --port P``."""
    parser = argparse.ArgumentParser(prog="python -m tether.sandbox.uplink")
    parser.add_argument("mode", choices=("host", "inside"))
    parser.add_argument("--socket-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, action="append", required=True)
    parser.add_argument("--exit-on-stdin-eof", action="store_true")
    parser.add_argument("--from", dest="source", help="host mode: connect from this address")
    args = parser.parse_args(argv)
    asyncio.run(
        serve(
            args.mode,
            args.socket_dir,
            args.port,
            exit_on_eof=args.exit_on_stdin_eof,
            source=args.source,
        )
    )


if __name__ == "__main__":
    main()
