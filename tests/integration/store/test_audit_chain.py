"""Audit chains in the database: same format and verifier as the agent's file log."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import text

from tether.audit import GENESIS, verify
from tether.store import PendingEvent, Store, StoreError

from .helpers import T0


async def _sql(store: Store, statement: str, **params: object) -> None:
    """Change rows behind the repository's back, as someone with database access could."""
    async with store._db.write("tampering") as session:
        await session.execute(text(statement), params)


async def _fill(store: Store, chain: str = "vendor", n: int = 6) -> None:
    for i in range(1, n + 1):
        await store.audit.append(chain, "test.appended", now=T0 + timedelta(seconds=i), i=i)


async def test_appends_chain_like_the_file_log(store: Store) -> None:
    first = await store.audit.append("vendor", "key.issued", now=T0, key_id="k1", serial="S1")
    second = await store.audit.append("vendor", "key.revoked", now=T0, key_id="k1", by="alice")

    report = await store.audit.read("vendor")

    assert (first.seq, first.prev) == (1, GENESIS)
    assert (second.seq, second.prev) == (2, first.hash)
    assert report.entries == (first, second)
    assert report.verification.ok
    assert (report.verification.head_seq, report.verification.head) == (2, second.hash)
    # The same verifier accepts the rows as lines of a file.
    assert verify([e.to_json_line() for e in report.entries]).ok


async def test_chains_are_independent(store: Store) -> None:
    await _fill(store, "vendor", 2)
    await _fill(store, "relay:r1", 3)

    assert await store.audit.chains() == ["anchors", "relay:r1", "vendor"]
    assert [e.seq for e in (await store.audit.read("relay:r1")).entries] == [1, 2, 3]
    assert (await store.audit.read("relay:nobody")).verification.ok


async def test_append_many_writes_all_in_one_go(store: Store) -> None:
    events = [PendingEvent("tether.up", {"serial": f"S{i}"}, T0) for i in range(3)]

    written = await store.audit.append_many("relay:r1", events)

    assert [e.seq for e in written] == [1, 2, 3]
    assert (await store.audit.read("relay:r1")).entries == tuple(written)


@pytest.mark.parametrize(
    ("event", "fields", "words"),
    [
        ("Bad Name", {}, "dotted lower-case"),
        ("key.issued", {"password": "x"}, "looks like a secret"),
        ("key.issued", {"note": "-----BEGIN OPENSSH PRIVATE KEY-----"}, "private key"),
    ],
)
async def test_bad_or_secret_events_are_refused_and_nothing_is_written(
    store: Store, event: str, fields: dict[str, str], words: str
) -> None:
    good = PendingEvent("key.issued", {"key_id": "k1"}, T0)
    with pytest.raises(ValueError, match=words):
        await store.audit.append_many("vendor", [good, PendingEvent(event, fields, T0)])
    assert (await store.audit.read("vendor")).entries == ()


async def test_a_bad_chain_name_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="chain name"):
        await store.audit.append("Vendor; DROP", "key.issued", now=T0)


async def test_editing_one_row_is_detected_and_named(store: Store) -> None:
    await _fill(store)
    await _sql(
        store,
        "UPDATE audit_events SET fields = :f WHERE chain = 'vendor' AND seq = 3",
        f='{"i":33}',
    )

    result = (await store.audit.read("vendor")).verification

    assert not result.ok
    assert [(p.kind, p.seq) for p in result.problems] == [("changed", 3)]
    assert "entry 3 (test.appended" in result.problems[0].message
    assert "row 3 was changed after it was written" in result.problems[0].message


async def test_deleting_one_row_is_detected_and_named(store: Store) -> None:
    await _fill(store)
    await _sql(store, "DELETE FROM audit_events WHERE chain = 'vendor' AND seq = 4")

    result = (await store.audit.read("vendor")).verification

    assert [(p.kind, p.seq) for p in result.problems] == [("missing", 4)]
    assert "entry 4 is missing" in result.problems[0].message


