"""Batching the relay's database writes: what arrives together is written together.

While one batch is in the database, new items queue up; when it commits, the next
transaction takes all of them (up to :data:`MAX_BATCH`). A lone item goes straight
through; a thousand machines reconnecting after a relay restart (or dropping at once
when a network link fails) cost a few dozen transactions instead of a thousand. No
timer: batching only happens when there is a queue anyway, so it never adds latency.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from tether.tasks import TaskSet

#: Most items in one transaction (bounds the statements' size).
MAX_BATCH = 200

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


class Batcher(Generic[ItemT, ResultT]):
    """Runs ``write`` on batches of submitted items; :meth:`submit` one, await its result.

    :param write: takes a batch and returns one result per item, in order: a value, or
        the exception that item failed with (the others still succeed). If ``write``
        itself raises, every item of that batch fails with that exception.
    :param tasks: where the worker task is kept while it runs.
    :param name: names the worker task (for logs).
    """

    def __init__(
        self,
        write: Callable[[Sequence[ItemT]], Awaitable[Sequence[ResultT | Exception]]],
        tasks: TaskSet,
        name: str,
    ) -> None:
        self._write = write
        self._tasks = tasks
        self._name = name
        self._waiting: list[tuple[ItemT, asyncio.Future[ResultT]]] = []
        self._working = False

    async def submit(self, item: ItemT) -> ResultT:
        """Queue ``item``; return its result, or raise what it failed with."""
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if not self._working:
            self._working = True
            self._tasks.spawn(self._work(), self._name)
        return await future

    async def _work(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
                try:
                    results = await self._write([item for item, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():  # the submitter gave up waiting (its connection closed)
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._working = False
            for _, future in self._waiting:  # only if cancelled mid-way (relay closing)
                if not future.done():
                    future.cancel()
            self._waiting = []
