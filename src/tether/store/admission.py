"""Admitting tethers in batches: key check, first-use bindings and registry rows.

A relay admits a tether by checking the vendor's record of its key, binding the key to
the machine key that presents it (first use), binding the serial to that machine
(trust on first use) and registering the tether. Done one transaction per tether, the
transaction's fixed costs dominate a burst (a relay restart brings thousands of
machines back at once); :func:`admit_many` does any number of admissions in one
transaction, with a fixed number of statements, and each admission still succeeds or
fails on its own: a refused admission writes nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import Table, bindparam, case, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from tether.errors import BadInput
from tether.store.db import Database
from tether.store.models import IssuedKeyRow, MachineRow, TetherRow
from tether.store.records import IssuedKey, MachineRecord, TetherRecord
from tether.store.types import require_aware, require_serial, require_text


@dataclass(frozen=True)
class Admission:
    """One tether asking to be admitted, with the checks that may refuse it.

    ``check_key`` is called with the vendor's record of the key as it would be after
    this admission (bound to ``machine_key`` if no machine used it yet), or ``None``
    if the vendor never issued it. ``check_owner`` is called with the serial's
    machine binding as it would be after this admission. Either refuses by raising;
    the exception becomes this admission's result. They run inside the transaction,
    on SQLite in the store's writer thread (:meth:`Database.write_at_once`): they may
    read the caller's state, never change it.
    """

    key_id: str
    serial: str
    machine_key: str
    relay_id: str
    relay_address: str
    now: datetime
    check_key: Callable[[IssuedKey | None], None]
    check_owner: Callable[[MachineRecord], None]
    #: When the tether connected, if before ``now`` (a live tether admitted again).
    connected_at: datetime | None = None


#: What :func:`admit_many` returns for each admission: its registry row, or why not.
AdmissionResult = TetherRecord | Exception


async def admit_many(db: Database, admissions: Sequence[Admission]) -> list[AdmissionResult]:
    """Admit ``admissions`` in one write transaction; return one result per admission.

    Admissions are decided in order, each seeing the bindings made by those before
    it. The rows read are locked (``FOR UPDATE`` on PostgreSQL; SQLite has one writer),
    and a serial first bound by another relay meanwhile is caught by the binding
    statement itself, so concurrent relays never both win the same key or serial.
    A database failure fails the whole batch (raised, nothing written). The
    transaction is one step of the event loop (:meth:`Database.write_at_once`).
    """
    if not admissions:
        return []
    is_postgresql = db.is_postgresql
    return await db.write_at_once(
        f"admitting {len(admissions)} tether(s)",
        lambda session: _admit(session, is_postgresql, admissions),
    )


def _admit(
    session: Session, is_postgresql: bool, admissions: Sequence[Admission]
) -> list[AdmissionResult]:
    """:func:`admit_many`'s transaction."""
    key_ids = sorted({a.key_id for a in admissions})
    serials = sorted({_serial_or_blank(a.serial) for a in admissions} - {""})
    key_rows = session.scalars(
        select(IssuedKeyRow).where(IssuedKeyRow.key_id.in_(key_ids)).with_for_update()
    )
    keys = {row.key_id: IssuedKey.from_row(row) for row in key_rows}
    machine_rows = session.scalars(
        select(MachineRow).where(MachineRow.serial.in_(serials)).with_for_update()
    )
    owners = {row.serial: MachineRecord.from_row(row) for row in machine_rows}
    decided = [_decide(a, keys, owners) for a in admissions]
    # Bind serials first: a binding another relay made since the read shows here,
    # and its admissions are refused before anything else of theirs is written.
    new_owners = {
        require_serial(a.serial): a
        for a, r in zip(admissions, decided, strict=True)
        if r.binds_serial
    }
    if new_owners:
        stored = bind_serials(
            session,
            is_postgresql,
            [(a.serial, a.machine_key, a.now) for a in new_owners.values()],
        )
        for i, (admission, result) in enumerate(zip(admissions, decided, strict=True)):
            owner = stored.get(_serial_or_blank(admission.serial))
            if result.record is not None and owner is not None:
                try:
                    admission.check_owner(owner)
                except Exception as exc:
                    decided[i] = _Decision(exc)
    key_binds = [
        {"k": a.key_id, "m": a.machine_key, "t": a.now}
        for a, r in zip(admissions, decided, strict=True)
        if r.binds_key
    ]
    if key_binds:
        session.execute(
            update(cast(Table, IssuedKeyRow.__table__))
            .where(
                IssuedKeyRow.key_id == bindparam("k"),
                IssuedKeyRow.bound_machine_key.is_(None),
            )
            .values(bound_machine_key=bindparam("m"), first_used_at=bindparam("t")),
            key_binds,
        )
    # The last admission of a serial wins its registry row (a reconnect replaces).
    rows = {r.record.serial: r.record for r in decided if r.record is not None}
    if rows:
        values = [dataclasses.asdict(record) for record in rows.values()]
        insert = pg_insert if is_postgresql else sqlite_insert
        upsert = insert(TetherRow).values(values)
        columns = [c for c in values[0] if c != "serial"]
        session.execute(
            upsert.on_conflict_do_update(
                index_elements=["serial"],
                set_={c: upsert.excluded[c] for c in columns},
            )
        )
    return [r.result for r in decided]


