"""Alembic, run from inside the package (no ``alembic.ini`` needed at run time).

The functions here are synchronous and take a SQLAlchemy :class:`Connection`;
:class:`tether.store.Store` calls them through ``AsyncConnection.run_sync``
inside one transaction, so a failed upgrade leaves the schema as it was (both
SQLite and PostgreSQL have transactional DDL).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection

__all__ = [
    "MIGRATIONS_DIR",
    "MigrateFn",
    "alembic_config",
    "current_revision",
    "downgrade",
    "head_revision",
    "upgrade",
]

#: Where the migration environment and revisions live (installed as package data).
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: ``upgrade`` / ``downgrade``: take a connection and a target revision.
MigrateFn = Callable[[Connection, str], None]
#: Advisory lock serializing schema upgrades of one PostgreSQL database.
_MIGRATION_LOCK = 0x7465_7468_6572_0002


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config pointing at the packaged migrations.

    With ``connection``, ``env.py`` migrates through it instead of creating an
    engine of its own.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest schema revision this version of Tether knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


def current_revision(connection: Connection) -> str | None:
    """The schema revision of the database, or ``None`` for an empty database."""
    return MigrationContext.configure(connection).get_current_revision()


def _lock(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})


def upgrade(connection: Connection, revision: str = "head") -> None:
    """Upgrade the schema to ``revision`` (concurrent upgraders wait for each other)."""
    _lock(connection)
    command.upgrade(alembic_config(connection), revision)


def downgrade(connection: Connection, revision: str) -> None:
    """Downgrade the schema to ``revision`` (``"base"`` drops every table)."""
    _lock(connection)
    command.downgrade(alembic_config(connection), revision)
