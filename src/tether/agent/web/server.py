"""Serving the customer's page from inside the agent daemon, on the daemon's event loop."""

from __future__ import annotations

import asyncio
import logging

import uvicorn

from tether import log
from tether.agent.web.app import create_app
from tether.agent.web.host import AgentHost
from tether.tasks import TaskSet
from tether.webui.security import QuietServer, bind, url_of

logger = logging.getLogger("tether.agent.web")


class AgentWebServer:
    """The page of ``host`` on ``host.config.web.listen``; :meth:`start` then :meth:`aclose`."""

    def __init__(self, host: AgentHost) -> None:
        self.host = host
        self._tasks = TaskSet()
        self.app = create_app(host, self._tasks)
        self._server: QuietServer | None = None
        self._serving: asyncio.Task[None] | None = None
        self.url: str | None = None

    async def start(self) -> str:
        """Listen, start serving in the background, and return the page's URL.

        The URL is also written to ``RUN_DIR/web.url`` (for scripts and the demo).
        """
        host, port = self.host.config.web.listen
        sock = bind(host, port)
        self.url = url_of(sock)
        config = uvicorn.Config(self.app, log_config=None, access_log=False, lifespan="off")
        self._server = QuietServer(config)
        self._serving = self._tasks.spawn(self._server.serve(sockets=[sock]), "agent.web.serve")
        # uvicorn offers a flag, not an event, for "listening".
        while not self._server.started and not self._serving.done():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if self._serving.done():
            self._serving.result()  # raise what made it stop
        url_file = self.host.config.run_dir / "web.url"
        url_file.write_text(self.url + "\n")
        log.event(logger, "agent.web", url=self.url)
        return self.url

    async def aclose(self) -> None:
        """Stop serving (open connections are closed) and any background work of the page."""
        self.app.state.page.live_streams.close()  # or each watcher holds up the stop
        if self._server is not None:
            self._server.should_exit = True
        if self._serving is not None:
            await asyncio.wait({self._serving}, timeout=5)
        await self._tasks.aclose()
        (self.host.config.run_dir / "web.url").unlink(missing_ok=True)
