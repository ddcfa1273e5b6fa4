"""The relays of the fleet: who holds which relay id, who is alive, who is gone.

Each relay process claims its ``relay_id`` at start with a random ``instance`` token and
heartbeats while it runs. A relay not heard of for ``dead_after`` seconds is dead: any
other relay's sweep removes it with its tethers and channels, so routing, ``tether ls``
and the console stop showing machines nobody carries (SPEC "Scale": within 30 s).
Claims and heartbeats are single conditional statements, so two processes racing for
one id cannot both win on either backend.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from tether.store.db import Database
from tether.store.models import LiveChannelRow, RelayRow, TetherRow
from tether.store.records import RelayRecord
from tether.store.types import require_aware, require_text

__all__ = ["RelayRepo"]


class RelayRepo:
    """Relays of the fleet, their heartbeats and the sweep of dead ones."""

    def __init__(self, db: Database) -> None:
        """Use ``db`` for every transaction."""
        self._db = db

    async def claim(
        self, relay_id: str, instance: str, address: str, now: datetime, dead_after: float
    ) -> RelayRecord | None:
        """Take ``relay_id`` for this process unless a live relay holds it.

        :param instance: this process's random token.
        :param dead_after: seconds without a heartbeat after which a holder is dead.
        :returns: None once claimed (``started_at`` is now), or the live relay that holds
            the id, which the caller must not start next to.
        """
        at = require_aware(now, "now")
        values = {
            "relay_id": require_text(relay_id, "relay id", 128),
            "instance": require_text(instance, "relay instance", 64),
            "address": require_text(address, "relay address", 255),
            "started_at": at,
            "last_seen_at": at,
            "tethers": 0,
        }
        insert = pg_insert if self._db.is_postgresql else sqlite_insert
        taken_over = or_(
            RelayRow.last_seen_at < at - timedelta(seconds=dead_after),
            RelayRow.instance == instance,
        )
        stmt = (
            insert(RelayRow)
            .values(**values)
            .on_conflict_do_update(
                index_elements=["relay_id"],
                set_={k: v for k, v in values.items() if k != "relay_id"},
                where=taken_over,
            )
            .returning(RelayRow.instance)
        )
        async with self._db.write(f"claiming relay id {relay_id}") as session:
            if (await session.execute(stmt)).first() is not None:
                return None
            holder = await session.get(RelayRow, relay_id)
            return RelayRecord.from_row(holder) if holder is not None else None

    async def heartbeat(
        self, relay_id: str, instance: str, address: str, now: datetime, tethers: int
    ) -> bool:
        """Record that this relay is alive; False if it no longer holds ``relay_id``.

        False means the fleet gave this relay up (no heartbeat for too long, so its
        tethers were swept) or another process claimed the id meanwhile.
        """
        stmt = (
            update(RelayRow)
            .where(RelayRow.relay_id == relay_id, RelayRow.instance == instance)
            .values(last_seen_at=require_aware(now, "now"), address=address, tethers=tethers)
        )
        async with self._db.write(
            f"recording heartbeat of relay {relay_id}", reserved=True
        ) as session:
            return bool((await session.execute(stmt)).rowcount)  # type: ignore[attr-defined]

    async def sweep(self, now: datetime, dead_after: float) -> list[str]:
        """Remove relays not heard of for ``dead_after`` s, with their tethers and channels.

        :returns: the ids of the relays removed (for the log and the audit).
        """
        cutoff = require_aware(now, "now") - timedelta(seconds=dead_after)
        async with self._db.write("removing dead relays", reserved=True) as session:
            dead = list(
                (
                    await session.scalars(
                        select(RelayRow.relay_id).where(RelayRow.last_seen_at < cutoff)
                    )
                ).all()
            )
            if dead:
                await session.execute(delete(TetherRow).where(TetherRow.relay_id.in_(dead)))
                await session.execute(
                    delete(LiveChannelRow).where(LiveChannelRow.relay_id.in_(dead))
                )
                await session.execute(
                    delete(RelayRow).where(
                        RelayRow.relay_id.in_(dead), RelayRow.last_seen_at < cutoff
                    )
                )
            return dead

    async def leave(self, relay_id: str, instance: str) -> None:
        """Give ``relay_id`` back (a clean stop), if this process still holds it."""
        async with self._db.write(f"removing relay {relay_id}") as session:
            await session.execute(
                delete(RelayRow).where(RelayRow.relay_id == relay_id, RelayRow.instance == instance)
            )

    async def list(self) -> list[RelayRecord]:
        """All relays, by id."""
        async with self._db.read("listing relays") as session:
            rows = (await session.scalars(select(RelayRow).order_by(RelayRow.relay_id))).all()
            return [RelayRecord.from_row(r) for r in rows]
