"""The revocation feed relays poll (and, on PostgreSQL, its NOTIFY)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy.engine import make_url

from tether.store import REVOCATION_CHANNEL, RevocationKind, Store

from .helpers import T0, issue


async def test_head_is_zero_when_empty(store: Store) -> None:
    assert await store.revocations.head() == 0
    assert await store.revocations.since(0) == []


async def test_since_is_ordered_by_id_and_limited(store: Store) -> None:
    for i in range(5):
        await issue(store, f"k{i}")
    await store.engineers.add("alice", T0)
    order = ["k3", "alice", "k0", "k4", "k1"]
    for n, subject in enumerate(order):
        now = T0 + timedelta(seconds=n)
        if subject == "alice":
            await store.engineers.disable("alice", reason="gone", now=now)
        else:
            await store.keys.revoke(subject, reason="leak", now=now)
    feed = await store.revocations.since(0)
    assert [r.subject for r in feed] == order
    ids = [r.id for r in feed]
    assert ids == sorted(ids)
    assert len(set(ids)) == 5
    assert feed[1].kind is RevocationKind.ENGINEER
    assert feed[0].kind is RevocationKind.KEY
    assert await store.revocations.head() == ids[-1]
    assert [r.subject for r in await store.revocations.since(ids[1])] == order[2:]
    assert [r.subject for r in await store.revocations.since(ids[1], limit=2)] == order[2:4]
    assert await store.revocations.since(ids[-1]) == []


@pytest.mark.postgres
async def test_revocation_is_notified_on_postgresql(postgres_url: str) -> None:
    store = await Store.open(postgres_url)
    url = make_url(postgres_url)
    conn = await asyncpg.connect(
        host=url.host,
        port=url.port,
        user=url.username,
        password=url.password,
        database=url.database,
    )
    got: asyncio.Queue[str] = asyncio.Queue()
    try:
        await conn.add_listener(REVOCATION_CHANNEL, lambda *args: got.put_nowait(args[-1]))
        await issue(store)
        await store.keys.revoke("k1", reason="leak", now=T0)
        payload = await asyncio.wait_for(got.get(), timeout=5)
        assert int(payload) == await store.revocations.head()
    finally:
        await conn.close()
        await store.aclose()
