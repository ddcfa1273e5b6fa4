"""Initial schema: issued keys, engineers, tethers, relays, revocations.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _enum(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=16)


def upgrade() -> None:
    """Create every table of the store."""
    op.create_table(
        "engineers",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("disabled_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_engineers")),
    )
    op.create_table(
        "issued_keys",
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("serial", sa.String(length=128), nullable=False),
        sa.Column("kind", _enum("key_kind", "manual", "request"), nullable=False),
        sa.Column("issued_at", sa.DateTime(), nullable=False),
        sa.Column("not_before", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("ports", sa.Text(), nullable=False),
        sa.Column("relay", sa.String(length=255), nullable=False),
        sa.Column("relay_host_key", sa.String(length=255), nullable=False),
        sa.Column("issued_by", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("bound_machine_key", sa.String(length=255), nullable=True),
        sa.Column("first_used_at", sa.DateTime(), nullable=True),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.Column("revoke_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_issued_keys")),
    )
    op.create_index(op.f("ix_issued_keys_serial"), "issued_keys", ["serial"], unique=False)
    op.create_table(
        "relays",
        sa.Column("relay_id", sa.String(length=128), nullable=False),
        sa.Column("address", sa.String(length=255), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("relay_id", name=op.f("pk_relays")),
    )
    op.create_table(
        "revocations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", _enum("revocation_kind", "key", "engineer"), nullable=False),
        sa.Column("subject", sa.String(length=128), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_revocations")),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "tethers",
        sa.Column("serial", sa.String(length=128), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("relay_id", sa.String(length=128), nullable=False),
        sa.Column("relay_address", sa.String(length=255), nullable=False),
        sa.Column("machine_key", sa.String(length=255), nullable=False),
        sa.Column("connected_at", sa.DateTime(), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["key_id"], ["issued_keys.key_id"], name=op.f("fk_tethers_key_id_issued_keys")
        ),
        sa.PrimaryKeyConstraint("serial", name=op.f("pk_tethers")),
    )
    op.create_index(op.f("ix_tethers_relay_id"), "tethers", ["relay_id"], unique=False)


def downgrade() -> None:
    """Drop every table of the store."""
    op.drop_index(op.f("ix_tethers_relay_id"), table_name="tethers")
    op.drop_table("tethers")
    op.drop_table("revocations")
    op.drop_table("relays")
    op.drop_index(op.f("ix_issued_keys_serial"), table_name="issued_keys")
    op.drop_table("issued_keys")
    op.drop_table("engineers")
