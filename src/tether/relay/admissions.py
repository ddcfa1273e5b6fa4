"""The relay's admission queue: tethers arriving together are admitted together.

While one batch of admissions is in the database, tethers that arrive queue up; when
it commits, the next transaction takes all of them (up to :data:`MAX_BATCH`). A lone
tether goes straight through; a thousand machines reconnecting after a relay restart
cost a few dozen transactions instead of a thousand. No timer: batching only happens
when there is a queue anyway, so it never adds latency.
"""

from __future__ import annotations

import asyncio

from tether.store import Store
from tether.store.admission import Admission
from tether.store.records import TetherRecord
from tether.tasks import TaskSet

#: Most admissions in one transaction (bounds the statements' size).
MAX_BATCH = 200


class AdmissionQueue:
    """Admits tethers through ``store`` in batches; :meth:`admit` one, await its fate.

    :param store: the shared database.
    :param tasks: where the queue's worker task is kept while it runs.
    """

    def __init__(self, store: Store, tasks: TaskSet) -> None:
        self._store = store
        self._tasks = tasks
        self._waiting: list[tuple[Admission, asyncio.Future[TetherRecord]]] = []
        self._working = False

    async def admit(self, admission: Admission) -> TetherRecord:
        """Admit one tether; raises what its check raised, or the database's error."""
        future: asyncio.Future[TetherRecord] = asyncio.get_running_loop().create_future()
        self._waiting.append((admission, future))
        if not self._working:
            self._working = True
            self._tasks.spawn(self._work(), "relay.admissions")
        return await future

    async def _work(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
                try:
                    results = await self._store.tethers.admit_many([a for a, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():  # the tether gave up waiting (its connection closed)
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