async def _id(store: Store, chain: str, seq: int) -> int:
    async with store._db.read("looking") as session:
        found = await session.scalar(
            text("SELECT id FROM audit_events WHERE chain = :c AND seq = :s"),
            {"c": chain, "s": seq},
        )
    assert isinstance(found, int)
    return found


async def test_swapping_two_rows_is_detected_and_named(store: Store) -> None:
    await _fill(store)
    # Swap the write order of entries 2 and 3 (their ids), as if the rows traded places.
    two, three = await _id(store, "vendor", 2), await _id(store, "vendor", 3)
    await _sql(store, "UPDATE audit_events SET id = -1 WHERE id = :i", i=two)
    await _sql(store, "UPDATE audit_events SET id = :n WHERE id = :i", n=two, i=three)
    await _sql(store, "UPDATE audit_events SET id = :n WHERE id = -1", n=three)

    result = (await store.audit.read("vendor")).verification

    assert [(p.kind, p.seq) for p in result.problems] == [("reordered", 2)]
    assert "entry 2 (test.appended" in result.problems[0].message
    assert "out of order" in result.problems[0].message


async def test_swapping_the_contents_of_two_rows_is_detected(store: Store) -> None:
    await _fill(store)
    await _sql(
        store,
        "UPDATE audit_events SET event = 'test.swapped' WHERE chain = 'vendor' AND seq IN (2, 5)",
    )

    result = (await store.audit.read("vendor")).verification

    assert [(p.kind, p.seq) for p in result.problems] == [("changed", 2), ("changed", 5)]


async def test_a_row_that_is_no_longer_json_is_reported_not_fatal(store: Store) -> None:
    await _fill(store, n=3)
    await _sql(store, "UPDATE audit_events SET fields = '{oops' WHERE seq = 2")

    report = await store.audit.read("vendor")

    assert [e.seq for e in report.entries] == [1, 3]
    kinds = [(p.kind, p.seq) for p in report.verification.problems]
    assert ("malformed", None) in kinds
    assert "row 2 is not a readable audit entry" in report.verification.problems[0].message
    # A damaged last row stops appends (fail closed) instead of forking a new chain.
    await _sql(store, "UPDATE audit_events SET fields = '{oops' WHERE seq = 3")
    with pytest.raises(StoreError, match="cannot be read"):
        await store.audit.append("vendor", "test.after", now=T0)


async def test_a_rewritten_chain_is_caught_by_an_earlier_head(store: Store) -> None:
    await _fill(store, n=4)
    head = (await store.audit.read("vendor")).verification
    await _sql(store, "DELETE FROM audit_events WHERE chain = 'vendor' AND seq = 4")

    against = await store.audit.read("vendor", expected_head=(head.head_seq, head.head))

    assert [(p.kind, p.seq) for p in against.verification.problems] == [("truncated", 4)]


async def test_removing_the_newest_rows_is_detected_and_their_numbers_never_reused(
    store: Store,
) -> None:
    """Security review, defect 22: deleting a chain's newest rows left it "intact"."""
    await _fill(store, n=6)
    await _sql(store, "DELETE FROM audit_events WHERE chain = 'vendor' AND seq > 4")

    cut = (await store.audit.read("vendor")).verification
    await store.audit.append("vendor", "test.after", now=T0)
    report = await store.audit.read("vendor")

    assert [(p.kind, p.seq) for p in cut.problems] == [("truncated", 5)]
    assert "entries 5 to 6 were removed from the end" in cut.problems[0].message
    assert [e.seq for e in report.entries] == [1, 2, 3, 4, 7]  # 5 and 6 are not reused
    assert [(p.kind, p.seq) for p in report.verification.problems] == [("missing", 5)]
    assert "entries 5 to 6 are missing" in report.verification.problems[0].message


async def test_removing_every_row_of_a_chain_is_detected(store: Store) -> None:
    await _fill(store, "relay:r1", 3)
    await _sql(store, "DELETE FROM audit_events WHERE chain = 'relay:r1'")

    assert "relay:r1" in await store.audit.chains()
    problems = (await store.audit.read("relay:r1")).verification.problems
    assert [(p.kind, p.seq) for p in problems] == [("truncated", 1)]
    assert "entries 1 to 3 were removed" in problems[0].message


