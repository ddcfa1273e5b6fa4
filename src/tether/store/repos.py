"""Repositories: the only way the rest of Tether reads and writes the store.

Each method is one short transaction and returns frozen records from
:mod:`tether.store.records`. Datetimes going in must be timezone-aware
(:class:`ValueError` otherwise); datetimes coming out are aware UTC.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from tether.errors import BadInput, Refused
from tether.store import records
from tether.store.db import Database, StoreConflict, StoreError
from tether.store.models import (
    EngineerRow,
    IssuedKeyRow,
    KeyKind,
    RevocationKind,
    RevocationRow,
)
from tether.store.records import Engineer, EngineerCredentials, IssuedKey, Revocation
from tether.store.types import format_ports, require_aware, require_serial, require_text

__all__ = [
    "ENGINEER_NAME_RULE",
    "REVOCATION_CHANNEL",
    "EngineerRepo",
    "KeyRepo",
    "RevocationRepo",
    "validate_engineer_name",
]

#: PostgreSQL NOTIFY channel; the payload is the new revocation's id.
REVOCATION_CHANNEL = "tether_revocations"
#: Advisory lock serializing revocation inserts on PostgreSQL, so that ids become
#: visible in increasing order and ``since(last_id)`` never skips one.
_REVOCATION_LOCK = 0x7465_7468_6572_0001

_ENGINEER_NAME = re.compile(r"[a-z][a-z0-9._-]{0,31}")
#: The engineer name rule, in words, for error messages.
ENGINEER_NAME_RULE = (
    "1 to 32 characters: a lower-case letter first, then lower-case letters, "
    "digits, '.', '_' or '-'"
)


_BASE32 = re.compile(r"[A-Z2-7]{16,64}")
#: What a stored password hash looks like: an argon2 PHC string, never a plain password.
_PHC = re.compile(r"\$argon2(id|i|d)\$[A-Za-z0-9$=,+/.-]{20,500}")


def _hash_text(value: str) -> str:
    """Return ``value`` if it is an argon2 PHC string; refuse anything else (a password?)."""
    if not isinstance(value, str) or _PHC.fullmatch(value) is None:
        raise BadInput("a password hash must be an argon2 PHC string ($argon2id$...)")
    return value


def validate_engineer_name(name: str) -> str:
    """Return ``name`` if it is a valid engineer name, else raise :class:`BadInput`."""
    if not isinstance(name, str) or _ENGINEER_NAME.fullmatch(name) is None:
        raise BadInput(f"invalid engineer name {name!r}: use {ENGINEER_NAME_RULE}")
    return name


async def append_revocation(
    db: Database,
    session: AsyncSession,
    kind: RevocationKind,
    subject: str,
    reason: str,
    now: datetime,
) -> None:
    """Append a revocation in the caller's transaction (and NOTIFY on PostgreSQL)."""
    if db.is_postgresql:
        await session.execute(select(func.pg_advisory_xact_lock(_REVOCATION_LOCK)))
    row = RevocationRow(kind=kind, subject=subject, at=now, reason=reason)
    session.add(row)
    await session.flush()
    if db.is_postgresql:
        await session.execute(select(func.pg_notify(REVOCATION_CHANNEL, str(row.id))))


