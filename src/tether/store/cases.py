"""One-click support requests: which machine a serial belongs to, and the cases opened.

A machine asks the relay for a key with its serial, its own machine key and a problem
description; each request opens a case (:class:`CaseRepo`) that the vendor service
approves (issuing a key), denies, or that the customer cancels. A request never binds a
serial to a machine by itself (anyone can send one, for any serial): the binding
(:class:`MachineRepo`) is made when a vendor-issued key is first used (the relay's
admission, :mod:`tether.store.admission`) or when a person approves a case for the
machine key it names, having seen its fingerprint. Once bound, another machine key for
that serial is refused until a vendor admin re-binds it. Every state change is a single
conditional statement, so racing callers (two relays, two vendor services, an engineer
and the auto-approver) agree on one outcome.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from tether.errors import BadInput, Refused
from tether.store.admission import bind_serials
from tether.store.db import Database
from tether.store.models import CaseRow, CaseStatus, MachineRow, RevocationKind
from tether.store.records import CaseRecord, MachineRecord
from tether.store.repos import append_revocation
from tether.store.types import require_aware, require_serial, require_text

__all__ = ["MAX_CASE_ID", "MAX_DESCRIPTION", "CaseRepo", "MachineRepo"]

#: Longest problem description a case keeps (characters).
MAX_DESCRIPTION = 2000
#: Case ids are 32-bit on PostgreSQL; anything larger names no case.
MAX_CASE_ID = 2**31 - 1


class MachineRepo:
    """Which machine key a serial belongs to, bound on first use of a vendor-issued key.

    Serials are stored and looked up in their canonical form
    (:func:`~tether.store.types.require_serial`), so ``abc1`` and ``ABC1`` are one machine.
    """

    def __init__(self, db: Database) -> None:
        """Use ``db`` for every transaction."""
        self._db = db

    async def bind_first_use(self, serial: str, machine_key: str, now: datetime) -> MachineRecord:
        """Bind ``serial`` to ``machine_key`` unless it is bound already; return the stored row.

        Only for a vendor's decision: a person approving a case for ``machine_key`` (the
        relay's admission of a vendor-issued key binds in its own transaction). A
        request alone must never call it. Atomic under concurrency (``INSERT … ON CONFLICT DO NOTHING`` plus a conditional
        ``UPDATE`` of a re-bound serial, in one transaction): of racing callers exactly
        one binds and all get the same stored ``machine_key`` back. The caller compares
        it with its own: equal means first use or the same machine again.
        """
        async with self._db.write(f"binding serial {serial} to its machine") as session:
            stored = await session.run_sync(
                bind_serials, self._db.is_postgresql, [(serial, machine_key, now)]
            )
        return stored[require_serial(serial)]

    async def get(self, serial: str) -> MachineRecord | None:
        """The binding of ``serial``, or ``None`` if it was never bound."""
        serial = require_serial(serial)
        async with self._db.read(f"reading machine {serial}") as session:
            row = await session.get(MachineRow, serial)
            return None if row is None else MachineRecord.from_row(row)

    async def get_many(self, serials: Iterable[str]) -> dict[str, MachineRecord]:
        """The bindings of ``serials`` that exist, by canonical serial (one query)."""
        wanted = sorted({require_serial(s) for s in serials})
        if not wanted:
            return {}
        stmt = select(MachineRow).where(MachineRow.serial.in_(wanted))
        async with self._db.read(f"reading {len(wanted)} machine(s)") as session:
            rows = (await session.scalars(stmt)).all()
            return {row.serial: MachineRecord.from_row(row) for row in rows}

    async def rebind(self, serial: str, *, by: str, now: datetime) -> None:
        """Forget the machine key of ``serial``: its next approved case or key use binds anew.

        Unknown serial: :class:`BadInput`.
        """
        at = require_aware(now, "now")
        stmt = (
            update(MachineRow)
            .where(MachineRow.serial == require_serial(serial))
            .values(machine_key=None, rebound_by=require_text(by, "who", 64), rebound_at=at)
            .execution_options(synchronize_session=False)
        )
        async with self._db.write(f"re-binding machine {serial}") as session:
            result = await session.execute(stmt)
            if not _rowcount(result):
                raise BadInput(f"no machine is bound to serial {serial!r}")
            # Every relay ends the old machine's tether, as for a revoked key.
            await append_revocation(
                self._db, session, RevocationKind.MACHINE, require_serial(serial),
                f"re-bound by {by}", at,
            )  # fmt: skip


def _rowcount(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def _valid_id(case_id: object) -> bool:
    return (
        isinstance(case_id, int) and not isinstance(case_id, bool) and 1 <= case_id <= MAX_CASE_ID
    )


class CaseRepo:
    """One-click support requests (cases) and their outcome."""

    def __init__(self, db: Database) -> None:
        """Use ``db`` for every transaction."""
        self._db = db

    async def open(
        self,
        *,
        serial: str,
        machine_key: str,
        description: str,
        now: datetime,
        limits: Sequence[str] = (),
    ) -> CaseRecord:
        """Open a pending case. A description over 2000 characters: :class:`BadInput`.

        ``limits``: what the customer's grant will allow, in words (kept for the console).
        """
        if not isinstance(description, str) or not description.strip():
            raise BadInput("a support request needs a problem description")
        if len(description) > MAX_DESCRIPTION:
            raise BadInput(
                f"the problem description is {len(description)} characters long; "
                f"at most {MAX_DESCRIPTION} are kept — shorten it"
            )
        row = CaseRow(
            serial=require_serial(serial),
            machine_key=require_text(machine_key, "machine key", 255),
            description=description,
            created_at=require_aware(now, "now"),
            status=CaseStatus.PENDING,
            limits=json.dumps([require_text(t, "limit", 300) for t in limits][:10])
            if limits
            else None,
        )
        async with self._db.write(f"opening a case for {serial}") as session:
            session.add(row)
            await session.flush()
            return CaseRecord.from_row(row)

    async def get(self, case_id: int) -> CaseRecord | None:
        """The case with ``case_id``, or ``None``."""
        if not _valid_id(case_id):
            return None
        async with self._db.read(f"reading case {case_id}") as session:
            row = await session.get(CaseRow, case_id)
            return None if row is None else CaseRecord.from_row(row)

    async def list(self, *, status: CaseStatus | None = None) -> list[CaseRecord]:
        """Cases, newest first; optionally only those with ``status``."""
        stmt = select(CaseRow).order_by(CaseRow.id.desc())
        if status is not None:
            stmt = stmt.where(CaseRow.status == CaseStatus(status))
        async with self._db.read("listing cases") as session:
            return [CaseRecord.from_row(r) for r in (await session.scalars(stmt)).all()]

    async def count_pending(self) -> int:
        """How many cases wait for a decision."""
        stmt = select(func.count()).select_from(CaseRow).where(CaseRow.status == CaseStatus.PENDING)
        async with self._db.read("counting pending cases") as session:
            return int((await session.execute(stmt)).scalar_one())

    async def cancel(self, case_id: int, now: datetime) -> CaseRecord:
        """Cancel a pending case; a decided case is returned unchanged. Unknown: BadInput."""
        at = require_aware(now, "now")
        async with self._db.write(f"cancelling case {case_id}") as session:
            await self._transition(session, case_id, status=CaseStatus.CANCELLED, decided_at=at)
            return await self._load(session, case_id)

    async def approve_and_issue(
        self, case_id: int, *, by: str, key_id: str, key_text: str, now: datetime
    ) -> CaseRecord:
        """Mark a pending case issued with its key, atomically.

        One conditional ``UPDATE … WHERE status = 'pending'``: of racing deciders exactly
        one wins; the others get :class:`Refused` naming the case's state. Unknown case:
        :class:`BadInput`.
        """
        values = {
            "status": CaseStatus.ISSUED,
            "decided_by": require_text(by, "who", 64),
            "decided_at": require_aware(now, "now"),
            "key_id": require_text(key_id, "key id", 64),
            "key_text": require_text(key_text, "key", 4096),
        }
        async with self._db.write(f"approving case {case_id}") as session:
            if not await self._transition(session, case_id, **values):
                await self._refuse(session, case_id)
            return await self._load(session, case_id)

    async def deny(self, case_id: int, *, by: str, reason: str, now: datetime) -> CaseRecord:
        """Deny a pending case with a reason (shown to the customer).

        Already decided: :class:`Refused`; unknown case: :class:`BadInput`.
        """
        values = {
            "status": CaseStatus.DENIED,
            "decided_by": require_text(by, "who", 64),
            "decided_at": require_aware(now, "now"),
            "deny_reason": require_text(reason, "reason", 500),
        }
        async with self._db.write(f"denying case {case_id}") as session:
            if not await self._transition(session, case_id, **values):
                await self._refuse(session, case_id)
            return await self._load(session, case_id)

    async def _transition(self, session: AsyncSession, case_id: int, **values: Any) -> bool:
        """Apply ``values`` if the case is pending; whether it was."""
        if not _valid_id(case_id):
            raise BadInput(f"no case {case_id!r}")
        stmt = (
            update(CaseRow)
            .where(CaseRow.id == case_id, CaseRow.status == CaseStatus.PENDING)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        return _rowcount(await session.execute(stmt)) == 1

    async def _load(self, session: AsyncSession, case_id: int) -> CaseRecord:
        row = await session.get(CaseRow, case_id, populate_existing=True)
        if row is None:
            raise BadInput(f"no case {case_id}")
        return CaseRecord.from_row(row)

    async def _refuse(self, session: AsyncSession, case_id: int) -> None:
        case = await self._load(session, case_id)
        raise Refused(f"case {case_id} is already {case.status.value}; it can no longer change")
