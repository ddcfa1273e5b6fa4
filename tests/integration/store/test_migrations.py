"""Schema migrations: upgrade, downgrade, and agreement with the ORM models."""

from __future__ import annotations

from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from tether.errors import NotReady
from tether.store import Store, StoreError, head_revision, normalize_url
from tether.store.db import create_engine
from tether.store.models import Base

from .helpers import T0, issue

TABLES = {
    "issued_keys",
    "engineers",
    "tethers",
    "relays",
    "revocations",
    "sealed_passwords",
    "api_tokens",
    "machines",
    "cases",
    "live_channels",
    "audit_events",
    "audit_heads",
}


async def _run(url: str, fn: Any) -> Any:
    engine = create_engine(normalize_url(url))
    try:
        async with engine.begin() as conn:
            return await conn.run_sync(fn)
    finally:
        await engine.dispose()


def _tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names()) - {"alembic_version"}


def _diff(conn: Connection) -> list[Any]:
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def test_upgrade_head_on_an_empty_database(store_url: str) -> None:
    bare = await Store.open(store_url, migrate=False)
    try:
        assert await bare.schema_revision() is None
        with pytest.raises(NotReady, match="schema revision none"):
            await bare.require_current_schema()
        await bare.upgrade()
        assert await bare.schema_revision() == head_revision()
        await bare.require_current_schema()
    finally:
        await bare.aclose()
    assert await _run(store_url, _tables) == TABLES


async def test_open_twice_is_idempotent(store_url: str) -> None:
    first = await Store.open(store_url)
    await issue(first)
    await first.aclose()
    second = await Store.open(store_url)
    try:
        assert await second.schema_revision() == head_revision()
        assert await second.keys.get("k1") is not None
    finally:
        await second.aclose()


async def test_downgrade_to_base_and_up_again(store: Store, store_url: str) -> None:
    await issue(store)
    await store.downgrade("base")
    assert await store.schema_revision() is None
    assert await _run(store_url, _tables) == set()
    await store.upgrade()
    assert await store.schema_revision() == head_revision()
    assert await store.keys.get("k1") is None
    await issue(store)
    await store.engineers.add("alice", T0)
    assert await store.keys.get("k1") is not None


async def test_models_match_migrations(store: Store, store_url: str) -> None:
    assert await _run(store_url, _diff) == []


async def test_a_schema_from_a_newer_tether_is_refused(store: Store, store_url: str) -> None:
    await _run(
        store_url, lambda c: c.execute(text("UPDATE alembic_version SET version_num='9999'"))
    )
    with pytest.raises(StoreError, match="newer version of Tether"):
        await Store.open(store_url)
    with pytest.raises(NotReady, match="schema revision 9999"):
        await store.require_current_schema()


async def test_sqlite_connections_use_wal_busy_timeout_and_foreign_keys(tmp_path: Any) -> None:
    from tether.store import sqlite_url

    url = sqlite_url(tmp_path / "p.db")
    store = await Store.open(url)
    await store.aclose()

    def pragmas(conn: Connection) -> tuple[Any, ...]:
        return tuple(
            conn.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in ("journal_mode", "busy_timeout", "foreign_keys")
        )

    assert await _run(url, pragmas) == ("wal", 5000, 1)


async def test_serials_become_canonical_and_look_alike_rows_go(
    store: Store, store_url: str
) -> None:
    """Rows written before serials had one form (defect 21) are upper-cased by 0005."""
    await store.downgrade("0004")
    await issue(store, "k1", "ACME-1")

    def old_rows(conn: Connection) -> None:
        conn.execute(text("UPDATE issued_keys SET serial = 'acme-1'"))  # as typed, back then
        for serial, key in (("acme-1", "SHA256:a"), ("acme-2", "SHA256:b"), ("Acme-2", "SHA256:c")):
            conn.execute(
                text(
                    "INSERT INTO machines (serial, machine_key, first_seen_at) VALUES (:s, :m, :t)"
                ),
                {"s": serial, "m": key, "t": T0.replace(tzinfo=None)},
            )
        for serial, relay in (("ACME-3", "relay-a"), ("acme-3", "relay-b")):
            conn.execute(
                text(
                    "INSERT INTO tethers (serial, key_id, relay_id, relay_address, machine_key, "
                    "connected_at, last_seen_at) VALUES (:s, 'k1', :r, '', 'SHA256:a', :t, :t)"
                ),
                {"s": serial, "r": relay, "t": T0.replace(tzinfo=None)},
            )

    await _run(store_url, old_rows)
    await store.upgrade()
    key = await store.keys.get("k1")
    assert key is not None
    assert key.serial == "ACME-1"
    one = await store.machines.get("ACME-1")
    assert one is not None
    assert one.machine_key == "SHA256:a"
    assert set(await store.machines.get_many(["ACME-1", "ACME-2"])) == {"ACME-1", "ACME-2"}
    assert [(t.serial, t.relay_id) for t in await store.tethers.list()] == [("ACME-3", "relay-a")]


async def test_chains_written_before_anchors_get_one_and_verify(store: Store) -> None:
    """0006 anchors the chains of an older Tether, so they do not read as unanchored."""
    await store.audit.append("vendor", "key.issued", now=T0, key_id="k1")
    await store.audit.append("relay:r1", "tether.up", now=T0, serial="S1")
    await store.downgrade("0005")  # no anchors: as an older Tether wrote them
    await store.upgrade()

    for chain in ("vendor", "relay:r1", "anchors"):
        assert (await store.audit.read(chain)).verification.ok, chain
    assert len((await store.audit.read("anchors")).entries) == 2
