"""The live tether registry, the engineers' live channels and sealed passwords.

Tethers are upserted (``INSERT ... ON CONFLICT DO UPDATE``) so that a reconnect is a
single statement on either backend. The relays themselves: :mod:`tether.store.relays`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql import Executable

from tether.errors import BadInput
from tether.store.admission import Admission, AdmissionResult, admit_many
from tether.store.db import Database
from tether.store.models import (
    Base,
    LiveChannelRow,
    SealedPasswordRow,
    TetherRow,
)
from tether.store.records import (
    ChannelRecord,
    SealedPassword,
    TetherRecord,
)
from tether.store.types import require_aware, require_serial, require_text

__all__ = ["ChannelRepo", "PasswordRepo", "TetherRepo"]


def _upsert(
    db: Database,
    model: type[Base],
    values: Mapping[str, Any],
    key: str | list[str],
    update_cols: list[str],
) -> Executable:
    """``INSERT ... ON CONFLICT (key) DO UPDATE`` on either backend (``key``: column(s))."""
    set_ = {col: values[col] for col in update_cols}
    keys = [key] if isinstance(key, str) else key
    if db.is_postgresql:
        return (
            pg_insert(model).values(**values).on_conflict_do_update(index_elements=keys, set_=set_)
        )
    return (
        sqlite_insert(model).values(**values).on_conflict_do_update(index_elements=keys, set_=set_)
    )


class TetherRepo:
    """The live tether registry: which relay holds which serial."""

    def __init__(self, db: Database) -> None:
        """Use ``db`` for every transaction."""
        self._db = db

    async def register(
        self,
        *,
        serial: str,
        key_id: str,
        relay_id: str,
        relay_address: str,
        machine_key: str,
        now: datetime,
    ) -> TetherRecord:
        """Register (or replace, on reconnect) the tether of ``serial``."""
        at = require_aware(now, "now")
        record = TetherRecord(
            serial=require_serial(serial),
            key_id=require_text(key_id, "key id", 64),
            relay_id=require_text(relay_id, "relay id", 128),
            relay_address=relay_address,
            machine_key=machine_key,
            connected_at=at,
            last_seen_at=at,
        )
        values = dataclasses.asdict(record)
        stmt = _upsert(self._db, TetherRow, values, "serial", [k for k in values if k != "serial"])
        async with self._db.write(f"registering tether {serial}") as session:
            await session.execute(stmt)
        return record

    async def admit_many(self, admissions: Sequence[Admission]) -> list[AdmissionResult]:
        """Admit tethers in one transaction; see :func:`tether.store.admission.admit_many`."""
        return await admit_many(self._db, admissions)

    async def set_limits(
        self, serial: str, key_id: str, relay_id: str, limits: Sequence[str]
    ) -> None:
        """Keep what the grant of ``key_id`` allows, as its machine reported it (only while
        ``relay_id`` holds that tether with that key)."""
        text = json.dumps([require_text(line, "limit", 300) for line in limits][:10])
        stmt = (
            update(TetherRow)
            .where(
                TetherRow.serial == require_serial(serial),
                TetherRow.key_id == key_id,
                TetherRow.relay_id == relay_id,
            )
            .values(limits=text)
        )
        async with self._db.write(f"keeping the limits of tether {serial}") as session:
            await session.execute(stmt)

    async def touch(self, serial: str, relay_id: str, now: datetime) -> None:
        """Mark the tether as seen at ``now`` (only if ``relay_id`` still holds it)."""
        at = require_aware(now, "now")
        stmt = (
            update(TetherRow)
            .where(TetherRow.serial == require_serial(serial), TetherRow.relay_id == relay_id)
            .values(last_seen_at=at)
            .execution_options(synchronize_session=False)
        )
        async with self._db.write(f"touching tether {serial}") as session:
            await session.execute(stmt)

    async def unregister(self, serial: str, relay_id: str) -> None:
        """Remove the tether of ``serial`` only if it still belongs to ``relay_id``.

        A machine that reconnected to another relay is not wiped by the old
        relay's late clean-up.
        """
        await self.unregister_many([(serial, relay_id)])

    async def unregister_many(self, tethers: Sequence[tuple[str, str]]) -> list[None]:
        """:meth:`unregister` each ``(serial, relay_id)``, in one transaction."""
        if tethers:
            table = cast(Table, TetherRow.__table__)
            stmt = delete(table).where(
                table.c.serial == bindparam("s"), table.c.relay_id == bindparam("r")
            )
            async with self._db.write(f"unregistering {len(tethers)} tether(s)") as session:
                await session.execute(
                    stmt,
                    [{"s": require_serial(serial), "r": relay_id} for serial, relay_id in tethers],
                )
        return [None] * len(tethers)

    async def get(self, serial: str) -> TetherRecord | None:
        """The live tether of ``serial``, or ``None``."""
        async with self._db.read(f"reading tether {serial}") as session:
            row = await session.get(TetherRow, require_serial(serial))
            return None if row is None else TetherRecord.from_row(row)

    async def list(self) -> list[TetherRecord]:
        """All live tethers, by serial."""
        async with self._db.read("listing tethers") as session:
            rows = (await session.scalars(select(TetherRow).order_by(TetherRow.serial))).all()
            return [TetherRecord.from_row(r) for r in rows]

    async def clear_relay(self, relay_id: str) -> int:
        """Remove every tether held by ``relay_id`` (a relay starting up); return how many."""
        stmt = delete(TetherRow).where(TetherRow.relay_id == relay_id)
        async with self._db.write(f"clearing tethers of relay {relay_id}") as session:
            result = await session.execute(stmt.execution_options(synchronize_session=False))
            return int(getattr(result, "rowcount", 0) or 0)


class ChannelRepo:
    """Engineers' channels open right now, for "who is connected" views.

    A relay inserts a row when an engineer's channel opens and deletes it when it
    closes; a relay starting up clears its own rows (left over from a crash).
    """

    def __init__(self, db: Database) -> None:
        """Use ``db`` for every transaction."""
        self._db = db

    async def open(
        self, *, relay_id: str, serial: str, engineer: str, port: int, now: datetime
    ) -> int:
        """Record an open channel; return its row id (for :meth:`close`)."""
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise BadInput(f"port must be 1-65535, got {port!r}")
        row = LiveChannelRow(
            relay_id=require_text(relay_id, "relay id", 128),
            serial=require_serial(serial),
            engineer=require_text(engineer, "engineer", 64),
            port=port,
            opened_at=require_aware(now, "now"),
        )
        async with self._db.write(f"recording a channel to {serial}") as session:
            session.add(row)
            await session.flush()
            return int(row.id)

    async def close(self, channel_id: int) -> None:
        """Forget a channel that closed (no-op if already gone)."""
        stmt = delete(LiveChannelRow).where(LiveChannelRow.id == channel_id)
        async with self._db.write(f"forgetting channel {channel_id}") as session:
            await session.execute(stmt.execution_options(synchronize_session=False))

    async def clear_relay(self, relay_id: str) -> int:
        """Forget every channel of ``relay_id`` (a relay starting up); return how many."""
        stmt = delete(LiveChannelRow).where(LiveChannelRow.relay_id == relay_id)
        async with self._db.write(f"clearing channels of relay {relay_id}") as session:
            result = await session.execute(stmt.execution_options(synchronize_session=False))
            return int(getattr(result, "rowcount", 0) or 0)

    async def list(self, serial: str | None = None) -> list[ChannelRecord]:
        """Open channels, oldest first; optionally only those to ``serial``."""
        stmt = select(LiveChannelRow).order_by(LiveChannelRow.id)
        if serial is not None:
            stmt = stmt.where(LiveChannelRow.serial == require_serial(serial))
        async with self._db.read("listing channels") as session:
            return [ChannelRecord.from_row(r) for r in (await session.scalars(stmt)).all()]


class PasswordRepo:
    """Sealed support-account passwords, as machines sent them over their tether."""

    def __init__(self, db: Database) -> None:
        """Use ``db`` for every transaction."""
        self._db = db

    async def put(self, *, key_id: str, serial: str, sealed: str, now: datetime) -> None:
        """Store (or replace, after the machine re-opened access) the sealed password."""
        values = {
            "key_id": require_text(key_id, "key id", 64),
            "serial": require_serial(serial),
            "sealed": require_text(sealed, "sealed password", 4096),
            "received_at": require_aware(now, "now"),
        }
        stmt = _upsert(
            self._db, SealedPasswordRow, values, "key_id", ["serial", "sealed", "received_at"]
        )
        async with self._db.write(f"storing the sealed password of key {key_id}") as session:
            await session.execute(stmt)

    async def forget(self, key_id: str) -> bool:
        """Drop the sealed password of ``key_id`` (it no longer works); return whether one was kept."""
        async with self._db.write(f"forgetting the sealed password of key {key_id}") as session:
            result = await session.execute(
                delete(SealedPasswordRow).where(SealedPasswordRow.key_id == key_id)
            )
            return bool(getattr(result, "rowcount", 0))

    async def get(self, key_id: str) -> SealedPassword | None:
        """The sealed password sent for ``key_id``, if any."""
        async with self._db.read(f"reading the sealed password of key {key_id}") as session:
            row = await session.get(SealedPasswordRow, key_id)
            return SealedPassword.from_row(row) if row is not None else None
