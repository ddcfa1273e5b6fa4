"""The engine and the short transactions every repository runs in.

SQLite connections are set up with ``journal_mode=WAL``, ``busy_timeout=5000``
and ``foreign_keys=ON``; SQLAlchemy emits ``BEGIN`` itself so that write
transactions start with ``BEGIN IMMEDIATE`` (taking the write lock up front, so
a read-modify-write cannot fail half-way on a lock upgrade) while reads keep
a plain deferred ``BEGIN`` and run concurrently with writers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session

from tether.errors import TetherError
from tether.store.urls import display_url, mask_secret

__all__ = ["Database", "StoreConflict", "StoreError", "create_engine", "describe_error"]

_WRITE_OPTION = "tether_write"
_T = TypeVar("_T")
#: Seconds to wait for a PostgreSQL connection before giving up.
CONNECT_TIMEOUT = 10.0


class StoreError(TetherError):
    """The database could not do what was asked (unreachable, locked, corrupt...).

    Messages name the database by its display URL, never with its password.
    """


class StoreConflict(StoreError):
    """A write broke a uniqueness or reference rule (e.g. a duplicate id)."""


def describe_error(exc: BaseException, url: str) -> str:
    """One line saying why ``exc`` happened, with any password of ``url`` removed."""
    orig = exc.orig if isinstance(exc, DBAPIError) else None
    text = str(orig) if orig is not None else str(exc)
    if not text:
        text = type(orig if orig is not None else exc).__name__
    first = text.strip().splitlines()[0] if text.strip() else text
    return mask_secret(first, url)


#: Pooled SQLite connections (writers still take turns: BEGIN IMMEDIATE).
SQLITE_POOL_SIZE = 24


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # SQLAlchemy emits BEGIN itself (see _on_sqlite_begin); stop the driver doing it.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _on_sqlite_begin(conn: Connection) -> None:
    if conn.get_execution_options().get(_WRITE_OPTION):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")


def create_engine(url: str) -> AsyncEngine:
    """Create the async engine for a normalized store URL, with the SQLite set-up."""
    if url.startswith("sqlite"):
        # Each SQLite connection is a thread of aiosqlite's: keep enough of them pooled
        # that a burst of tethers registering at once (a relay restart) reuses them
        # instead of opening and closing one per transaction.
        engine = create_async_engine(url, pool_size=SQLITE_POOL_SIZE, max_overflow=0)
        event.listen(engine.sync_engine, "connect", _on_sqlite_connect)
        event.listen(engine.sync_engine, "begin", _on_sqlite_begin)
        return engine
    return create_async_engine(url, pool_pre_ping=True, connect_args={"timeout": CONNECT_TIMEOUT})


def _create_sqlite_writer_engine(url: str) -> Engine:
    # The same file through the standard sqlite3 driver, for the writer thread (see
    # Database.write_at_once); set up as the async engine's connections are.
    engine = create_sync_engine(
        url.replace("sqlite+aiosqlite:", "sqlite+pysqlite:", 1),
        connect_args={"check_same_thread": False},  # opened in the thread, closed anywhere
        pool_size=1,
        max_overflow=0,
    )
    event.listen(engine, "connect", _on_sqlite_connect)
    event.listen(engine, "begin", _on_sqlite_begin)
    return engine.execution_options(**{_WRITE_OPTION: True})


def _create_reserved_engine(url: str) -> AsyncEngine:
    # One connection of its own, outside the shared pool (see Database.write's ``reserved``).
    return create_async_engine(
        url, pool_size=1, max_overflow=0, pool_pre_ping=True,
        connect_args={"timeout": CONNECT_TIMEOUT},
    )  # fmt: skip


class Database:
    """An engine plus the session factory; hands out short read/write transactions."""

    def __init__(self, engine: AsyncEngine, url: str) -> None:
        """Wrap ``engine`` (created by :func:`create_engine` for ``url``)."""
        self.engine = engine
        self.url = url
        self.url_for_display = display_url(url)
        self.dialect = engine.dialect.name
        self.write_engine = (
            engine.execution_options(**{_WRITE_OPTION: True})
            if self.dialect == "sqlite"
            else engine
        )
        self._sessions = async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
        # A saturated relay (a reconnect storm of thousands of tethers registering) queues
        # its transactions for the shared pool for up to its 30 s timeout; a heartbeat in
        # that queue arrives late and the fleet sweeps a relay that is alive. Work that
        # proves liveness gets a connection of its own on PostgreSQL. (SQLite has one
        # writer at a time whatever the pool: its writers queue in order below.)
        self.reserved_engine = (
            _create_reserved_engine(url) if self.is_postgresql else self.write_engine
        )
        # SQLite has one writer at a time. Writers of this process queue here, in order,
        # instead of all holding a pooled connection in SQLite's busy-wait: under a burst
        # (a relay restart) that wait ran out ("database is locked"). Other processes on
        # the same file still meet SQLite's own busy timeout.
        self._sqlite_writers: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}
        # Made on first use by write_at_once (SQLite only).
        self._writer_engine: Engine | None = None
        self._writer_thread: ThreadPoolExecutor | None = None

    @property
    def is_postgresql(self) -> bool:
        """Whether this is a PostgreSQL database."""
        return self.dialect == "postgresql"

    def error(self, exc: BaseException, doing: str) -> StoreError:
        """A :class:`StoreError` for ``exc`` met while ``doing`` something."""
        reason = describe_error(exc, self.url)
        cls = StoreConflict if isinstance(exc, IntegrityError) else StoreError
        return cls(f"database error at {self.url_for_display} while {doing}: {reason}")

    @asynccontextmanager
    async def _transaction(
        self, doing: str, *, write: bool, reserved: bool = False
    ) -> AsyncIterator[AsyncSession]:
        bind = self.reserved_engine if reserved else self.write_engine if write else self.engine
        queue = self._writer_queue() if write else None
        try:
            async with (
                queue or contextlib.nullcontext(),
                self._sessions(bind=bind) as session,
                session.begin(),
            ):
                yield session
        except (SQLAlchemyError, OSError) as exc:
            raise self.error(exc, doing) from exc

    def _writer_queue(self) -> asyncio.Lock | None:
        if self.dialect != "sqlite":
            return None
        loop = asyncio.get_running_loop()
        lock = self._sqlite_writers.get(loop)
        if lock is None:
            for old in [other for other in self._sqlite_writers if other.is_closed()]:
                del self._sqlite_writers[old]
            lock = self._sqlite_writers[loop] = asyncio.Lock()
        return lock

    def read(self, doing: str) -> AbstractAsyncContextManager[AsyncSession]:
        """``async with db.read("listing keys") as session:`` a read-only transaction."""
        return self._transaction(doing, write=False)

    def write(
        self, doing: str, *, reserved: bool = False
    ) -> AbstractAsyncContextManager[AsyncSession]:
        """``async with db.write("revoking key") as session:`` a write transaction.

        On SQLite it starts with ``BEGIN IMMEDIATE``. Database failures leave as
        :class:`StoreError` (:class:`StoreConflict` for constraint violations).

        :param reserved: run on the connection reserved for the relay's liveness
            (heartbeats, sweeps) on PostgreSQL, so that it never waits behind a
            saturated pool; at most one such transaction runs at a time.
        """
        return self._transaction(doing, write=True, reserved=reserved)

    async def write_at_once(self, doing: str, work: Callable[[Session], _T]) -> _T:
        """Run ``work`` in one write transaction as a single step of the event loop.

        Each statement of an async session costs the event loop a turn (on SQLite, a hop
        to an aiosqlite thread and back: 16 to 23 for one tether's admission), and when
        the loop is busy, a pre-auth flood say, every turn waits behind everything else
        (bench/README.md, the flood rows). Here SQLite runs all of ``work`` in a writer
        thread of its own, with the standard sqlite3 driver on the same file, and the
        loop waits once. On PostgreSQL, whose statements are network round trips either
        way, ``work`` runs in the async session (``run_sync``).

        ``work`` gets a synchronous :class:`~sqlalchemy.orm.Session`; on SQLite it runs
        in another thread, so what it calls back into must only read shared state.
        Database failures leave as :class:`StoreError`, as from :meth:`write`.
        """
        if self.dialect != "sqlite":
            async with self.write(doing) as session:
                return await session.run_sync(work)
        if self._writer_thread is None or self._writer_engine is None:
            self._writer_thread = ThreadPoolExecutor(1, thread_name_prefix="tether-sqlite")
            self._writer_engine = _create_sqlite_writer_engine(self.url)
        thread, engine = self._writer_thread, self._writer_engine

        def run() -> _T:
            with Session(engine) as session, session.begin():
                return work(session)

        async with self._writer_queue() or contextlib.nullcontext():
            try:
                return await asyncio.get_running_loop().run_in_executor(thread, run)
            except (SQLAlchemyError, OSError) as exc:
                raise self.error(exc, doing) from exc

    async def dispose(self) -> None:
        """Close every connection, the reserved one and the SQLite writer's too."""
        await self.engine.dispose()
        if self.is_postgresql:
            await self.reserved_engine.dispose()
        writer, self._writer_thread = self._writer_thread, None
        if writer is not None and self._writer_engine is not None:
            engine, self._writer_engine = self._writer_engine, None
            await asyncio.get_running_loop().run_in_executor(writer, engine.dispose)
            writer.shutdown(wait=False)
