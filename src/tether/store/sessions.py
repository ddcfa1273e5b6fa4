"""Vendor-service sessions: bearer tokens, stored only as their SHA-256.

The vendor service hands an engineer a random token at login and keeps its hash
here; a stolen copy of the database holds no usable token. Removing an engineer
removes their sessions (``ON DELETE CASCADE``).
"""

from __future__ import annotations

import re
from datetime import datetime

from sqlalchemy import delete

from tether.errors import BadInput
from tether.store.db import Database, StoreConflict
from tether.store.models import ApiTokenRow
from tether.store.records import TokenRecord
from tether.store.types import require_aware

__all__ = ["TokenRepo"]

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _check_hash(token_hash: str) -> str:
    if not isinstance(token_hash, str) or _SHA256_HEX.fullmatch(token_hash) is None:
        raise BadInput("a token hash is 64 lower-case hex digits (SHA-256), never the token")
    return token_hash


class TokenRepo:
    """Sessions of the vendor service's API."""

    def __init__(self, db: Database) -> None:
        """Use ``db`` for every transaction."""
        self._db = db

    async def create(
        self, engineer: str, token_hash: str, now: datetime, expires_at: datetime
    ) -> TokenRecord:
        """Record a session of ``engineer``. Unknown engineer: :class:`BadInput`."""
        row = ApiTokenRow(
            token_hash=_check_hash(token_hash),
            engineer=engineer,
            created_at=require_aware(now, "now"),
            expires_at=require_aware(expires_at, "expires_at"),
        )
        try:
            async with self._db.write(f"opening a session for {engineer}") as session:
                session.add(row)
        except StoreConflict as exc:
            raise BadInput(f"cannot open a session for {engineer!r}: no such engineer") from exc
        return TokenRecord.from_row(row)

    async def get(self, token_hash: str) -> TokenRecord | None:
        """The session with this token hash, or ``None`` (expired ones too: check them)."""
        if not isinstance(token_hash, str) or _SHA256_HEX.fullmatch(token_hash) is None:
            return None
        async with self._db.read("reading a session") as session:
            row = await session.get(ApiTokenRow, token_hash)
            return None if row is None else TokenRecord.from_row(row)

    async def delete(self, token_hash: str) -> None:
        """End one session (no-op if it does not exist)."""
        stmt = delete(ApiTokenRow).where(ApiTokenRow.token_hash == token_hash)
        async with self._db.write("ending a session") as session:
            await session.execute(stmt.execution_options(synchronize_session=False))

    async def delete_engineer(self, engineer: str) -> int:
        """End every session of ``engineer`` (e.g. when disabled); return how many."""
        stmt = delete(ApiTokenRow).where(ApiTokenRow.engineer == engineer)
        async with self._db.write(f"ending the sessions of {engineer}") as session:
            result = await session.execute(stmt.execution_options(synchronize_session=False))
            return int(getattr(result, "rowcount", 0) or 0)

    async def purge_expired(self, now: datetime) -> int:
        """Delete sessions that ended at or before ``now``; return how many."""
        at = require_aware(now, "now")
        stmt = delete(ApiTokenRow).where(ApiTokenRow.expires_at <= at)
        async with self._db.write("purging expired sessions") as session:
            result = await session.execute(stmt.execution_options(synchronize_session=False))
            return int(getattr(result, "rowcount", 0) or 0)
