"""Hash-chained audit logs kept in the shared database, and machines' reported chain heads.

The chain format and :func:`~tether.audit.verify` are the ones of the agent's file log
(:mod:`tether.audit`): each row of ``audit_events`` is one entry, and the rows of one
chain, read in the order they were written (``id``), are handed to the same
``verify`` the file's lines are. Problems name rows by their position in the chain
("row 3"), as the file names lines.

Appends to one chain are serialised across processes, so several relays and the vendor
service sharing one database never fork a chain: PostgreSQL takes a transaction-level
advisory lock named after the chain (then one for ``anchors``) before reading the last
row; SQLite's write transactions (``BEGIN IMMEDIATE``) already admit one writer at a
time. The unique ``(chain, seq)`` constraint is the backstop.

Every append also anchors the chain's new head in the chain ``anchors``, and every read
checks the chain against its anchors, so removing a chain's newest entries is detected
and the removed entries named (:mod:`tether.store.anchors`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from tether import log
from tether.audit import (
    AuditEntry,
    FieldValue,
    Problem,
    Verification,
    chain_entry,
    check_event,
    format_at,
    verify,
)
from tether.store.anchors import (
    ANCHOR_CHAIN,
    ANCHOR_EVENT,
    anchor_fields,
    anchors_of,
    coverage_problems,
    heads_beyond,
    latest_anchor,
)
from tether.store.db import Database, StoreError
from tether.store.models import AuditEventRow, AuditHeadRow
from tether.store.registry import _upsert
from tether.store.types import require_aware, require_serial, require_text

__all__ = [
    "MAX_CHAIN_NAME",
    "AuditHead",
    "AuditRepo",
    "ChainReport",
    "PendingEvent",
    "relay_chain",
]

#: Longest chain name (``relay:`` + a relay id of up to 128 characters fits).
MAX_CHAIN_NAME = 160
_CHAIN = re.compile(r"[a-z][a-z0-9_.:@-]*")
_LINE_WORD = re.compile(r"\bline(s?) (?=\d)")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def relay_chain(relay_id: str) -> str:
    """The name of a relay's audit chain: ``relay:<relay id>``."""
    return f"relay:{relay_id}"


def _check_chain(chain: str) -> str:
    if not (isinstance(chain, str) and len(chain) <= MAX_CHAIN_NAME and _CHAIN.fullmatch(chain)):
        raise ValueError(
            f"audit chain name {chain!r} is not valid: lower-case letters, digits and "
            f"'_.:@-', starting with a letter, at most {MAX_CHAIN_NAME} characters"
        )
    return chain


@dataclass(frozen=True)
class PendingEvent:
    """An event waiting to be appended: what happened, its details and when."""

    event: str
    fields: Mapping[str, FieldValue]
    at: datetime


@dataclass(frozen=True)
class ChainReport:
    """One chain as read back: its readable entries (in write order) and their check.

    :ivar chain: the chain's name.
    :ivar entries: every row that could be read as an entry, damaged ones left out.
    :ivar verification: :func:`tether.audit.verify` of all rows, problems naming rows.
    """

    chain: str
    entries: tuple[AuditEntry, ...]
    verification: Verification


@dataclass(frozen=True)
class AuditHead:
    """The chain head a machine last reported, and whether its log ever stopped matching.

    :ivar serial: the machine's serial.
    :ivar machine_key: SHA256 fingerprint of the machine key that reported it.
    :ivar seq: number of the machine's last entry, as reported.
    :ivar hash: that entry's hash.
    :ivar received_at: when the relay accepted this head.
    :ivar mismatches: how many times the log was found rewritten (0: always matched).
    :ivar mismatch: the last mismatch in words, ``None`` if never.
    :ivar mismatch_at: when the last mismatch was found.
    """

    serial: str
    machine_key: str
    seq: int
    hash: str
    received_at: datetime
    mismatches: int
    mismatch: str | None
    mismatch_at: datetime | None

    @classmethod
    def from_row(cls, row: AuditHeadRow) -> AuditHead:
        """Copy an ORM row into a record."""
        return cls(
            row.serial,
            row.machine_key,
            row.seq,
            row.hash,
            row.received_at,
            row.mismatches,
            row.mismatch,
            row.mismatch_at,
        )

    def to_json(self) -> dict[str, object]:
        """The head as JSON-able values (times in ISO 8601)."""
        return {
            "serial": self.serial,
            "machine_key": self.machine_key,
            "seq": self.seq,
            "hash": self.hash,
            "received_at": self.received_at.isoformat(),
            "mismatches": self.mismatches,
            "mismatch": self.mismatch,
            "mismatch_at": self.mismatch_at.isoformat() if self.mismatch_at else None,
        }


