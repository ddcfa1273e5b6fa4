"""Audit: hash-chained audit events of the vendor and the relays, machines' chain heads.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the audit_events and audit_heads tables."""
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("chain", sa.String(length=160), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("at", sa.String(length=20), nullable=False),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("fields", sa.Text(), nullable=False),
        sa.Column("prev", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
        sa.UniqueConstraint("chain", "seq", name=op.f("uq_audit_events_chain_seq")),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "audit_heads",
        sa.Column("serial", sa.String(length=128), nullable=False),
        sa.Column("machine_key", sa.String(length=255), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("mismatches", sa.Integer(), server_default="0", nullable=False),
        sa.Column("mismatch", sa.Text(), nullable=True),
        sa.Column("mismatch_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("serial", "machine_key", name=op.f("pk_audit_heads")),
    )


def downgrade() -> None:
    """Drop what :func:`upgrade` added."""
    op.drop_table("audit_heads")
    op.drop_table("audit_events")
