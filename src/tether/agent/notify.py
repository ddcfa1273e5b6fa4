"""Telling the customer's own systems about support logins and logouts.

The ``[notify]`` table of agent.toml names a webhook (each event is POSTed as JSON,
retried with exponential backoff on a network error or a non-2xx answer) and/or a
command (run with the event's JSON on stdin). Events are delivered one at a time, in
order, by one background task: a slow or dead receiver never blocks the agent, and a
full queue drops the oldest event (logged). The webhook URL may carry a token, so it
is never logged: only its host is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from tether import log
from tether.config import NotifySettings

logger = logging.getLogger("tether.agent.notify")

#: Events waiting for delivery; beyond this the oldest is dropped.
QUEUE_LIMIT = 1000
#: First wait between webhook attempts (doubles each time, at most BACKOFF_CAP).
BACKOFF_FIRST = 0.5
BACKOFF_CAP = 30.0


class Notifier:
    """Delivers events to the webhook and the command of :class:`NotifySettings`.

    ``send()`` never blocks; ``await serve()`` delivers until cancelled.
    """

    def __init__(self, settings: NotifySettings, *, backoff_first: float = BACKOFF_FIRST) -> None:
        self.settings = settings
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._backoff_first = backoff_first
        host = urllib.parse.urlsplit(settings.webhook_url or "").hostname
        self._where = host or "?"

    @property
    def enabled(self) -> bool:
        return bool(self.settings.webhook_url or self.settings.command)

    def send(self, event: Mapping[str, Any]) -> None:
        """Queue ``event`` for delivery (does nothing when no hook is configured)."""
        if not self.enabled:
            return
        if self._queue.qsize() >= QUEUE_LIMIT:
            dropped = self._queue.get_nowait()
            log.event(logger, "notify.dropped", level=logging.WARNING, event=dropped.get("event"))
        self._queue.put_nowait(dict(event))

    async def serve(self) -> None:
        """Deliver queued events, in order, until cancelled."""
        while True:
            event = await self._queue.get()
            if self.settings.webhook_url:
                await self._post(self.settings.webhook_url, event)
            if self.settings.command:
                await self._run(event)

    async def _post(self, url: str, event: dict[str, Any]) -> bool:
        body = json.dumps(event).encode()
        delay = self._backoff_first
        for attempt in range(1, self.settings.attempts + 1):
            try:
                status = await asyncio.to_thread(_post_json, url, body, self.settings.timeout)
                problem = None if 200 <= status < 300 else f"HTTP {status}"
            except (OSError, ValueError) as exc:
                problem = _describe(exc)
            if problem is None:
                log.event(logger, "notify.webhook.sent", event=event.get("event"), host=self._where)
                return True
            log.event(
                logger,
                "notify.webhook.failed",
                level=logging.WARNING,
                event=event.get("event"),
                host=self._where,
                attempt=attempt,
                problem=problem,
            )
            if attempt < self.settings.attempts:
                await asyncio.sleep(delay)
                delay = min(BACKOFF_CAP, delay * 2)
        return False

    async def _run(self, event: dict[str, Any]) -> None:
        env = dict(os.environ)
        env.update(
            TETHER_EVENT=str(event.get("event", "")),
            TETHER_ENGINEER=str(event.get("engineer", "")),
            TETHER_RECORDING=str(event.get("session", "")),
        )
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.settings.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
        except OSError as exc:
            log.event(logger, "notify.command.failed", level=logging.WARNING, problem=str(exc))
            return
        try:
            _, err = await asyncio.wait_for(
                proc.communicate(json.dumps(event).encode() + b"\n"), self.settings.timeout
            )
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            log.event(logger, "notify.command.timeout", level=logging.WARNING)
            return
        if proc.returncode != 0:
            log.event(
                logger,
                "notify.command.failed",
                level=logging.WARNING,
                status=proc.returncode,
                stderr=err.decode(errors="replace")[-300:],
            )


def _describe(exc: BaseException) -> str:
    """Say what went wrong without the URL (it may hold a token)."""
    if isinstance(exc, urllib.error.URLError):
        return f"cannot connect ({exc.reason})"
    return type(exc).__name__ + (f": {exc.strerror}" if isinstance(exc, OSError) else "")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _post_json(url: str, body: bytes, timeout: float) -> int:
    """POST ``body`` to ``url``; return the HTTP status (redirects are not followed)."""
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked in config
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "tether-agent"},
    )
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