def _lock_id(chain: str) -> int:
    """A signed 64-bit advisory lock number for ``chain`` (stable across processes)."""
    return int.from_bytes(
        hashlib.sha256(b"tether-audit:" + chain.encode()).digest()[:8], "big", signed=True
    )


def _row_line(row: AuditEventRow) -> str:
    """The row as the file would hold it, so the file's verifier reads it unchanged.

    A ``fields`` column that is not JSON any more is embedded as it is (on one line):
    the verifier then reports the row as unreadable.
    """
    try:
        fields = json.loads(row.fields)
    except ValueError:
        raw = " ".join(row.fields.split())
        return (
            f'{{"at":{json.dumps(row.at)},"event":{json.dumps(row.event)},"fields":{raw},'
            f'"hash":{json.dumps(row.hash)},"prev":{json.dumps(row.prev)},"seq":{row.seq}}}'
        )
    body = {
        "seq": row.seq,
        "at": row.at,
        "event": row.event,
        "fields": fields,
        "prev": row.prev,
        "hash": row.hash,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def _row(chain: str, entry: AuditEntry) -> AuditEventRow:
    """The row of ``entry`` in ``chain``."""
    return AuditEventRow(
        chain=chain,
        seq=entry.seq,
        at=format_at(entry.at),
        event=entry.event,
        fields=json.dumps(dict(entry.fields), sort_keys=True, separators=(",", ":")),
        prev=entry.prev,
        hash=entry.hash,
    )


def _rows_named(verification: Verification, more: Sequence[Problem] = ()) -> Verification:
    """Say "row" where the file's verifier says "line"; add the ``more`` problems found."""
    problems = tuple(
        type(p)(p.seq, p.kind, _LINE_WORD.sub(r"row\1 ", p.message)) for p in verification.problems
    ) + tuple(more)
    return Verification(
        not problems, verification.entries, verification.head, problems, verification.head_seq
    )


class AuditRepo:
    """Audit chains in the database (``vendor``, ``relay:<id>``) and machines' heads."""

    def __init__(self, db: Database) -> None:
        """Use ``db`` for every transaction."""
        self._db = db
        #: The head this process last wrote to each chain: a writer's own anchor.
        self._written: dict[str, tuple[int, str]] = {}

    # --- chains ---------------------------------------------------------------------

    async def append(
        self, chain: str, event: str, /, *, now: datetime, **fields: FieldValue
    ) -> AuditEntry:
        """Append one event to ``chain`` and return the entry written.

        :raises ValueError: a bad chain name, event name or field, or a secret-looking
            field (nothing is written).
        :raises StoreError: the database failed (nothing is written).
        """
        (entry,) = await self.append_many(chain, [PendingEvent(event, fields, now)])
        return entry

    async def append_many(self, chain: str, events: Sequence[PendingEvent]) -> list[AuditEntry]:
        """Append ``events`` to ``chain`` in order, in one transaction; return the entries.

        Either all are written or none, together with the chain's new anchor (see
        :mod:`tether.store.anchors`). Validation happens before the database is touched
        (:class:`ValueError`, as for :meth:`append`); chain ``anchors`` is the store's own.
        """
        _check_chain(chain)
        if chain == ANCHOR_CHAIN:
            raise ValueError(f"audit chain {ANCHOR_CHAIN!r} is written by the store itself")
        for item in events:
            check_event(item.event, item.fields)
            require_aware(item.at, "at")
        if not events:
            return []
        async with self._db.write(f"appending to audit chain {chain}") as session:
            if self._db.is_postgresql:
                for name in (chain, ANCHOR_CHAIN):  # always in this order: no deadlock
                    await session.execute(
                        text("SELECT pg_advisory_xact_lock(:id)"), {"id": _lock_id(name)}
                    )
            head = await self._head_to_follow(session, chain)
            written: list[AuditEntry | tuple[int, str] | None] = [head]
            for item in events:
                written.append(chain_entry(written[-1], item.event, item.fields, item.at))
            entries = [e for e in written[1:] if isinstance(e, AuditEntry)]
            new = entries[-1]
            anchor = chain_entry(
                await self._last(session, ANCHOR_CHAIN),
                ANCHOR_EVENT,
                anchor_fields(chain, head[0] if head else 0, new.seq, new.hash),
                events[-1].at,
            )
            session.add_all(_row(chain, e) for e in entries)
            session.add(_row(ANCHOR_CHAIN, anchor))
            await session.flush()
        self._written[chain] = (new.seq, new.hash)
        return entries

    async def _head_to_follow(self, session: AsyncSession, chain: str) -> tuple[int, str] | None:
        """The head a new entry of ``chain`` follows: the highest one known of.

        Normally the last row, which its latest anchor (and this process, if it wrote
        it) agrees with. If the anchor or this process knows of a later entry, the
        newest rows were removed: the chain goes on after the recorded head, so no
        number is used twice and the removed entries show as missing (logged here too).
        """
        last = await self._last(session, chain)
        anchor = await latest_anchor(session, chain)
        known = [self._written.get(chain)]
        known.append((anchor.seq, anchor.hash) if anchor else None)
        known.append((last.seq, last.hash) if last else None)
        heads = [h for h in known if h is not None]
        if not heads:
            return None
        head = max(heads, key=lambda h: h[0])  # the first of equals: a recorded hash wins
        top = last.seq if last else 0
        if head[0] > top:
            log.event(
                logging.getLogger("tether.store"),
                "audit.truncated",
                level=logging.ERROR,
                chain=chain,
                removed=f"{top + 1}-{head[0]}",
            )
        elif anchor is None or anchor.seq < top:
            log.event(
                logging.getLogger("tether.store"),
                "audit.unanchored",
                level=logging.ERROR,
                chain=chain,
                entries=f"{anchor.seq + 1 if anchor else 1}-{top}",
            )
        return head

    async def _last(self, session: AsyncSession, chain: str) -> AuditEntry | None:
        row = await session.scalar(
            select(AuditEventRow)
            .where(AuditEventRow.chain == chain)
            .order_by(AuditEventRow.seq.desc())
            .limit(1)
        )
        if row is None:
            return None
        try:
            return AuditEntry.from_json_line(_row_line(row))
        except ValueError:
            raise StoreError(
                f"the last entry of audit chain {chain} (entry {row.seq}) cannot be read: "
                f"it was damaged; run `tether vendor audit --chain {chain} --verify`"
            ) from None

    async def chains(self) -> list[str]:
        """Names of every chain that has entries or an anchor, sorted.

        A chain whose entries were all removed is still listed: its anchors name it.
        """
        stmt = (
            select(AuditEventRow.chain).group_by(AuditEventRow.chain).order_by(AuditEventRow.chain)
        )
        async with self._db.read("listing audit chains") as session:
            names = set((await session.scalars(stmt)).all())
            names.update(a.chain for a in await anchors_of(session))
        return sorted(names)

    async def read(
        self, chain: str, *, expected_head: tuple[int, str] | None = None
    ) -> ChainReport:
        """Read ``chain`` in write order and verify it, against its anchors too.

        An unknown chain is empty and intact. Problems name the edited, removed or
        reordered entry; entries removed from the end are found through the chain's
        anchors (:mod:`tether.store.anchors`), and the report of ``anchors`` names the
        entries of every chain it no longer anchors.

        :param expected_head: a ``(seq, hash)`` recorded elsewhere that the chain must
            still contain (default: its latest anchor; see :func:`tether.audit.verify`).
        """
        _check_chain(chain)
        stmt = select(AuditEventRow).where(AuditEventRow.chain == chain).order_by(AuditEventRow.id)
        async with self._db.read(f"reading audit chain {chain}") as session:
            lines = [_row_line(row) for row in (await session.scalars(stmt)).all()]
            anchors = await anchors_of(session, None if chain == ANCHOR_CHAIN else chain)
            heads = await self._heads(session) if chain == ANCHOR_CHAIN else {}
        entries: list[AuditEntry] = []
        for line in lines:
            try:
                entries.append(AuditEntry.from_json_line(line))
            except ValueError:
                continue
        if chain == ANCHOR_CHAIN:
            checked = verify(lines, expected_head=expected_head)
            return ChainReport(
                chain, tuple(entries), _rows_named(checked, heads_beyond(anchors, heads))
            )
        if expected_head is None and anchors:
            expected_head = (anchors[-1].seq, anchors[-1].hash)
        checked = verify(lines, expected_head=expected_head)
        more = coverage_problems(chain, anchors, max((e.seq for e in entries), default=0))
        return ChainReport(chain, tuple(entries), _rows_named(checked, more))

    async def _heads(self, session: AsyncSession) -> dict[str, int]:
        """The highest entry number of every chain but ``anchors``."""
        rows = await session.execute(
            select(AuditEventRow.chain, func.max(AuditEventRow.seq))
            .where(AuditEventRow.chain != ANCHOR_CHAIN)
            .group_by(AuditEventRow.chain)
        )
        return {name: int(top) for name, top in rows.all()}

    # --- machines' chain heads -------------------------------------------------------

    async def head(self, serial: str, machine_key: str) -> AuditHead | None:
        """The head ``machine_key`` last reported for ``serial``, or ``None``."""
        serial = require_serial(serial)
        async with self._db.read(f"reading the audit head of {serial}") as session:
            row = await session.get(AuditHeadRow, (serial, machine_key))
            return None if row is None else AuditHead.from_row(row)

    async def put_head(
        self, *, serial: str, machine_key: str, seq: int, hash: str, now: datetime
    ) -> None:
        """Accept ``(seq, hash)`` as the machine's head (keeps any earlier mismatch flag)."""
        values = {
            "serial": require_serial(serial),
            "machine_key": require_text(machine_key, "machine key", 255),
            "seq": _check_seq(seq),
            "hash": _check_hash(hash),
            "received_at": require_aware(now, "now"),
        }
        stmt = _upsert(
            self._db,
            AuditHeadRow,
            values,
            ["serial", "machine_key"],
            ["seq", "hash", "received_at"],
        )
        async with self._db.write(f"storing the audit head of {serial}") as session:
            await session.execute(stmt)

    async def flag_head(
        self, *, serial: str, machine_key: str, seq: int, hash: str, problem: str, now: datetime
    ) -> AuditHead:
        """Record a mismatch and take ``(seq, hash)`` as the head to check from now on.

        The flag stays: ``mismatches`` counts every mismatch, ``mismatch`` says the last.
        """
        at = require_aware(now, "now")
        serial = require_serial(serial)
        values = {
            "serial": serial,
            "machine_key": require_text(machine_key, "machine key", 255),
            "seq": _check_seq(seq),
            "hash": _check_hash(hash),
            "received_at": at,
            "mismatches": 1,
            "mismatch": problem[:1000],
            "mismatch_at": at,
        }
        async with self._db.write(f"flagging the audit head of {serial}") as session:
            if await session.get(AuditHeadRow, (serial, machine_key)) is None:
                session.add(AuditHeadRow(**values))
            else:
                await session.execute(
                    update(AuditHeadRow)
                    .where(AuditHeadRow.serial == serial, AuditHeadRow.machine_key == machine_key)
                    .values(
                        seq=values["seq"],
                        hash=values["hash"],
                        received_at=at,
                        mismatches=AuditHeadRow.mismatches + 1,
                        mismatch=values["mismatch"],
                        mismatch_at=at,
                    )
                    .execution_options(synchronize_session=False)
                )
            await session.flush()
            row = await session.get(AuditHeadRow, (serial, machine_key), populate_existing=True)
            if row is None:
                raise StoreError(f"the audit head of {serial} vanished while it was flagged")
            return AuditHead.from_row(row)

    async def heads(self, *, mismatched: bool = False) -> list[AuditHead]:
        """Every machine's head, by serial; only flagged ones with ``mismatched``."""
        stmt = select(AuditHeadRow).order_by(AuditHeadRow.serial, AuditHeadRow.machine_key)
        if mismatched:
            stmt = stmt.where(AuditHeadRow.mismatches > 0)
        async with self._db.read("listing audit heads") as session:
            return [AuditHead.from_row(r) for r in (await session.scalars(stmt)).all()]


def _check_seq(seq: int) -> int:
    if type(seq) is not int or not 0 <= seq < 2**63:
        raise ValueError(f"seq must be a whole number from 0, not {seq!r}")
    return seq


def _check_hash(digest: str) -> str:
    if not (isinstance(digest, str) and _HEX64.fullmatch(digest)):
        raise ValueError("hash must be 64 lower-case hex digits")
    return digest
