"""The :class:`Store`: one database (SQLite file or PostgreSQL), its schema, its repositories."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic.util.exc import CommandError
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from tether.errors import NotReady
from tether.store import migrate as migrations
from tether.store.auditchain import AuditRepo
from tether.store.cases import CaseRepo, MachineRepo
from tether.store.changes import ChangeFeed
from tether.store.db import Database, StoreError, create_engine, describe_error
from tether.store.registry import ChannelRepo, PasswordRepo, TetherRepo
from tether.store.relays import RelayRepo
from tether.store.repos import EngineerRepo, KeyRepo, RevocationRepo
from tether.store.sessions import TokenRepo
from tether.store.urls import display_url, normalize_url

__all__ = ["Store"]

log = logging.getLogger("tether.store")


def _check_sqlite_directory(url: str) -> None:
    """Fail early and clearly when a SQLite file's directory is missing.

    (This also keeps aiosqlite off its failed-connect path, whose worker thread
    may outlive the event loop.)
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return
    if parsed.database.startswith("file:"):
        return
    directory = Path(parsed.database).parent
    if not directory.is_dir():
        raise StoreError(
            f"cannot open database at {display_url(url)}: directory {directory} does not "
            "exist; create it first"
        )


class Store:
    """Shared state of the vendor service and the relays.

    Open with :meth:`open`, close with :meth:`aclose`; use the repositories
    :attr:`keys`, :attr:`engineers`, :attr:`tethers`, :attr:`revocations`,
    :attr:`relays`, :attr:`passwords`, :attr:`machines`, :attr:`cases`,
    :attr:`channels`, :attr:`tokens` and :attr:`audit`. Several :class:`Store` objects (in one or
    many processes) may share a database.
    """

    keys: KeyRepo
    """Issued tether keys."""
    engineers: EngineerRepo
    """Engineer accounts."""
    tethers: TetherRepo
    """The live tether registry."""
    revocations: RevocationRepo
    """The append-only revocation feed."""
    relays: RelayRepo
    """Relays of the fleet."""
    passwords: PasswordRepo
    """Sealed support-account passwords sent by machines."""
    machines: MachineRepo
    """Serials bound to the machine key that first asked for support."""
    cases: CaseRepo
    """One-click support requests."""
    channels: ChannelRepo
    """Engineers' channels open right now."""
    tokens: TokenRepo
    """Vendor-service sessions (hashed bearer tokens)."""
    audit: AuditRepo
    """Hash-chained audit logs of the vendor and the relays, and machines' chain heads."""

    def __init__(self, db: Database) -> None:
        """Wrap an open :class:`Database`; use :meth:`open` instead."""
        self._db = db
        self.keys = KeyRepo(db)
        self.engineers = EngineerRepo(db)
        self.tethers = TetherRepo(db)
        self.revocations = RevocationRepo(db)
        self.relays = RelayRepo(db)
        self.passwords = PasswordRepo(db)
        self.machines = MachineRepo(db)
        self.cases = CaseRepo(db)
        self.channels = ChannelRepo(db)
        self.tokens = TokenRepo(db)
        self.audit = AuditRepo(db)

    @classmethod
    async def open(cls, url: str, *, migrate: bool = True) -> Store:
        """Connect to the database at ``url`` and, if ``migrate``, upgrade its schema.

        ``url`` is anything :func:`~tether.store.normalize_url` accepts
        (:class:`~tether.errors.BadInput` otherwise). A database that cannot be
        reached or upgraded raises :class:`StoreError` naming the URL without its
        password. With ``migrate=False`` the schema is not touched; see
        :meth:`require_current_schema`.
        """
        normalized = normalize_url(url)
        _check_sqlite_directory(normalized)
        db = Database(create_engine(normalized), normalized)
        store = cls(db)
        try:
            async with db.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            if migrate:
                await store.upgrade()
        except StoreError:
            await store.aclose()
            raise
        except (SQLAlchemyError, OSError) as exc:
            await store.aclose()
            reason = describe_error(exc, normalized)
            if db.dialect == "sqlite":
                reason += " (does its directory exist, and may this user write there?)"
            raise StoreError(f"cannot open database at {db.url_for_display}: {reason}") from exc
        log.info("store.open url=%s migrate=%s", db.url_for_display, migrate)
        return store

    @property
    def url_for_display(self) -> str:
        """The database URL with any password shown as ``***``."""
        return self._db.url_for_display

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._db.dialect

    def change_feed(self) -> ChangeFeed | None:
        """A new, not yet started :class:`~tether.store.changes.ChangeFeed` of the revocation
        feed on PostgreSQL; ``None`` on SQLite, which has no notifications (poll instead).
        """
        if not self._db.is_postgresql:
            return None
        return ChangeFeed(self._db.engine, self._db.url)

    async def aclose(self) -> None:
        """Close every connection of this store."""
        await self._db.dispose()

    async def __aenter__(self) -> Store:
        """``async with await Store.open(url) as store:`` closes it on exit."""
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Close the store."""
        await self.aclose()

    async def schema_revision(self) -> str | None:
        """The Alembic revision of the database schema (``None`` if never migrated)."""
        try:
            async with self._db.engine.connect() as conn:
                return await conn.run_sync(migrations.current_revision)
        except (SQLAlchemyError, OSError) as exc:
            raise self._db.error(exc, "reading the schema revision") from exc

    async def require_current_schema(self) -> None:
        """Raise :class:`~tether.errors.NotReady` unless the schema is at the newest revision."""
        current = await self.schema_revision()
        head = migrations.head_revision()
        if current != head:
            raise NotReady(
                f"database at {self.url_for_display} has schema revision {current or 'none'}, "
                f"this Tether needs {head}: open it once with migrations enabled "
                "(e.g. `tether vendor init`)"
            )

    async def upgrade(self, revision: str = "head") -> None:
        """Upgrade the schema to ``revision`` in one transaction."""
        await self._migrate("upgrading the schema", migrations.upgrade, revision)

    async def downgrade(self, revision: str) -> None:
        """Downgrade the schema to ``revision`` (``"base"``: drop everything)."""
        await self._migrate("downgrading the schema", migrations.downgrade, revision)

    async def _migrate(self, doing: str, fn: migrations.MigrateFn, revision: str) -> None:
        try:
            async with self._db.write_engine.begin() as conn:
                await conn.run_sync(fn, revision)
        except CommandError as exc:
            raise StoreError(
                f"cannot migrate database at {self.url_for_display} to {revision}: "
                f"{exc} (is it from a newer version of Tether?)"
            ) from exc
        except (SQLAlchemyError, OSError) as exc:
            raise self._db.error(exc, doing) from exc
