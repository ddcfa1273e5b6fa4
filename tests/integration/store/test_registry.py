"""The live tether registry and the relays table (both backends)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tether.errors import BadInput
from tether.store import Store, StoreError, TetherRecord

from .helpers import T0, issue


async def _register(store: Store, serial: str, relay_id: str, **kw: object) -> TetherRecord:
    args: dict[str, object] = {
        "key_id": "k1",
        "relay_address": f"{relay_id}.internal:2222",
        "machine_key": "SHA256:machine-a",
        "now": T0,
    }
    args.update(kw)
    return await store.tethers.register(serial=serial, relay_id=relay_id, **args)  # type: ignore[arg-type]


async def test_register_get_list(store: Store) -> None:
    await issue(store)
    rec = await _register(store, "SN-1", "relay-a")
    assert await store.tethers.get("SN-1") == rec
    assert rec.connected_at == rec.last_seen_at == T0
    assert await store.tethers.get("SN-2") is None
    await _register(store, "SN-0", "relay-b")
    assert [t.serial for t in await store.tethers.list()] == ["SN-0", "SN-1"]


async def test_a_look_alike_serial_is_the_same_row_or_refused(store: Store) -> None:
    """Security review, defect 21: ``sn-1`` or ``SN-1.`` cannot be a second machine."""
    await issue(store)
    await _register(store, "SN-1", "relay-a")
    await _register(store, "sn-1", "relay-b", now=T0 + timedelta(seconds=1))
    (only,) = await store.tethers.list()
    assert (only.serial, only.relay_id) == ("SN-1", "relay-b")
    assert await store.tethers.get("Sn-1") == only
    with pytest.raises(BadInput, match=r"invalid serial 'SN-1\.'"):
        await _register(store, "SN-1.", "relay-c")
    case = await store.cases.open(serial="sn-1", machine_key="SHA256:m", description="x", now=T0)
    assert case.serial == "SN-1"
    with pytest.raises(BadInput, match=r"invalid serial 'SN-1\.'"):
        await store.cases.open(serial="SN-1.", machine_key="SHA256:m", description="x", now=T0)
    assert [c.serial for c in await store.cases.list()] == ["SN-1"]
    assert [k.key_id for k in await store.keys.list(serial="sn-1")] == ["k1"]


async def test_reconnect_replaces_the_row(store: Store) -> None:
    await issue(store)
    await _register(store, "SN-1", "relay-a")
    later = T0 + timedelta(minutes=5)
    moved = await _register(store, "SN-1", "relay-b", now=later, machine_key="SHA256:machine-a")
    got = await store.tethers.get("SN-1")
    assert got == moved
    assert got is not None
    assert (got.relay_id, got.relay_address, got.connected_at) == (
        "relay-b",
        "relay-b.internal:2222",
        later,
    )
    assert len(await store.tethers.list()) == 1


async def test_unregister_does_not_remove_a_row_re_registered_by_another_relay(
    store: Store,
) -> None:
    await issue(store)
    await _register(store, "SN-1", "relay-a")
    await _register(store, "SN-1", "relay-b", now=T0 + timedelta(seconds=1))
    await store.tethers.unregister("SN-1", "relay-a")  # the old relay's late clean-up
    got = await store.tethers.get("SN-1")
    assert got is not None
    assert got.relay_id == "relay-b"
    await store.tethers.unregister("SN-1", "relay-b")
    assert await store.tethers.get("SN-1") is None


async def test_touch_only_by_the_holding_relay(store: Store) -> None:
    await issue(store)
    await _register(store, "SN-1", "relay-a")
    await store.tethers.touch("SN-1", "relay-other", T0 + timedelta(minutes=9))
    got = await store.tethers.get("SN-1")
    assert got is not None
    assert got.last_seen_at == T0
    await store.tethers.touch("SN-1", "relay-a", T0 + timedelta(minutes=1))
    got = await store.tethers.get("SN-1")
    assert got is not None
    assert got.last_seen_at == T0 + timedelta(minutes=1)
    assert got.connected_at == T0


async def test_clear_relay_removes_only_its_rows(store: Store) -> None:
    await issue(store)
    for serial in ("SN-1", "SN-2", "SN-3"):
        await _register(store, serial, "relay-a")
    await _register(store, "SN-4", "relay-b")
    assert await store.tethers.clear_relay("relay-a") == 3
    assert await store.tethers.clear_relay("relay-a") == 0
    assert [t.serial for t in await store.tethers.list()] == ["SN-4"]


async def test_register_with_unknown_key_is_a_store_error(store: Store) -> None:
    with pytest.raises(StoreError, match="registering tether SN-1"):
        await _register(store, "SN-1", "relay-a", key_id="ghost")
    assert await store.tethers.list() == []


async def test_a_relay_id_held_by_a_live_relay_cannot_be_claimed(store: Store) -> None:
    assert await store.relays.claim("relay-a", "one", "10.0.0.1:2222", T0, 15) is None
    holder = await store.relays.claim(
        "relay-a", "two", "10.0.0.2:2222", T0 + timedelta(seconds=5), 15
    )
    assert holder is not None
    assert (holder.instance, holder.address) == ("one", "10.0.0.1:2222")
    # The same process may claim again (a restart of its listener), and a dead holder's
    # id is free: 15 s without a heartbeat.
    assert await store.relays.claim("relay-a", "one", "10.0.0.1:2222", T0, 15) is None
    assert (
        await store.relays.claim("relay-a", "two", "10.0.0.2:2222", T0 + timedelta(seconds=16), 15)
        is None
    )
    (row,) = await store.relays.list()
    assert (row.instance, row.address, row.started_at) == (
        "two",
        "10.0.0.2:2222",
        T0 + timedelta(seconds=16),
    )


async def test_heartbeats_count_tethers_and_tell_a_relay_it_was_given_up(store: Store) -> None:
    await store.relays.claim("relay-a", "one", "10.0.0.1:2222", T0, 15)
    assert await store.relays.heartbeat(
        "relay-a", "one", "10.0.0.1:2222", T0 + timedelta(seconds=5), 42
    )
    (row,) = await store.relays.list()
    assert (row.tethers, row.last_seen_at, row.started_at) == (42, T0 + timedelta(seconds=5), T0)
    # Another process took the id over: the old one's heartbeat says so.
    await store.relays.claim("relay-a", "two", "10.0.0.2:2222", T0 + timedelta(seconds=30), 15)
    assert not await store.relays.heartbeat(
        "relay-a", "one", "10.0.0.1:2222", T0 + timedelta(seconds=31), 42
    )
    await store.relays.leave("relay-a", "one")  # not its id any more: nothing happens
    assert [r.instance for r in await store.relays.list()] == ["two"]
    await store.relays.leave("relay-a", "two")
    assert await store.relays.list() == []


async def test_a_dead_relays_tethers_and_channels_are_swept(store: Store) -> None:
    await issue(store)
    await store.relays.claim("relay-a", "one", "10.0.0.1:2222", T0, 15)
    await store.relays.claim("relay-b", "two", "10.0.0.2:2222", T0, 15)
    await _register(store, "SN-1", "relay-a")
    await _register(store, "SN-2", "relay-b")
    await store.relays.heartbeat("relay-b", "two", "10.0.0.2:2222", T0 + timedelta(seconds=20), 1)
    assert await store.relays.sweep(T0 + timedelta(seconds=10), 15) == []
    assert await store.relays.sweep(T0 + timedelta(seconds=21), 15) == ["relay-a"]
    assert [t.serial for t in await store.tethers.list()] == ["SN-2"]
    assert [r.relay_id for r in await store.relays.list()] == ["relay-b"]
    # Nothing of a dead relay comes back by itself; its heartbeat learns it was given up.
    assert not await store.relays.heartbeat(
        "relay-a", "one", "10.0.0.1:2222", T0 + timedelta(seconds=22), 1
    )


async def test_sealed_password_is_stored_per_key_and_replaced(store_url: str) -> None:
    from datetime import UTC, datetime, timedelta

    from tether.store import KeyKind, Store

    store = await Store.open(store_url)
    try:
        now = datetime(2026, 11, 25, tzinfo=UTC)
        await store.keys.record_issued(
            key_id="k1",
            serial="S-1",
            kind=KeyKind.MANUAL,
            issued_at=now,
            not_before=now,
            expires_at=now + timedelta(days=1),
            ports=(22,),
            relay="r:1",
            relay_host_key="SHA256:" + "A" * 43,
            issued_by="t",
        )
        assert await store.passwords.get("k1") is None
        await store.passwords.put(key_id="k1", serial="S-1", sealed="hpke1.first", now=now)
        await store.passwords.put(key_id="k1", serial="S-1", sealed="hpke1.second", now=now)
        stored = await store.passwords.get("k1")
        assert stored is not None
        assert stored.sealed == "hpke1.second"
    finally:
        await store.aclose()


async def test_unregister_many_removes_only_rows_still_held_by_that_relay(store: Store) -> None:
    await issue(store)
    for serial in ("SN-1", "SN-2", "SN-3"):
        await _register(store, serial, "relay-a")
    await _register(store, "SN-2", "relay-b")  # moved to another relay meanwhile
    assert await store.tethers.unregister_many(
        [("SN-1", "relay-a"), ("SN-2", "relay-a"), ("SN-3", "relay-a")]
    ) == [None, None, None]
    remaining = await store.tethers.list()
    assert [(t.serial, t.relay_id) for t in remaining] == [("SN-2", "relay-b")]
