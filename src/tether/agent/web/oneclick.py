"""A one-click request started from the page, running in the agent until the vendor answers.

The browser does not wait: the request runs as a task of the agent, the page shows
``waiting for vendor approval (case N)`` while it is pending, and once the vendor's key
arrives it is applied exactly as a pasted key would be
(:meth:`~tether.agent.access.AccessManager.enable_with_key`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

from tether.agent.access import AccessManager, PasswordChoice
from tether.agent.identity import load_or_create_machine_key
from tether.agent.machine.limits import Limits
from tether.agent.request import request_key
from tether.errors import TetherError
from tether.protocol import CaseUpdate
from tether.tasks import TaskSet


@dataclass(frozen=True)
class AccessOptions:
    """What the customer chose in the form, for any way of opening access."""

    duration: timedelta | None
    password: PasswordChoice
    ports: tuple[int, ...] | None
    #: What the grant allows, and whether each login waits for the customer.
    limits: Limits = field(default_factory=Limits)


class OneClick:
    """At most one pending one-click request of this agent."""

    def __init__(
        self, access: AccessManager, tasks: TaskSet, reconcile: Callable[[], Awaitable[None]]
    ) -> None:
        self._access = access
        self._tasks = tasks
        self._reconcile = reconcile
        self._task: asyncio.Task[None] | None = None
        self._started = 0.0
        #: In the page's words: what the pending request is doing now.
        self.status: str | None = None
        #: Why the last request failed (shown until the next one starts).
        self.error: str | None = None

    @property
    def pending(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def waited(self) -> timedelta:
        return timedelta(seconds=round(time.monotonic() - self._started))

    def start(self, description: str, options: AccessOptions) -> None:
        """Ask the vendor for a key in the background (one request at a time)."""
        if self.pending:
            raise TetherError("a support request is already waiting for the vendor")
        self.error, self.status = None, "contacting the vendor"
        self._started = time.monotonic()
        self._task = self._tasks.spawn(self._run(description, options), "agent.web.one_click")

    def cancel(self) -> bool:
        """Withdraw the pending request (the relay closes its case); False if none."""
        if not self.pending or self._task is None:
            return False
        self._task.cancel()
        self.status, self.error = None, "the support request was withdrawn"
        return True

    def _on_update(self, update: CaseUpdate) -> None:
        if update.status == "pending":
            self.status = f"waiting for vendor approval (case {update.case_id})"

    async def _run(self, description: str, options: AccessOptions) -> None:
        config = self._access.config
        try:
            machine_key = await asyncio.to_thread(
                load_or_create_machine_key, config.machine_key_path
            )
            key = await request_key(
                config,
                machine_key,
                description,
                on_update=self._on_update,
                limits=tuple(options.limits.describe()),
            )
            self.status = "the vendor issued a key; opening access"
            await asyncio.to_thread(
                self._access.enable_with_key,
                key,
                by="web (one-click)",
                duration=options.duration,
                password=options.password,
                ports=options.ports,
                limits=options.limits,
            )
            await self._reconcile()
        except TetherError as exc:
            self.error = str(exc)
        finally:
            self.status = None
