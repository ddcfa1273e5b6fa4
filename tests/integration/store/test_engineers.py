"""Engineer accounts: names, duplicates, disable/enable/remove with revocations."""

from __future__ import annotations

from datetime import UTC, timedelta

import pytest

from tether.errors import BadInput, Refused
from tether.store import RevocationKind, Store

from .helpers import T0

BAD_NAMES = ["Root", "a b", "x;rm", "", "1abc", "-x", ".x", "a" * 33, "bob\n", "bob/..", "ünï"]
GOOD_NAMES = ["a", "alice", "bob.smith", "c_d-e9", "a" + "b" * 31]


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_engineer_name_validation_rejects(store: Store, name: str) -> None:
    with pytest.raises(BadInput, match="lower-case letter first") as err:
        await store.engineers.add(name, T0)
    assert err.value.exit_code == 2
    assert await store.engineers.list() == []


async def test_engineer_name_validation_accepts(store: Store) -> None:
    for name in GOOD_NAMES:
        await store.engineers.add(name, T0)
    assert [e.name for e in await store.engineers.list()] == sorted(GOOD_NAMES)


async def test_add_get_and_duplicate_is_refused(store: Store) -> None:
    added = await store.engineers.add("alice", T0)
    assert added.active
    assert added.created_at == T0
    got = await store.engineers.get("alice")
    assert got == added
    assert got is not None
    assert got.created_at.tzinfo is UTC
    with pytest.raises(Refused, match="engineer alice already exists"):
        await store.engineers.add("alice", T0 + timedelta(hours=1))
    assert await store.engineers.get("bob") is None


async def test_disable_appends_one_revocation_and_enable_restores(store: Store) -> None:
    await store.engineers.add("alice", T0)
    disabled = await store.engineers.disable("alice", reason="left the company", now=T0)
    assert not disabled.active
    assert disabled.disabled_at == T0
    again = await store.engineers.disable("alice", reason="again", now=T0 + timedelta(hours=1))
    assert again == disabled
    feed = await store.revocations.since(0)
    assert [(r.kind, r.subject, r.reason) for r in feed] == [
        (RevocationKind.ENGINEER, "alice", "left the company")
    ]
    enabled = await store.engineers.enable("alice")
    assert enabled.active
    assert (await store.engineers.get("alice")) == enabled
    assert len(await store.revocations.since(0)) == 1


async def test_remove_deletes_and_appends_removed_revocation(store: Store) -> None:
    await store.engineers.add("alice", T0)
    await store.engineers.add("bob", T0)
    await store.engineers.remove("alice", now=T0 + timedelta(minutes=1))
    assert await store.engineers.get("alice") is None
    assert [e.name for e in await store.engineers.list()] == ["bob"]
    (rev,) = await store.revocations.since(0)
    assert (rev.kind, rev.subject, rev.reason) == (RevocationKind.ENGINEER, "alice", "removed")
    assert rev.at == T0 + timedelta(minutes=1)
    await store.engineers.add("alice", T0 + timedelta(days=1))  # the name is free again


async def test_unknown_engineer_is_bad_input(store: Store) -> None:
    with pytest.raises(BadInput, match="no engineer named 'ghost'"):
        await store.engineers.disable("ghost", reason="x", now=T0)
    with pytest.raises(BadInput, match="no engineer named 'ghost'"):
        await store.engineers.enable("ghost")
    with pytest.raises(BadInput, match="no engineer named 'ghost'"):
        await store.engineers.remove("ghost", now=T0)
    assert await store.revocations.head() == 0
