"""Database.write_at_once: a whole transaction as one step of the event loop, both backends."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.integration.store.helpers import T0
from tether.store import Store, StoreConflict, sqlite_url
from tether.store.models import MachineRow


def _machine(serial: str) -> MachineRow:
    return MachineRow(serial=serial, machine_key="SHA256:a", first_seen_at=T0)


async def test_what_the_work_writes_is_committed_and_read_back(store: Store) -> None:
    def write(session: Session) -> list[str]:
        session.add_all([_machine("SN-1"), _machine("SN-2")])
        session.flush()
        return list(session.scalars(select(MachineRow.serial).order_by(MachineRow.serial)))

    assert await store._db.write_at_once("writing two machines", write) == ["SN-1", "SN-2"]
    assert (await store.machines.get("SN-2")) is not None


async def test_a_failing_statement_writes_nothing_and_says_which_database(store: Store) -> None:
    def write(session: Session) -> None:
        session.add(_machine("SN-1"))
        session.flush()
        session.add(_machine("SN-1"))  # the same primary key again
        session.flush()

    with pytest.raises(StoreConflict, match="while writing a duplicate") as caught:
        await store._db.write_at_once("writing a duplicate", write)
    assert store._db.url_for_display in str(caught.value)
    assert (await store.machines.get("SN-1")) is None


async def test_an_exception_of_the_work_rolls_back_and_leaves_as_it_is(store: Store) -> None:
    class Refused(Exception):
        pass

    def write(session: Session) -> None:
        session.add(_machine("SN-1"))
        session.flush()
        raise Refused("no")

    with pytest.raises(Refused):
        await store._db.write_at_once("writing", write)
    assert (await store.machines.get("SN-1")) is None


async def test_on_sqlite_the_work_runs_off_the_event_loop_thread(tmp_path: Path) -> None:
    """The loop waits once for the whole transaction, whatever its statements."""
    store = await Store.open(sqlite_url(tmp_path / "t.db"))
    try:
        seen: list[threading.Thread] = []
        await store._db.write_at_once("looking", lambda _: seen.append(threading.current_thread()))
        assert len(seen) == 1
        assert seen[0] is not threading.main_thread()
    finally:
        await store.aclose()
