"""The daemon's control socket (``agent.sock`` in the run dir, root only): JSON lines.

The CLI asks the running daemon to ``reconcile`` after changing the access state,
to ``reset`` the tether, or for its live ``status``. When no daemon answers, the CLI
works on its own and says the daemon is not running.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

Handler = Callable[[str], Awaitable[dict[str, Any]]]
COMMANDS = frozenset({"status", "reconcile", "reset"})


async def serve_control(path: Path, handler: Handler) -> asyncio.Server:
    """Listen on ``path``; each request line ``{"cmd": ...}`` gets one JSON reply line."""
    # Start-up only: a blocking mkdir/unlink here is harmless.
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.unlink(missing_ok=True)  # noqa: ASYNC240

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=5)
            try:
                cmd = json.loads(line)["cmd"]
                if cmd not in COMMANDS:
                    raise ValueError(cmd)
                reply = await handler(cmd)
            except (ValueError, KeyError, TypeError):
                reply = {"ok": False, "error": "unknown command"}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    old_umask = os.umask(0o077)
    try:
        server = await asyncio.start_unix_server(on_client, path=str(path))
    finally:
        os.umask(old_umask)
    return server


#: The longest path a Unix socket address holds (``sun_path`` is 108 bytes on Linux).
_SUN_PATH_MAX = 107


def _connect(sock: socket.socket, path: Path) -> None:
    """Connect to ``path``, also when it is too long for a socket address.

    A deep run dir (a sandbox's, a test's) can exceed ``sun_path``; the socket is then
    reached through its directory's descriptor, which Linux resolves like the path.
    """
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        sock.connect(str(path))
        return
    directory = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        sock.connect(f"/proc/self/fd/{directory}/{path.name}")
    finally:
        os.close(directory)


def ask_daemon(path: Path, cmd: str, timeout: float = 5.0) -> dict[str, Any] | None:
    """Send one command to the daemon; None if no daemon is listening."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            _connect(sock, path)
            sock.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        reply = json.loads(data)
        return reply if isinstance(reply, dict) else None
    except (OSError, ValueError):
        return None
