"""Issued keys: recording, listing, first-use binding, revocation (both backends)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

import pytest

from tether.errors import BadInput
from tether.store import KeyKind, RevocationKind, Store, StoreError

from .helpers import T0, issue


async def test_record_and_get_round_trips_every_field(store: Store) -> None:
    recorded = await issue(
        store, kind=KeyKind.REQUEST, description="disk full on /var", ports=(22, 8443)
    )
    got = await store.keys.get("k1")
    assert got == recorded
    assert got is not None
    assert got.kind is KeyKind.REQUEST
    assert got.ports == (22, 8443)
    assert got.description == "disk full on /var"
    assert got.issued_at == T0
    assert got.issued_at.tzinfo is UTC
    assert got.expires_at.tzinfo is UTC
    assert (got.bound_machine_key, got.first_used_at, got.revoked_at) == (None, None, None)
    assert not got.revoked
    assert not got.used


async def test_timestamps_round_trip_aware_utc(store: Store) -> None:
    plus2 = timezone(timedelta(hours=2))
    local = datetime(2026, 6, 1, 14, 30, 15, 987654, tzinfo=plus2)
    await issue(store, issued_at=local, not_before=local, expires_at=local + timedelta(days=1))
    got = await store.keys.get("k1")
    assert got is not None
    assert got.issued_at == local
    assert got.issued_at.tzinfo is UTC
    assert got.issued_at.hour == 12
    assert got.issued_at.microsecond == 987654


async def test_naive_datetimes_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        await issue(store, issued_at=datetime(2026, 1, 1))
    await issue(store)
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.machines.bind_first_use("SN-1", "SHA256:m", datetime(2026, 1, 1))
    assert await store.keys.get("k1") is not None


async def test_duplicate_key_id_is_a_store_error(store: Store) -> None:
    await issue(store)
    with pytest.raises(StoreError, match="'k1' is already recorded"):
        await issue(store, serial="SN-2")
    keys = await store.keys.list()
    assert [k.serial for k in keys] == ["SN-1"]


@pytest.mark.parametrize("ports", [(0,), (65536,), (22, -1)])
async def test_bad_ports_are_bad_input(store: Store, ports: tuple[int, ...]) -> None:
    with pytest.raises(BadInput, match="port"):
        await issue(store, ports=ports)


async def test_get_unknown_key_is_none(store: Store) -> None:
    assert await store.keys.get("nope") is None


async def test_list_newest_first_by_serial_and_expiry(store: Store) -> None:
    await issue(store, "old", "SN-1", issued_at=T0 - timedelta(days=3), expires_at=T0)
    await issue(store, "mid", "SN-2", issued_at=T0 - timedelta(days=2))
    await issue(store, "new", "SN-1", issued_at=T0 - timedelta(days=1))
    assert [k.key_id for k in await store.keys.list()] == ["new", "mid", "old"]
    assert [k.key_id for k in await store.keys.list(serial="SN-1")] == ["new", "old"]
    live = await store.keys.list(include_expired=False, now=T0 + timedelta(seconds=1))
    assert [k.key_id for k in live] == ["new", "mid"]
    live_sn1 = await store.keys.list(serial="SN-1", include_expired=False, now=T0)
    assert [k.key_id for k in live_sn1] == ["new"]


async def test_revoke_writes_exactly_one_revocation(store: Store) -> None:
    await issue(store)
    revoked = await store.keys.revoke("k1", reason="customer asked", now=T0)
    assert revoked.revoked
    assert revoked.revoked_at == T0
    assert revoked.revoke_reason == "customer asked"
    again = await store.keys.revoke("k1", reason="twice", now=T0 + timedelta(hours=1))
    assert again == revoked
    assert await store.keys.get("k1") == revoked
    feed = await store.revocations.since(0)
    assert [(r.kind, r.subject, r.reason, r.at) for r in feed] == [
        (RevocationKind.KEY, "k1", "customer asked", T0)
    ]


async def test_concurrent_revokes_write_one_revocation(store_url: str) -> None:
    one = await Store.open(store_url)
    two = await Store.open(store_url)
    try:
        await issue(one)
        results = await asyncio.gather(
            *[(one if i % 2 else two).keys.revoke("k1", reason=f"r{i}", now=T0) for i in range(6)]
        )
        assert len({r.revoke_reason for r in results}) == 1
        assert len(await one.revocations.since(0)) == 1
    finally:
        await one.aclose()
        await two.aclose()


async def test_revoke_unknown_key_is_bad_input(store: Store) -> None:
    with pytest.raises(BadInput, match="no key with id 'ghost'"):
        await store.keys.revoke("ghost", reason="x", now=T0)
    assert await store.revocations.head() == 0
