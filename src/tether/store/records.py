"""Frozen records the repositories return (never ORM objects).

Every datetime in a record is timezone-aware UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from tether.store.models import (
    EngineerRow,
    IssuedKeyRow,
    KeyKind,
    RelayRow,
    RevocationKind,
    RevocationRow,
    SealedPasswordRow,
    TetherRow,
)

__all__ = ["Engineer", "IssuedKey", "RelayRecord", "Revocation", "TetherRecord"]


@dataclass(frozen=True)
class IssuedKey:
    """A tether key as the vendor issued it, with its use and revocation state.

    ``bound_machine_key`` is the SHA256 fingerprint of the machine key that first
    used the key (``None`` until then); a key works for that machine only.
    """

    key_id: str
    serial: str
    kind: KeyKind
    issued_at: datetime
    not_before: datetime
    expires_at: datetime
    ports: tuple[int, ...]
    relay: str
    relay_host_key: str
    issued_by: str
    description: str | None
    bound_machine_key: str | None
    first_used_at: datetime | None
    revoked_at: datetime | None
    revoke_reason: str | None

    @property
    def revoked(self) -> bool:
        """Whether the vendor revoked this key."""
        return self.revoked_at is not None

    @property
    def used(self) -> bool:
        """Whether a machine has already used (and so bound) this key."""
        return self.bound_machine_key is not None

    def expired(self, now: datetime) -> bool:
        """Whether the key is past its expiry at ``now`` (aware)."""
        return now >= self.expires_at

    @classmethod
    def from_row(cls, row: IssuedKeyRow) -> IssuedKey:
        """Copy an ORM row into a record."""
        return cls(
            key_id=row.key_id,
            serial=row.serial,
            kind=row.kind,
            issued_at=row.issued_at,
            not_before=row.not_before,
            expires_at=row.expires_at,
            ports=tuple(row.ports),
            relay=row.relay,
            relay_host_key=row.relay_host_key,
            issued_by=row.issued_by,
            description=row.description,
            bound_machine_key=row.bound_machine_key,
            first_used_at=row.first_used_at,
            revoked_at=row.revoked_at,
            revoke_reason=row.revoke_reason,
        )


@dataclass(frozen=True)
class Engineer:
    """A vendor support engineer account."""

    name: str
    created_at: datetime
    disabled_at: datetime | None

    @property
    def active(self) -> bool:
        """Whether the engineer may get certificates and connect."""
        return self.disabled_at is None

    @classmethod
    def from_row(cls, row: EngineerRow) -> Engineer:
        """Copy an ORM row into a record."""
        return cls(name=row.name, created_at=row.created_at, disabled_at=row.disabled_at)


@dataclass(frozen=True)
class TetherRecord:
    """A live tether: the relay currently holding the machine with ``serial``."""

    serial: str
    key_id: str
    relay_id: str
    relay_address: str
    machine_key: str
    connected_at: datetime
    last_seen_at: datetime

    @classmethod
    def from_row(cls, row: TetherRow) -> TetherRecord:
        """Copy an ORM row into a record."""
        return cls(
            serial=row.serial,
            key_id=row.key_id,
            relay_id=row.relay_id,
            relay_address=row.relay_address,
            machine_key=row.machine_key,
            connected_at=row.connected_at,
            last_seen_at=row.last_seen_at,
        )


@dataclass(frozen=True)
class Revocation:
    """An append-only revocation event; ``id`` grows in commit order."""

    id: int
    kind: RevocationKind
    subject: str
    at: datetime
    reason: str

    @classmethod
    def from_row(cls, row: RevocationRow) -> Revocation:
        """Copy an ORM row into a record."""
        return cls(id=row.id, kind=row.kind, subject=row.subject, at=row.at, reason=row.reason)


@dataclass(frozen=True)
class RelayRecord:
    """A relay of the fleet and when it was last heard of."""

    relay_id: str
    address: str
    started_at: datetime
    last_seen_at: datetime

    @classmethod
    def from_row(cls, row: RelayRow) -> RelayRecord:
        """Copy an ORM row into a record."""
        return cls(
            relay_id=row.relay_id,
            address=row.address,
            started_at=row.started_at,
            last_seen_at=row.last_seen_at,
        )


@dataclass(frozen=True)
class SealedPassword:
    """A machine's support password, sealed to the vendor; only the vendor can open it."""

    key_id: str
    serial: str
    sealed: str
    received_at: datetime

    @classmethod
    def from_row(cls, row: SealedPasswordRow) -> SealedPassword:
        """Copy an ORM row into a record."""
        return cls(row.key_id, row.serial, row.sealed, row.received_at)