class KeyRepo:
    """Issued tether keys: recording, first-use binding, revocation."""

    def __init__(self, db: Database) -> None:
        """Use ``db`` for every transaction."""
        self._db = db

    async def record_issued(
        self,
        *,
        key_id: str,
        serial: str,
        kind: KeyKind,
        issued_at: datetime,
        not_before: datetime,
        expires_at: datetime,
        ports: tuple[int, ...],
        relay: str,
        relay_host_key: str,
        issued_by: str,
        description: str | None = None,
    ) -> IssuedKey:
        """Record a key the vendor just issued; a duplicate ``key_id`` raises StoreError."""
        if not isinstance(kind, KeyKind):
            raise BadInput(f"key kind must be one of {[k.value for k in KeyKind]}, got {kind!r}")
        try:
            format_ports(tuple(ports))
        except ValueError as exc:
            raise BadInput(f"bad ports for key {key_id!r}: {exc}") from exc
        row = IssuedKeyRow(
            key_id=require_text(key_id, "key id", 64),
            serial=require_serial(serial),
            kind=kind,
            issued_at=require_aware(issued_at, "issued_at"),
            not_before=require_aware(not_before, "not_before"),
            expires_at=require_aware(expires_at, "expires_at"),
            ports=tuple(ports),
            relay=require_text(relay, "relay address", 255),
            relay_host_key=require_text(relay_host_key, "relay host key", 255),
            issued_by=require_text(issued_by, "issuer", 64),
            description=description,
        )
        try:
            async with self._db.write(f"recording key {key_id}") as session:
                session.add(row)
        except StoreConflict as exc:
            raise StoreError(
                f"a key with id {key_id!r} is already recorded in {self._db.url_for_display}"
            ) from exc
        return IssuedKey.from_row(row)

    async def get(self, key_id: str) -> IssuedKey | None:
        """The key with ``key_id``, or ``None``."""
        async with self._db.read(f"reading key {key_id}") as session:
            row = await session.get(IssuedKeyRow, key_id)
            return None if row is None else IssuedKey.from_row(row)

    async def get_many(self, key_ids: Iterable[str]) -> dict[str, IssuedKey]:
        """The keys with these ids that exist, by id (one query)."""
        wanted = sorted(set(key_ids))
        if not wanted:
            return {}
        async with self._db.read("reading keys") as session:
            rows = (
                await session.scalars(select(IssuedKeyRow).where(IssuedKeyRow.key_id.in_(wanted)))
            ).all()
            return {r.key_id: IssuedKey.from_row(r) for r in rows}

    async def list(
        self,
        *,
        serial: str | None = None,
        include_expired: bool = True,
        now: datetime | None = None,
    ) -> list[IssuedKey]:
        """Keys, newest first; optionally of one serial and/or not expired at ``now``."""
        stmt = select(IssuedKeyRow).order_by(
            IssuedKeyRow.issued_at.desc(), IssuedKeyRow.key_id.desc()
        )
        if serial is not None:
            stmt = stmt.where(IssuedKeyRow.serial == require_serial(serial))
        if not include_expired:
            at = datetime.now(UTC) if now is None else require_aware(now, "now")
            stmt = stmt.where(IssuedKeyRow.expires_at > at)
        async with self._db.read("listing keys") as session:
            rows = (await session.scalars(stmt)).all()
            return [IssuedKey.from_row(r) for r in rows]

    async def revoke(self, key_id: str, *, reason: str, now: datetime) -> IssuedKey:
        """Revoke a key and append a key revocation, in one transaction.

        Unknown key: :class:`BadInput`. Already revoked: returned unchanged and no
        second revocation is written.
        """
        at = require_aware(now, "now")
        async with self._db.write(f"revoking key {key_id}") as session:
            row = await session.scalar(
                select(IssuedKeyRow).where(IssuedKeyRow.key_id == key_id).with_for_update()
            )
            if row is None:
                raise BadInput(f"no key with id {key_id!r}; `tether vendor` lists issued keys")
            if row.revoked_at is None:
                row.revoked_at = at
                row.revoke_reason = reason
                await append_revocation(self._db, session, RevocationKind.KEY, key_id, reason, at)
            return IssuedKey.from_row(row)

    async def spend(self, key_id: str, *, detail: str, now: datetime) -> bool:
        """Mark a key spent: the machine closed the access it opened; return whether it was.

        Stored like a revocation (``revoked_at``, ``revoke_reason`` starting with
        :data:`~tether.store.records.SPENT_PREFIX`) so that every admission refuses it,
        without a revocation notice: the tether is going away by itself. A key
        already revoked or spent stays as it is.
        """
        at = require_aware(now, "now")
        reason = records.SPENT_PREFIX + require_text(detail, "detail", 200)
        async with self._db.write(f"spending key {key_id}") as session:
            row = await session.scalar(
                select(IssuedKeyRow).where(IssuedKeyRow.key_id == key_id).with_for_update()
            )
            if row is None or row.revoked_at is not None:
                return False
            row.revoked_at = at
            row.revoke_reason = reason
            return True


