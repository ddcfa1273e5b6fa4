"""Anchor the heads of the audit chains that already exist (:mod:`tether.store.anchors`).

From now on every append anchors its chain's head in the chain ``anchors``; a chain
written before has none, which would read as "entries 1 to N have no anchor". One
anchor per existing chain, for its current head, starts them off.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from tether.audit import AuditEntry, chain_entry, format_at
from tether.store.anchors import ANCHOR_CHAIN, ANCHOR_EVENT, anchor_fields

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_EVENTS = sa.table(
    "audit_events",
    sa.column("chain"),
    sa.column("seq"),
    sa.column("at"),
    sa.column("event"),
    sa.column("fields"),
    sa.column("prev"),
    sa.column("hash"),
)


def upgrade() -> None:
    """Write one anchor for the head of every chain that has entries."""
    bind = op.get_bind()
    top = (
        sa.select(_EVENTS.c.chain, sa.func.max(_EVENTS.c.seq).label("seq"))
        .where(_EVENTS.c.chain != ANCHOR_CHAIN)
        .group_by(_EVENTS.c.chain)
        .subquery()
    )
    heads = bind.execute(
        sa.select(_EVENTS.c.chain, _EVENTS.c.seq, _EVENTS.c.hash)
        .join(top, sa.and_(_EVENTS.c.chain == top.c.chain, _EVENTS.c.seq == top.c.seq))
        .order_by(_EVENTS.c.chain)
    ).all()
    last: AuditEntry | None = None
    now = datetime.now(UTC)
    for chain, seq, digest in heads:
        last = chain_entry(last, ANCHOR_EVENT, anchor_fields(chain, 0, seq, digest), now)
        bind.execute(
            sa.insert(_EVENTS).values(
                chain=ANCHOR_CHAIN,
                seq=last.seq,
                at=format_at(last.at),
                event=last.event,
                fields=json.dumps(dict(last.fields), sort_keys=True, separators=(",", ":")),
                prev=last.prev,
                hash=last.hash,
            )
        )


def downgrade() -> None:
    """Drop the anchors (an older Tether writes none)."""
    op.execute(sa.delete(_EVENTS).where(_EVENTS.c.chain == ANCHOR_CHAIN))
