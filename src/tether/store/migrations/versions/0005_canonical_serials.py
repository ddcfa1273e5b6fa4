"""Serials in their one canonical form: upper case (:func:`tether.keys.check_serial`).

Before, ``machines`` held serials lower-cased and every other table as they were typed,
so ``acme-1`` and ``ACME-1`` could be two tethers, two cases or two audit heads of one
machine. Every serial column is upper-cased; where that would make two rows of one
primary key (a live tether, a machine binding, an audit head), the row that was not
already canonical is dropped: it was the look-alike.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Tables whose serial is (part of) the primary key: ``(table, other key columns)``.
_KEYED: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("machines", ()),
    ("tethers", ()),
    ("audit_heads", ("machine_key",)),
)
#: Tables where a serial is a plain column.
_PLAIN = ("issued_keys", "cases", "sealed_passwords", "live_channels")


def _table(name: str, *others: str) -> sa.TableClause:
    return sa.table(name, sa.column("serial"), *(sa.column(c) for c in others))


def upgrade() -> None:
    """Upper-case every serial, dropping look-alike rows that would collide.

    Of the rows one key would have, the canonical one is kept if there is one, else the
    first in the database's order.
    """
    for name, others in _KEYED:
        table = _table(name, *others)
        other = table.alias("other")
        rival = (
            sa.select(sa.literal(1))
            .select_from(other)
            .where(
                sa.func.upper(other.c.serial) == sa.func.upper(table.c.serial),
                sa.or_(
                    other.c.serial == sa.func.upper(other.c.serial),
                    other.c.serial < table.c.serial,
                ),
                *(other.c[c] == table.c[c] for c in others),
            )
        )
        op.execute(
            sa.delete(table).where(
                table.c.serial != sa.func.upper(table.c.serial), sa.exists(rival)
            )
        )
    for name in (*(n for n, _ in _KEYED), *_PLAIN):
        table = _table(name)
        op.execute(
            sa.update(table)
            .where(table.c.serial != sa.func.upper(table.c.serial))
            .values(serial=sa.func.upper(table.c.serial))
        )


def downgrade() -> None:
    """Give ``machines`` back the lower-case serials the older code looks up."""
    table = _table("machines")
    op.execute(
        sa.update(table)
        .where(table.c.serial != sa.func.lower(table.c.serial))
        .values(serial=sa.func.lower(table.c.serial))
    )
