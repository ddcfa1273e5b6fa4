"""Vendor service: engineer credentials, API sessions, one-click cases, live channels.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _enum(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=16)


def upgrade() -> None:
    """Add engineer credentials and the api_tokens, machines, cases, live_channels tables."""
    with op.batch_alter_table("engineers") as batch:
        batch.add_column(sa.Column("password_hash", sa.Text(), nullable=True))
        batch.add_column(sa.Column("totp_secret", sa.String(length=64), nullable=True))
        batch.add_column(
            sa.Column("admin", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    op.create_table(
        "api_tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("engineer", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["engineer"],
            ["engineers.name"],
            name=op.f("fk_api_tokens_engineer_engineers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_api_tokens")),
    )
    op.create_index(op.f("ix_api_tokens_engineer"), "api_tokens", ["engineer"], unique=False)
    op.create_table(
        "machines",
        sa.Column("serial", sa.String(length=128), nullable=False),
        sa.Column("machine_key", sa.String(length=255), nullable=True),
        sa.Column("first_seen_at", sa.DateTime(), nullable=False),
        sa.Column("rebound_by", sa.String(length=64), nullable=True),
        sa.Column("rebound_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("serial", name=op.f("pk_machines")),
    )
    op.create_table(
        "cases",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("serial", sa.String(length=128), nullable=False),
        sa.Column("machine_key", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column(
            "status",
            _enum("case_status", "pending", "issued", "denied", "cancelled"),
            nullable=False,
        ),
        sa.Column("decided_by", sa.String(length=64), nullable=True),
        sa.Column("decided_at", sa.DateTime(), nullable=True),
        sa.Column("key_id", sa.String(length=64), nullable=True),
        sa.Column("key_text", sa.Text(), nullable=True),
        sa.Column("deny_reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["key_id"], ["issued_keys.key_id"], name=op.f("fk_cases_key_id_issued_keys")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cases")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_cases_serial"), "cases", ["serial"], unique=False)
    op.create_index(op.f("ix_cases_status"), "cases", ["status"], unique=False)
    op.create_table(
        "live_channels",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("relay_id", sa.String(length=128), nullable=False),
        sa.Column("serial", sa.String(length=128), nullable=False),
        sa.Column("engineer", sa.String(length=64), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("opened_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_live_channels")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_live_channels_relay_id"), "live_channels", ["relay_id"], unique=False)
    op.create_index(op.f("ix_live_channels_serial"), "live_channels", ["serial"], unique=False)


def downgrade() -> None:
    """Drop what :func:`upgrade` added."""
    op.drop_index(op.f("ix_live_channels_serial"), table_name="live_channels")
    op.drop_index(op.f("ix_live_channels_relay_id"), table_name="live_channels")
    op.drop_table("live_channels")
    op.drop_index(op.f("ix_cases_status"), table_name="cases")
    op.drop_index(op.f("ix_cases_serial"), table_name="cases")
    op.drop_table("cases")
    op.drop_table("machines")
    op.drop_index(op.f("ix_api_tokens_engineer"), table_name="api_tokens")
    op.drop_table("api_tokens")
    with op.batch_alter_table("engineers") as batch:
        batch.drop_column("admin")
        batch.drop_column("totp_secret")
        batch.drop_column("password_hash")
