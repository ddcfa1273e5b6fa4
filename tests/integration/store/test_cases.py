"""One-click requests in the store: first-use binding of serials, cases and their races."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from tether.errors import BadInput, Refused
from tether.store import CaseStatus, KeyKind, RevocationKind, Store

from .helpers import T0, issue


async def test_first_use_binds_then_same_machine_then_other_machine(store: Store) -> None:
    first = await store.machines.bind_first_use("SN-1", "SHA256:machine-a", T0)
    assert (first.serial, first.machine_key, first.first_seen_at) == (
        "SN-1",  # serials are stored in their canonical (upper-case) form
        "SHA256:machine-a",
        T0,
    )
    assert first.rebound_by is None
    later = T0 + timedelta(hours=1)
    again = await store.machines.bind_first_use("SN-1", "SHA256:machine-a", later)
    assert again == first  # a reconnect changes nothing
    other = await store.machines.bind_first_use("SN-1", "SHA256:machine-b", later)
    assert other.machine_key == "SHA256:machine-a"
    assert await store.machines.get("SN-1") == first
    assert await store.machines.get("SN-2") is None
    assert await store.machines.get("sn-1") == first  # one machine, however it is spelt
    assert await store.machines.get_many(["sn-1", "SN-2"]) == {"SN-1": first}


async def test_rebind_forgets_the_key_and_the_next_machine_binds(store: Store) -> None:
    await store.machines.bind_first_use("SN-1", "SHA256:machine-a", T0)
    later = T0 + timedelta(days=1)
    await store.machines.rebind("SN-1", by="alice", now=later)
    forgotten = await store.machines.get("SN-1")
    assert forgotten is not None
    assert forgotten.machine_key is None
    assert (forgotten.rebound_by, forgotten.rebound_at) == ("alice", later)
    bound = await store.machines.bind_first_use("SN-1", "SHA256:machine-b", later)
    assert bound.machine_key == "SHA256:machine-b"
    assert bound.first_seen_at == later
    with pytest.raises(BadInput, match="no machine is bound to serial 'SN-9'"):
        await store.machines.rebind("SN-9", by="alice", now=later)
    # Every relay hears of the re-bind through the revocation feed (and its NOTIFY).
    (revocation,) = await store.revocations.since(0)
    assert (revocation.kind, revocation.subject) == (RevocationKind.MACHINE, "SN-1")
    assert revocation.reason == "re-bound by alice"


async def test_concurrent_first_use_all_callers_agree(store_url: str) -> None:
    relay_a = await Store.open(store_url)
    relay_b = await Store.open(store_url)
    try:
        results = await asyncio.gather(
            *[
                (relay_a if i % 2 else relay_b).machines.bind_first_use(
                    "SN-1", f"SHA256:machine-{i}", T0 + timedelta(seconds=i)
                )
                for i in range(12)
            ]
        )
        winners = {r.machine_key for r in results}
        assert len(winners) == 1
        (winner,) = winners
        assert winner is not None
        index = int(winner.rsplit("-", 1)[1])
        assert all(r.first_seen_at == T0 + timedelta(seconds=index) for r in results)
        assert (await relay_a.machines.get("SN-1")) == results[0]
    finally:
        await relay_a.aclose()
        await relay_b.aclose()


async def test_open_get_list_newest_first_and_filter(store: Store) -> None:
    one = await store.cases.open(serial="SN-1", machine_key="SHA256:m", description="disk", now=T0)
    two = await store.cases.open(
        serial="SN-2", machine_key="SHA256:n", description="net", now=T0 + timedelta(seconds=1)
    )
    assert one.status is CaseStatus.PENDING
    assert (one.decided_by, one.decided_at, one.key_id, one.key_text) == (None, None, None, None)
    assert two.id > one.id
    assert await store.cases.get(one.id) == one
    assert await store.cases.get(10**6) is None
    assert await store.cases.get(2**40) is None  # larger than any id: no database error
    assert [c.id for c in await store.cases.list()] == [two.id, one.id]
    await store.cases.deny(two.id, by="alice", reason="not ours", now=T0)
    assert [c.id for c in await store.cases.list(status=CaseStatus.PENDING)] == [one.id]
    assert [c.id for c in await store.cases.list(status=CaseStatus.DENIED)] == [two.id]


async def test_description_limits(store: Store) -> None:
    ok = await store.cases.open(serial="SN-1", machine_key="m", description="x" * 2000, now=T0)
    assert len(ok.description) == 2000
    with pytest.raises(BadInput, match="at most 2000"):
        await store.cases.open(serial="SN-1", machine_key="m", description="x" * 2001, now=T0)
    with pytest.raises(BadInput, match="needs a problem description"):
        await store.cases.open(serial="SN-1", machine_key="m", description="  ", now=T0)


async def test_approve_and_issue_then_no_other_decision(store: Store) -> None:
    case = await store.cases.open(serial="SN-1", machine_key="m", description="d", now=T0)
    await issue(store, "k1", "SN-1", kind=KeyKind.REQUEST)
    later = T0 + timedelta(minutes=1)
    issued = await store.cases.approve_and_issue(
        case.id, by="alice", key_id="k1", key_text="v4.public.xyz", now=later
    )
    assert issued.status is CaseStatus.ISSUED
    assert (issued.decided_by, issued.decided_at) == ("alice", later)
    assert (issued.key_id, issued.key_text) == ("k1", "v4.public.xyz")
    assert await store.cases.get(case.id) == issued
    with pytest.raises(Refused, match="already issued"):
        await store.cases.deny(case.id, by="bob", reason="no", now=later)
    with pytest.raises(Refused, match="already issued"):
        await store.cases.approve_and_issue(
            case.id, by="bob", key_id="k1", key_text="v4.public.abc", now=later
        )
    assert await store.cases.cancel(case.id, later) == issued  # unchanged


async def test_deny_and_cancel(store: Store) -> None:
    denied = await store.cases.open(serial="SN-1", machine_key="m", description="d", now=T0)
    after = await store.cases.deny(denied.id, by="alice", reason="unknown customer", now=T0)
    assert (after.status, after.deny_reason, after.decided_by) == (
        CaseStatus.DENIED,
        "unknown customer",
        "alice",
    )
    waiting = await store.cases.open(serial="SN-1", machine_key="m", description="d", now=T0)
    cancelled = await store.cases.cancel(waiting.id, T0 + timedelta(seconds=5))
    assert cancelled.status is CaseStatus.CANCELLED
    assert cancelled.decided_at == T0 + timedelta(seconds=5)
    with pytest.raises(Refused, match="already cancelled"):
        await store.cases.deny(waiting.id, by="alice", reason="late", now=T0)
    for call in (
        store.cases.cancel(999, T0),
        store.cases.deny(999, by="a", reason="r", now=T0),
        store.cases.approve_and_issue(999, by="a", key_id="k", key_text="t", now=T0),
    ):
        with pytest.raises(BadInput, match="no case 999"):
            await call


async def test_approve_race_exactly_one_decider_wins(store_url: str) -> None:
    vendor_a = await Store.open(store_url)
    vendor_b = await Store.open(store_url)
    try:
        case = await vendor_a.cases.open(serial="SN-1", machine_key="m", description="d", now=T0)
        for i in range(8):
            await issue(vendor_a, f"k{i}", "SN-1", kind=KeyKind.REQUEST)

        async def approve(i: int) -> str | None:
            store = vendor_a if i % 2 else vendor_b
            try:
                won = await store.cases.approve_and_issue(
                    case.id, by=f"eng{i}", key_id=f"k{i}", key_text=f"v4.public.{i}", now=T0
                )
            except Refused:
                return None
            return won.key_id

        results = await asyncio.gather(*[approve(i) for i in range(8)])
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        stored = await vendor_b.cases.get(case.id)
        assert stored is not None
        assert stored.status is CaseStatus.ISSUED
        assert stored.key_id == winners[0]
        assert stored.decided_by == f"eng{winners[0][1:]}"
    finally:
        await vendor_a.aclose()
        await vendor_b.aclose()
