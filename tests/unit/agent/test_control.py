"""The daemon's control socket, as the CLI reaches it."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from tether.agent.control import ask_daemon, serve_control


async def _answer(cmd: str) -> dict[str, Any]:
    return {"ok": True, "cmd": cmd}


async def test_a_run_dir_too_deep_for_a_socket_address_is_still_reached(tmp_path: Path) -> None:
    """A sandbox's run dir seen from the host can pass sun_path's 108 bytes (CI did)."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    sock = deep / "agent.sock"
    assert len(os.fsencode(sock)) > 108
    # The daemon binds it by its short name inside its own directory (as in a sandbox).
    directory = os.open(deep, os.O_PATH | os.O_DIRECTORY)
    try:
        server = await serve_control(Path(f"/proc/self/fd/{directory}/agent.sock"), _answer)
    finally:
        os.close(directory)
    try:
        reply = await asyncio.to_thread(ask_daemon, sock, "status", 2.0)
        assert reply == {"ok": True, "cmd": "status"}
    finally:
        server.close()
        await server.wait_closed()


async def test_no_daemon_is_none_not_an_error(tmp_path: Path) -> None:
    assert await asyncio.to_thread(ask_daemon, tmp_path / "agent.sock", "status", 1.0) is None
