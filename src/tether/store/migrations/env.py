"""Alembic environment of the store.

At run time :mod:`tether.store.migrate` hands over an open connection in
``config.attributes["connection"]`` and nothing else is read. Developers can also
run the ``alembic`` command with ``src/tether/store/alembic.ini``, e.g.::

    TETHER_DATABASE_URL=sqlite:///tmp/dev.db alembic -c src/tether/store/alembic.ini \\
        revision --autogenerate -m "add engineer password hash"

The URL comes from ``TETHER_DATABASE_URL`` or else ``sqlalchemy.url`` in the ini file.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy.engine import Connection
from sqlalchemy.types import TypeDecorator

from tether.store.db import create_engine
from tether.store.models import Base
from tether.store.urls import normalize_url

config = context.config
target_metadata = Base.metadata


def _render_item(kind: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    # Migrations stay frozen: our TypeDecorators are written as their plain SQL type.
    if kind == "type" and isinstance(obj, TypeDecorator):
        return f"sa.{obj.impl_instance!r}"
    return False


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        render_item=_render_item,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def _url() -> str:
    url = os.environ.get("TETHER_DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set TETHER_DATABASE_URL (or sqlalchemy.url in alembic.ini)")
    return normalize_url(url)


async def _run_online() -> None:
    engine = create_engine(_url())
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


def _main() -> None:
    given = config.attributes.get("connection")
    if isinstance(given, Connection):
        _run(given)
    elif context.is_offline_mode():
        context.configure(
            url=_url(),
            target_metadata=target_metadata,
            literal_binds=True,
            dialect_opts={"paramstyle": "named"},
        )
        with context.begin_transaction():
            context.run_migrations()
    else:
        if config.config_file_name is not None:
            from logging.config import fileConfig

            fileConfig(config.config_file_name, disable_existing_loggers=False)
        asyncio.run(_run_online())


_main()
