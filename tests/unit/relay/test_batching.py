"""The relay's write batcher: what arrives while a batch is written goes in the next one."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from tether.relay.batching import MAX_BATCH, Batcher
from tether.tasks import TaskSet


class Store:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()

    async def write(self, items: Sequence[int]) -> list[int | Exception]:
        self.batches.append(list(items))
        await self.gate.wait()
        return [ValueError(f"{i} is odd") if i % 2 else i * 10 for i in items]


async def test_items_arriving_during_a_write_share_the_next_one() -> None:
    store, tasks = Store(), TaskSet()
    batcher: Batcher[int, int] = Batcher(store.write, tasks, "test")
    first = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0)
    rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 6)]
    await asyncio.sleep(0)
    store.gate.set()
    assert await first == 0
    results = await asyncio.gather(*rest, return_exceptions=True)
    assert store.batches == [[0], [1, 2, 3, 4, 5]]
    assert [r if isinstance(r, int) else str(r) for r in results] == [
        "1 is odd",
        20,
        "3 is odd",
        40,
        "5 is odd",
    ]
    await tasks.aclose()


async def test_a_failed_write_fails_its_batch_only_and_batches_are_bounded() -> None:
    calls: list[int] = []

    async def write(items: Sequence[int]) -> list[int | Exception]:
        calls.append(len(items))
        if len(calls) == 1:
            raise OSError("database gone")
        return list(items)

    tasks = TaskSet()
    batcher: Batcher[int, int] = Batcher(write, tasks, "test")
    futures = [asyncio.ensure_future(batcher.submit(i)) for i in range(MAX_BATCH + 5)]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert calls == [MAX_BATCH, 5]
    assert all(isinstance(r, OSError) for r in results[:MAX_BATCH])
    assert results[MAX_BATCH:] == list(range(MAX_BATCH, MAX_BATCH + 5))
    with pytest.raises(OSError, match="database gone"):
        raise results[0]  # type: ignore[misc]
    await tasks.aclose()