@dataclass
class _Decision:
    """An admission's outcome: refused (``refusal``) or admitted (``record``)."""

    refusal: Exception | None = None
    record: TetherRecord | None = None
    binds_key: bool = False
    binds_serial: bool = False

    @property
    def result(self) -> AdmissionResult:
        if self.record is not None:
            return self.record
        if self.refusal is None:  # pragma: no cover - every decision sets one of them
            raise RuntimeError("an admission was neither admitted nor refused")
        return self.refusal


def _decide(
    admission: Admission, keys: dict[str, IssuedKey], owners: dict[str, MachineRecord]
) -> _Decision:
    """Run one admission's checks against (and update) the batch's view of the rows."""
    try:
        at = require_aware(admission.now, "now")
        record = TetherRecord(
            serial=require_serial(admission.serial),
            key_id=require_text(admission.key_id, "key id", 64),
            relay_id=require_text(admission.relay_id, "relay id", 128),
            relay_address=admission.relay_address,
            machine_key=require_text(admission.machine_key, "machine key", 255),
            connected_at=require_aware(admission.connected_at or at, "connected_at"),
            last_seen_at=at,
        )
        issued = keys.get(admission.key_id)
        binds_key = issued is not None and issued.bound_machine_key is None
        if issued is not None and binds_key:
            issued = dataclasses.replace(
                issued, bound_machine_key=admission.machine_key, first_used_at=at
            )
        admission.check_key(issued)
        serial = record.serial
        stored = owners.get(serial)
        binds_serial = stored is None or stored.machine_key is None
        owner = (
            MachineRecord(
                serial=serial,
                machine_key=admission.machine_key,
                first_seen_at=at,
                rebound_by=stored.rebound_by if stored else None,
                rebound_at=stored.rebound_at if stored else None,
            )
            if stored is None or stored.machine_key is None
            else stored
        )
        admission.check_owner(owner)
    except Exception as exc:
        return _Decision(exc)
    if issued is not None:
        keys[admission.key_id] = issued
    owners[serial] = owner
    return _Decision(None, record, binds_key, binds_serial)


def _serial_or_blank(serial: str) -> str:
    """The canonical serial, or ``""`` for one that is not valid (its admission is refused)."""
    try:
        return require_serial(serial)
    except BadInput:
        return ""


def bind_serials(
    session: Session, is_postgresql: bool, bindings: Sequence[tuple[str, str, datetime]]
) -> dict[str, MachineRecord]:
    """Bind each ``(serial, machine_key, at)`` unless the serial is bound; return stored rows.

    One statement (``INSERT … ON CONFLICT DO UPDATE … RETURNING``): a new serial is
    bound, a serial an admin re-bound (no machine key) takes this machine key, and a
    bound serial keeps its own. The rows come back as stored, keyed by canonical
    serial, so a caller compares the stored machine key with its own. Synchronous: an
    async session runs it with ``await session.run_sync(bind_serials, …)``.
    """
    insert = pg_insert if is_postgresql else sqlite_insert
    stmt = insert(MachineRow).values(
        [
            {
                "serial": require_serial(serial),
                "machine_key": require_text(machine_key, "machine key", 255),
                "first_seen_at": require_aware(at, "now"),
            }
            for serial, machine_key, at in bindings
        ]
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["serial"],
        set_={
            "machine_key": func.coalesce(MachineRow.machine_key, stmt.excluded.machine_key),
            "first_seen_at": case(
                (MachineRow.machine_key.is_(None), stmt.excluded.first_seen_at),
                else_=MachineRow.first_seen_at,
            ),
        },
    )
    result = session.execute(stmt.returning(*MachineRow.__table__.columns))
    return {
        row.serial: MachineRecord(
            serial=row.serial,
            machine_key=row.machine_key,
            first_seen_at=row.first_seen_at,
            rebound_by=row.rebound_by,
            rebound_at=row.rebound_at,
        )
        for row in result
    }
