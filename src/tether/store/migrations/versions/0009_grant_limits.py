"""What each live tether's grant allows, as the machine reports it, for the vendor console.

The agent tells its relay the customer's limits (consent, no sudo, file transfer, ...)
after registering; the relay keeps them on the tether's registry row (a JSON list of
lines, NULL when the machine did not report any), so the engineer sees them before
connecting. A one-click request says them too, kept on its case (``cases.limits``),
so the vendor sees them before approving.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("tethers", "cases"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("limits", sa.Text(), nullable=True))


def downgrade() -> None:
    for table in ("cases", "tethers"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("limits")