class EngineerRepo:
    """Engineer accounts: add, disable/enable, remove."""

    def __init__(self, db: Database) -> None:
        """Use ``db`` for every transaction."""
        self._db = db

    async def add(
        self,
        name: str,
        now: datetime,
        *,
        admin: bool = False,
        password_hash: str | None = None,
    ) -> Engineer:
        """Create an engineer; bad name: :class:`BadInput`; existing: :class:`Refused`.

        ``password_hash`` (an argon2 PHC string, never a password) may be set at once,
        so that an account never exists half-made.
        """
        validate_engineer_name(name)
        row = EngineerRow(
            name=name,
            created_at=require_aware(now, "now"),
            disabled_at=None,
            admin=bool(admin),
            password_hash=None if password_hash is None else _hash_text(password_hash),
            totp_secret=None,
        )
        try:
            async with self._db.write(f"adding engineer {name}") as session:
                session.add(row)
        except StoreConflict as exc:
            raise Refused(f"engineer {name} already exists") from exc
        return Engineer.from_row(row)

    async def get(self, name: str) -> Engineer | None:
        """The engineer called ``name``, or ``None``."""
        async with self._db.read(f"reading engineer {name}") as session:
            row = await session.get(EngineerRow, name)
            return None if row is None else Engineer.from_row(row)

    async def list(self) -> list[Engineer]:
        """All engineers, by name."""
        async with self._db.read("listing engineers") as session:
            rows = (await session.scalars(select(EngineerRow).order_by(EngineerRow.name))).all()
            return [Engineer.from_row(r) for r in rows]

    async def _locked(self, session: AsyncSession, name: str) -> EngineerRow:
        row = await session.scalar(
            select(EngineerRow).where(EngineerRow.name == name).with_for_update()
        )
        if row is None:
            raise BadInput(f"no engineer named {name!r}")
        return row

    async def disable(self, name: str, *, reason: str, now: datetime) -> Engineer:
        """Disable an engineer and append an engineer revocation, in one transaction.

        Already disabled: returned unchanged, no second revocation. Unknown: BadInput.
        """
        at = require_aware(now, "now")
        async with self._db.write(f"disabling engineer {name}") as session:
            row = await self._locked(session, name)
            if row.disabled_at is None:
                row.disabled_at = at
                await append_revocation(
                    self._db, session, RevocationKind.ENGINEER, name, reason, at
                )
            return Engineer.from_row(row)

    async def enable(self, name: str) -> Engineer:
        """Enable a disabled engineer again (no-op if active). Unknown: BadInput."""
        async with self._db.write(f"enabling engineer {name}") as session:
            row = await self._locked(session, name)
            row.disabled_at = None
            return Engineer.from_row(row)

    async def credentials(self, name: str) -> EngineerCredentials | None:
        """The password hash and TOTP secret of ``name`` (for the login code only), or ``None``."""
        async with self._db.read(f"reading credentials of engineer {name}") as session:
            row = await session.get(EngineerRow, name)
            return None if row is None else EngineerCredentials.from_row(row)

    async def set_password(self, name: str, password_hash: str) -> Engineer:
        """Replace the engineer's password hash (an argon2 PHC string). Unknown: BadInput."""
        value = _hash_text(password_hash)
        async with self._db.write(f"setting the password of engineer {name}") as session:
            row = await self._locked(session, name)
            row.password_hash = value
            return Engineer.from_row(row)

    async def set_totp(self, name: str, secret: str | None) -> Engineer:
        """Set (a base32 secret) or clear (``None``) the engineer's TOTP secret. Unknown: BadInput."""
        if secret is not None and (
            not isinstance(secret, str) or not _BASE32.fullmatch(secret) or len(secret) > 64
        ):
            raise BadInput("a TOTP secret must be 16 to 64 base32 characters")
        async with self._db.write(f"setting the one-time codes of engineer {name}") as session:
            row = await self._locked(session, name)
            row.totp_secret = secret
            return Engineer.from_row(row)

    async def set_admin(self, name: str, admin: bool) -> Engineer:
        """Grant or take away admin rights. Unknown: BadInput."""
        async with self._db.write(f"setting admin rights of engineer {name}") as session:
            row = await self._locked(session, name)
            row.admin = bool(admin)
            return Engineer.from_row(row)

    async def remove(self, name: str, *, now: datetime) -> None:
        """Delete an engineer and append an engineer revocation (reason "removed")."""
        at = require_aware(now, "now")
        async with self._db.write(f"removing engineer {name}") as session:
            row = await self._locked(session, name)
            await session.delete(row)
            await append_revocation(self._db, session, RevocationKind.ENGINEER, name, "removed", at)


class RevocationRepo:
    """The append-only revocation feed relays poll."""

    def __init__(self, db: Database) -> None:
        """Use ``db`` for every transaction."""
        self._db = db

    async def since(self, last_id: int, limit: int = 1000) -> list[Revocation]:
        """Revocations with ``id > last_id``, oldest first, at most ``limit``."""
        stmt = (
            select(RevocationRow)
            .where(RevocationRow.id > last_id)
            .order_by(RevocationRow.id)
            .limit(limit)
        )
        async with self._db.read("reading revocations") as session:
            return [Revocation.from_row(r) for r in (await session.scalars(stmt)).all()]

    async def head(self) -> int:
        """The highest revocation id, or 0 when there is none."""
        async with self._db.read("reading revocation head") as session:
            value = await session.scalar(select(func.max(RevocationRow.id)))
            return int(value or 0)
