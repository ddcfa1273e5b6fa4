"""Machine re-binds become revocations, so every relay of the fleet hears of them.

A re-bind means the serial's machine was replaced (or its disk copied): the tether the
old machine key holds must end on whichever relay carries it, as a revoked key does.
The revocation feed (and its PostgreSQL NOTIFY) carries it as kind ``machine``.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CHECK = "ck_revocations_revocation_kind"


def upgrade() -> None:
    with op.batch_alter_table("revocations") as batch:
        batch.drop_constraint(op.f(_CHECK), type_="check")
        batch.create_check_constraint(op.f(_CHECK), "kind IN ('key', 'engineer', 'machine')")


def downgrade() -> None:
    op.execute("DELETE FROM revocations WHERE kind = 'machine'")
    with op.batch_alter_table("revocations") as batch:
        batch.drop_constraint(op.f(_CHECK), type_="check")
        batch.create_check_constraint(op.f(_CHECK), "kind IN ('key', 'engineer')")
