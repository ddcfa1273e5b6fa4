"""Admitting tethers in batches (store.admission): bindings, refusals, races, on both backends."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import pytest

from tests.integration.store.helpers import T0, issue
from tether.store import IssuedKey, MachineRecord, Store, TetherRecord
from tether.store.admission import Admission


class Refusal(Exception):
    pass


def refuse_other_machine(machine_key: str) -> tuple[object, object]:
    """check_key / check_owner as a relay would write them: one machine per key and serial."""

    def check_key(issued: IssuedKey | None) -> None:
        if issued is None:
            raise Refusal("unknown key")
        if issued.bound_machine_key != machine_key:
            raise Refusal("key used by another machine")

    def check_owner(owner: MachineRecord) -> None:
        if owner.machine_key != machine_key:
            raise Refusal("serial belongs to another machine")

    return check_key, check_owner


def admission(
    key_id: str, serial: str, machine: str, at: datetime = T0, relay: str = "r1"
) -> Admission:
    check_key, check_owner = refuse_other_machine(machine)
    return Admission(
        key_id=key_id,
        serial=serial,
        machine_key=machine,
        relay_id=relay,
        relay_address="",
        now=at,
        check_key=check_key,  # type: ignore[arg-type]
        check_owner=check_owner,  # type: ignore[arg-type]
    )


async def test_first_use_binds_key_and_serial_and_registers(store: Store) -> None:
    await issue(store, "k1", "SN-1")
    (result,) = await store.tethers.admit_many([admission("k1", "SN-1", "SHA256:a")])
    assert isinstance(result, TetherRecord)
    key = await store.keys.get("k1")
    assert key is not None
    assert (key.bound_machine_key, key.first_used_at) == ("SHA256:a", T0)
    owner = await store.machines.get("sn-1")
    assert owner is not None
    assert owner.machine_key == "SHA256:a"
    tether = await store.tethers.get("SN-1")
    assert tether is not None
    assert (tether.relay_id, tether.machine_key) == ("r1", "SHA256:a")


async def test_reconnect_of_the_same_machine_keeps_the_first_use(store: Store) -> None:
    await issue(store, "k1", "SN-1")
    await store.tethers.admit_many([admission("k1", "SN-1", "SHA256:a")])
    later = T0 + timedelta(hours=1)
    (result,) = await store.tethers.admit_many([admission("k1", "SN-1", "SHA256:a", later, "r2")])
    assert isinstance(result, TetherRecord)
    key = await store.keys.get("k1")
    assert key is not None
    assert key.first_used_at == T0
    tether = await store.tethers.get("SN-1")
    assert tether is not None
    assert tether.relay_id == "r2"


async def test_a_refused_admission_writes_nothing(store: Store) -> None:
    await issue(store, "k1", "SN-1")
    await issue(store, "k2", "SN-2")
    await store.machines.bind_first_use("SN-2", "SHA256:owner", T0)
    results = await store.tethers.admit_many(
        [admission("k2", "SN-2", "SHA256:intruder"), admission("nope", "SN-3", "SHA256:c")]
    )
    assert [str(r) for r in results] == ["serial belongs to another machine", "unknown key"]
    key = await store.keys.get("k2")
    assert key is not None
    assert key.bound_machine_key is None, "the key of a refused tether stays unused"
    assert await store.tethers.get("SN-2") is None
    assert await store.machines.get("SN-3") is None


async def test_within_a_batch_the_first_machine_wins_a_key_and_a_serial(store: Store) -> None:
    await issue(store, "k1", "SN-1")
    await issue(store, "k2", "SN-2")
    await issue(store, "k3", "SN-2")
    results = await store.tethers.admit_many(
        [
            admission("k1", "SN-1", "SHA256:a"),
            admission("k1", "SN-1", "SHA256:b"),  # same key, other machine
            admission("k2", "SN-2", "SHA256:c"),
            admission("k3", "SN-2", "SHA256:d"),  # other key, same serial, other machine
        ]
    )
    assert isinstance(results[0], TetherRecord)
    assert str(results[1]) == "key used by another machine"
    assert isinstance(results[2], TetherRecord)
    assert str(results[3]) == "serial belongs to another machine"
    k3 = await store.keys.get("k3")
    assert k3 is not None
    assert k3.bound_machine_key is None


async def test_a_rebound_serial_takes_the_next_machine(store: Store) -> None:
    await issue(store, "k1", "SN-1")
    await store.machines.bind_first_use("SN-1", "SHA256:old", T0)
    await store.machines.rebind("SN-1", by="admin", now=T0)
    (result,) = await store.tethers.admit_many([admission("k1", "SN-1", "SHA256:new")])
    assert isinstance(result, TetherRecord)
    owner = await store.machines.get("SN-1")
    assert owner is not None
    assert (owner.machine_key, owner.rebound_by) == ("SHA256:new", "admin")


@pytest.mark.parametrize("same_serial", [False, True], ids=["same-key", "same-serial"])
async def test_two_relays_racing_exactly_one_machine_wins(
    store_url: str, same_serial: bool
) -> None:
    relay_a = await Store.open(store_url)
    relay_b = await Store.open(store_url)
    try:
        for i in range(10):
            await issue(relay_a, f"k{i}", "SN-1")
        attempts = [
            (relay_a if i % 2 else relay_b).tethers.admit_many(
                [admission(f"k{i}" if same_serial else "k0", "SN-1", f"SHA256:m{i}")]
            )
            for i in range(10)
        ]
        results = [r for (r,) in await asyncio.gather(*attempts)]
        winners = [r for r in results if isinstance(r, TetherRecord)]
        assert len({w.machine_key for w in winners}) == 1, results
        owner = await relay_b.machines.get("SN-1")
        assert owner is not None
        assert owner.machine_key == winners[0].machine_key
        bound = {k.bound_machine_key for k in await relay_b.keys.list()} - {None}
        assert bound == {winners[0].machine_key}
    finally:
        await relay_a.aclose()
        await relay_b.aclose()


async def test_a_naive_time_is_that_admission_s_error(store: Store) -> None:
    await issue(store, "k1", "SN-1")
    (result,) = await store.tethers.admit_many(
        [admission("k1", "SN-1", "SHA256:a", datetime(2026, 1, 1))]
    )
    assert isinstance(result, ValueError)
    assert "timezone-aware" in str(result)
