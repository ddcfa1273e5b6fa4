"""Fleet membership: which process holds a relay id, and how many tethers it carries.

``instance`` is a random token of the running relay process: a second process started
with the same relay id sees a live row held by another instance and refuses to start.
``tethers`` is what the relay counted at its last heartbeat (for ops and the console).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("relays") as batch:
        batch.add_column(
            sa.Column("instance", sa.String(length=64), nullable=False, server_default="")
        )
        batch.add_column(sa.Column("tethers", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("relays") as batch:
        batch.drop_column("tethers")
        batch.drop_column("instance")