async def test_removing_the_newest_anchors_is_detected_in_both_chains(store: Store) -> None:
    await _fill(store, "vendor", 3)
    await _fill(store, "relay:r1", 2)
    await _fill(store, "vendor", 2)  # vendor 4 and 5: the newest two anchors
    await _sql(store, "DELETE FROM audit_events WHERE chain = 'anchors' AND seq > 5")

    anchors = (await store.audit.read("anchors")).verification
    vendor = (await store.audit.read("vendor")).verification
    relay = (await store.audit.read("relay:r1")).verification
    await store.audit.append("vendor", "test.after", now=T0)  # does not heal it
    later = (await store.audit.read("vendor")).verification

    assert [(p.kind, p.seq) for p in anchors.problems] == [("unanchored", 4)]
    assert (
        "entries 4 to 5 of chain vendor (the newest) have no anchor" in anchors.problems[0].message
    )
    assert [(p.kind, p.seq) for p in vendor.problems] == [("unanchored", 4)]
    assert relay.ok
    assert [(p.kind, p.seq) for p in later.problems] == [("unanchored", 4)]
    assert "entries 4 to 5 have no anchor" in later.problems[0].message


async def test_a_writer_remembers_its_head_even_if_chain_and_anchors_are_cut(
    store: Store,
) -> None:
    await _fill(store, "vendor", 4)
    # Both records of entries 3 and 4 go: the chain's rows and the anchors naming them.
    await _sql(store, "DELETE FROM audit_events WHERE chain = 'vendor' AND seq > 2")
    await _sql(store, "DELETE FROM audit_events WHERE chain = 'anchors' AND seq > 2")

    await store.audit.append("vendor", "test.after", now=T0)  # the same process writes on
    report = (await store.audit.read("vendor")).verification

    assert [(p.kind, p.seq) for p in report.problems] == [("missing", 3), ("unanchored", 3)]


async def test_the_anchors_chain_is_the_stores_own(store: Store) -> None:
    with pytest.raises(ValueError, match="written by the store itself"):
        await store.audit.append("anchors", "audit.anchored", now=T0, chain="vendor")


async def test_concurrent_writers_on_several_stores_never_fork_the_chain(
    store: Store, store_url: str
) -> None:
    others = [await Store.open(store_url) for _ in range(3)]
    try:

        async def write(s: Store, w: int) -> None:
            for i in range(8):
                await s.audit.append("relay:shared", "test.appended", now=T0, w=w, i=i)

        await asyncio.gather(*(write(s, w) for w, s in enumerate([store, *others])))
    finally:
        for s in others:
            await s.aclose()

    report = await store.audit.read("relay:shared")
    assert report.verification.ok
    assert [e.seq for e in report.entries] == list(range(1, 33))


async def test_heads_are_stored_and_flags_stay(store: Store) -> None:
    h1, h2 = "a" * 64, "b" * 64
    assert await store.audit.head("S1", "SHA256:m") is None

    await store.audit.put_head(serial="S1", machine_key="SHA256:m", seq=3, hash=h1, now=T0)
    stored = await store.audit.head("S1", "SHA256:m")
    flagged = await store.audit.flag_head(
        serial="S1", machine_key="SHA256:m", seq=5, hash=h2, problem="entry 3 differs", now=T0
    )
    await store.audit.put_head(serial="S1", machine_key="SHA256:m", seq=6, hash=h1, now=T0)
    again = await store.audit.flag_head(
        serial="S1", machine_key="SHA256:m", seq=2, hash=h1, problem="went back", now=T0
    )

    assert stored is not None
    assert (stored.seq, stored.hash, stored.mismatches) == (3, h1, 0)
    assert (flagged.seq, flagged.mismatches, flagged.mismatch) == (5, 1, "entry 3 differs")
    assert (again.seq, again.mismatches, again.mismatch) == (2, 2, "went back")
    assert [h.serial for h in await store.audit.heads(mismatched=True)] == ["S1"]
    with pytest.raises(ValueError, match="64 lower-case hex"):
        await store.audit.put_head(serial="S1", machine_key="m", seq=1, hash="zz", now=T0)
