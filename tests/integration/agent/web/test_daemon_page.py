"""The page is served by the agent daemon itself, on its event loop (real sockets, no root)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import httpx

from tests.unit.agent.web.test_app import make_config
from tether.agent.control import ask_daemon
from tether.agent.daemon import AgentDaemon


async def start(daemon: AgentDaemon) -> asyncio.Task[None]:
    task = asyncio.ensure_future(daemon.serve())
    for _ in range(400):
        if await asyncio.to_thread(ask_daemon, daemon.socket_path, "status", 0.5) is not None:
            return task
        if task.done():
            task.result()
        await asyncio.sleep(0.025)
    raise AssertionError("the daemon did not answer on its control socket")


async def page_url(daemon: AgentDaemon) -> str:
    """The URL the daemon writes once its page listens (after its control socket answers)."""
    url_file = daemon.config.run_dir / "web.url"
    for _ in range(400):
        if url_file.exists() and (url := url_file.read_text().strip()):
            return url
        await asyncio.sleep(0.025)
    raise AssertionError(f"the daemon never wrote {url_file}")


async def test_daemon_serves_the_page_and_says_where(tmp_path: Path) -> None:
    daemon = AgentDaemon(make_config(tmp_path, '[web]\nlisten = "127.0.0.1:0"\n'))
    task = await start(daemon)
    try:
        url = await page_url(daemon)
        assert url.startswith("http://127.0.0.1:")
        async with httpx.AsyncClient(base_url=url) as client:
            first = await client.get("/")
            assert first.status_code == 303
            assert first.headers["location"] == "/setup"  # no password yet: set it from here
            assert "Set the admin password" in (await client.get("/setup")).text
            htmx = await client.get("/static/ui/htmx.min.js")
            assert htmx.status_code == 200
            assert b"htmx" in htmx.content
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 10)
    assert not (daemon.config.run_dir / "web.url").exists()
    with socket.socket() as probe:  # the port was given back
        host, port = url.removeprefix("http://").rsplit(":", 1)
        assert probe.connect_ex((host, int(port))) != 0


async def test_daemon_runs_on_when_the_page_cannot_listen(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = make_config(tmp_path, f'[web]\nlisten = "127.0.0.1:{port}"\n')
        daemon = AgentDaemon(config)
        task = await start(daemon)  # access control and the CLI's socket do not depend on it
        try:
            assert not (config.run_dir / "web.url").exists()
            reply = await asyncio.to_thread(ask_daemon, daemon.socket_path, "reconcile")
            assert reply is not None
            assert reply["ok"] is True
        finally:
            daemon.stop()
            await asyncio.wait_for(task, 10)
