"""Anchors: the head of every audit chain of the database, kept in another chain.

A hash chain proves that nothing *inside* it was changed, but not that its newest entries
are all there: delete the last rows and what is left is a shorter, valid chain, and the
next write would reuse the numbers (:mod:`tether.audit`). So each chain's head is also
written somewhere else, and compared.

How it works
------------
* Every append to a chain ``X`` (``vendor``, ``relay:<id>``) writes, in the same
  transaction, one entry to the chain ``anchors``: ``audit.anchored`` with ``X``'s new
  head ``(seq, hash)`` and ``from_seq``, the head ``X`` had before (so the anchors of one
  chain link up: ``0 → 3 → 7 → 12``). Nothing else writes to ``anchors``.
* Reading ``X`` (``tether vendor audit --verify``, the console) checks it against its
  anchors: entries past ``X``'s end that an anchor names were removed from the end
  (``truncated``, naming them); an anchored entry with another hash means ``X`` was
  rewritten (``changed``); entries of ``X`` that no anchor covers (a gap between two
  anchors, or after the last) mean the anchors recording them were removed
  (``unanchored``). The report of ``anchors`` lists the same gaps, so truncating
  ``anchors`` itself is caught: its newest entries are the only record of the newest
  entries of some chain.
* A writer never reuses a number: it continues after the highest head it knows of —
  the chain's last row, its latest anchor, and the head this process itself wrote last
  (each relay and vendor service remembers its own chain's head). Removed entries then
  show as a gap (``missing``), naming them.
* Machines' own logs are anchored by the relays, which keep the head each machine
  reported (:mod:`tether.relay.audit`).

What it cannot do: everything lives in one database, so someone who rewrites two
chains consistently (``X``'s tail *and* the anchors recording it, recomputing the
hashes of ``anchors`` after them) while no writer that remembers the head is running,
is not caught. The anchors make a silent truncation need exactly that.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tether.audit import FieldValue, Problem
from tether.store.models import AuditEventRow

__all__ = ["ANCHOR_CHAIN", "ANCHOR_EVENT", "Anchor", "anchor_fields", "coverage_problems"]

#: The chain holding every other chain's heads. Written only by the store itself.
ANCHOR_CHAIN = "anchors"
#: The event of an anchor entry.
ANCHOR_EVENT = "audit.anchored"


@dataclass(frozen=True)
class Anchor:
    """One anchor: chain ``chain`` went from entry ``from_seq`` to ``seq`` (hash ``hash``)."""

    chain: str
    from_seq: int
    seq: int
    hash: str


def anchor_fields(chain: str, from_seq: int, seq: int, digest: str) -> dict[str, FieldValue]:
    """The fields of the anchor entry recording ``chain``'s new head."""
    return {"chain": chain, "from_seq": from_seq, "seq": seq, "hash": digest}


def _anchor(fields_text: str) -> Anchor | None:
    """The anchor a row of ``anchors`` holds, or ``None`` if it is not readable as one.

    An unreadable row is reported by the check of ``anchors`` itself (its hash chain).
    """
    try:
        fields: Any = json.loads(fields_text)
        anchor = Anchor(fields["chain"], fields["from_seq"], fields["seq"], fields["hash"])
    except (ValueError, TypeError, KeyError):
        return None
    if not (
        isinstance(anchor.chain, str)
        and isinstance(anchor.hash, str)
        and all(type(n) is int for n in (anchor.from_seq, anchor.seq))
    ):
        return None
    return anchor


def _about(chain: str) -> Any:
    """A filter on rows of ``anchors`` that are about ``chain`` (its fields start so)."""
    prefix = '{"chain":' + json.dumps(chain) + ","
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return AuditEventRow.fields.like(escaped + "%", escape="\\")


async def latest_anchor(session: AsyncSession, chain: str) -> Anchor | None:
    """The newest anchor of ``chain`` (``None`` if it has none)."""
    rows = await session.scalars(
        select(AuditEventRow.fields)
        .where(AuditEventRow.chain == ANCHOR_CHAIN, _about(chain))
        .order_by(AuditEventRow.seq.desc())
    )
    for text in rows:
        anchor = _anchor(text)
        if anchor is not None and anchor.chain == chain:
            return anchor
    return None


async def anchors_of(session: AsyncSession, chain: str | None = None) -> list[Anchor]:
    """The anchors of ``chain`` (of every chain when ``None``), oldest first."""
    stmt = select(AuditEventRow.fields).where(AuditEventRow.chain == ANCHOR_CHAIN)
    if chain is not None:
        stmt = stmt.where(_about(chain))
    found = [_anchor(text) for text in await session.scalars(stmt.order_by(AuditEventRow.seq))]
    return [a for a in found if a is not None and (chain is None or a.chain == chain)]


def _span(low: int, high: int) -> tuple[str, str]:
    """Words for entries ``low`` to ``high`` and the verb that goes with them."""
    return (f"entry {low}", "has") if low == high else (f"entries {low} to {high}", "have")


def coverage_problems(
    chain: str, anchors: Sequence[Anchor], head_seq: int, *, from_anchors: bool = False
) -> list[Problem]:
    """Entries of ``chain`` (up to ``head_seq``) that no anchor covers: their record was removed.

    :param anchors: the anchors of ``chain``, oldest first.
    :param from_anchors: word the problems for the report of ``anchors`` (naming
        ``chain``) rather than for that of ``chain`` itself.
    """
    whose = f" of chain {chain}" if from_anchors else ""
    problems: list[Problem] = []
    covered = 0
    for anchor in anchors:
        if anchor.from_seq > covered:
            which, verb = _span(covered + 1, anchor.from_seq)
            problems.append(
                Problem(
                    covered + 1,
                    "unanchored",
                    f"{which}{whose} {verb} no anchor in chain {ANCHOR_CHAIN}: the entries of "
                    f"{ANCHOR_CHAIN} that recorded them were removed",
                )
            )
        covered = max(covered, anchor.seq)
    if head_seq > covered:
        which, verb = _span(covered + 1, head_seq)
        problems.append(
            Problem(
                covered + 1,
                "unanchored",
                f"{which}{whose} (the newest) {verb} no anchor in chain {ANCHOR_CHAIN}: its "
                "newest entries, which recorded them, were removed",
            )
        )
    return problems


def heads_beyond(anchors: Iterable[Anchor], heads: dict[str, int]) -> list[Problem]:
    """For the report of ``anchors``: every chain's entries it should anchor but does not."""
    by_chain: dict[str, list[Anchor]] = {}
    for anchor in anchors:
        by_chain.setdefault(anchor.chain, []).append(anchor)
    problems: list[Problem] = []
    for chain in sorted(set(by_chain) | set(heads)):
        problems += coverage_problems(
            chain, by_chain.get(chain, []), heads.get(chain, 0), from_anchors=True
        )
    return problems
