"""Frozen records the repositories return (never ORM objects).

Every datetime in a record is timezone-aware UTC.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

from tether.store.models import (
    ApiTokenRow,
    CaseRow,
    CaseStatus,
    EngineerRow,
    IssuedKeyRow,
    KeyKind,
    LiveChannelRow,
    MachineRow,
    RelayRow,
    RevocationKind,
    RevocationRow,
    SealedPasswordRow,
    TetherRow,
)

__all__ = [
    "CaseRecord",
    "ChannelRecord",
    "Engineer",
    "EngineerCredentials",
    "IssuedKey",
    "MachineRecord",
    "RelayRecord",
    "Revocation",
    "SealedPassword",
    "TetherRecord",
    "TokenRecord",
]


#: ``revoke_reason`` of a key whose access the machine closed (see :attr:`IssuedKey.spent`).
SPENT_PREFIX = "spent: "


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
        """Whether the vendor revoked this key (or the machine spent it)."""
        return self.revoked_at is not None

    @property
    def spent(self) -> bool:
        """Whether the machine closed the access this key opened (each key works once).

        Kept in the revocation columns (``revoke_reason`` starts with
        :data:`SPENT_PREFIX`): a spent key is as dead as a revoked one, and the
        vendor's key list shows why.
        """
        return self.revoked_at is not None and (self.revoke_reason or "").startswith(SPENT_PREFIX)

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
    """A vendor support engineer account.

    It says whether a password and a TOTP secret are set, never what they are: those
    come only from :meth:`~tether.store.EngineerRepo.credentials`, for the login code.
    """

    name: str
    created_at: datetime
    disabled_at: datetime | None
    admin: bool = False
    has_password: bool = False
    totp_enabled: bool = False

    @property
    def active(self) -> bool:
        """Whether the engineer may get certificates and connect."""
        return self.disabled_at is None

    @classmethod
    def from_row(cls, row: EngineerRow) -> Engineer:
        """Copy an ORM row into a record (without the credentials)."""
        return cls(
            name=row.name,
            created_at=row.created_at,
            disabled_at=row.disabled_at,
            admin=bool(row.admin),
            has_password=row.password_hash is not None,
            totp_enabled=row.totp_secret is not None,
        )


@dataclass(frozen=True)
class EngineerCredentials:
    """What the login code checks: the password hash and TOTP secret of one engineer.

    Only the vendor service's login code asks for this; the secrets are left out of
    ``repr`` so that a stray log line cannot show them.
    """

    name: str
    active: bool
    admin: bool
    password_hash: str | None = field(repr=False)
    totp_secret: str | None = field(repr=False)

    @classmethod
    def from_row(cls, row: EngineerRow) -> EngineerCredentials:
        """Copy an ORM row into a record."""
        return cls(
            name=row.name,
            active=row.disabled_at is None,
            admin=bool(row.admin),
            password_hash=row.password_hash,
            totp_secret=row.totp_secret,
        )


def _lines(text: str | None) -> tuple[str, ...] | None:
    """A JSON list of lines from a column (None: absent or unreadable)."""
    if text is None:
        return None
    try:
        lines = json.loads(text)
    except ValueError:
        return None
    return tuple(str(x) for x in lines) if isinstance(lines, list) else None


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
    #: The grant's limits as the machine reported them (JSON list of lines; None: not
    #: reported). Kept as the column's text so a registry write stays a plain copy.
    limits: str | None = None

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
            limits=row.limits,
        )

    def limit_lines(self) -> list[str] | None:
        """The reported limits, one line each ([] : nothing limited; None: not reported)."""
        lines = _lines(self.limits)
        return None if lines is None else list(lines)


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
    instance: str = ""
    tethers: int = 0

    @classmethod
    def from_row(cls, row: RelayRow) -> RelayRecord:
        """Copy an ORM row into a record."""
        return cls(
            relay_id=row.relay_id,
            address=row.address,
            started_at=row.started_at,
            last_seen_at=row.last_seen_at,
            instance=row.instance,
            tethers=row.tethers,
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


@dataclass(frozen=True)
class TokenRecord:
    """A vendor-service session (the bearer token itself is never stored)."""

    token_hash: str
    engineer: str
    created_at: datetime
    expires_at: datetime

    def expired(self, now: datetime) -> bool:
        """Whether the session is over at ``now`` (aware)."""
        return now >= self.expires_at

    @classmethod
    def from_row(cls, row: ApiTokenRow) -> TokenRecord:
        """Copy an ORM row into a record."""
        return cls(row.token_hash, row.engineer, row.created_at, row.expires_at)


@dataclass(frozen=True)
class MachineRecord:
    """The machine key a serial is bound to (trust on first use).

    ``machine_key`` is ``None`` after an admin re-bind, until the next request binds it.
    """

    serial: str
    machine_key: str | None
    first_seen_at: datetime
    rebound_by: str | None
    rebound_at: datetime | None

    @classmethod
    def from_row(cls, row: MachineRow) -> MachineRecord:
        """Copy an ORM row into a record."""
        return cls(row.serial, row.machine_key, row.first_seen_at, row.rebound_by, row.rebound_at)


@dataclass(frozen=True)
class CaseRecord:
    """A one-click support request and its outcome.

    ``key_text`` is the issued tether key (it carries no secret); the relay hands it to
    the waiting machine.
    """

    id: int
    serial: str
    machine_key: str
    description: str
    created_at: datetime
    status: CaseStatus
    decided_by: str | None
    decided_at: datetime | None
    key_id: str | None
    key_text: str | None
    deny_reason: str | None
    #: What the customer's grant will allow, in words (None: not said).
    limits: tuple[str, ...] | None = None

    @classmethod
    def from_row(cls, row: CaseRow) -> CaseRecord:
        """Copy an ORM row into a record."""
        return cls(
            id=row.id,
            serial=row.serial,
            machine_key=row.machine_key,
            description=row.description,
            created_at=row.created_at,
            status=row.status,
            decided_by=row.decided_by,
            decided_at=row.decided_at,
            key_id=row.key_id,
            key_text=row.key_text,
            deny_reason=row.deny_reason,
            limits=_lines(row.limits),
        )


@dataclass(frozen=True)
class ChannelRecord:
    """An engineer's channel to a machine, open now on relay ``relay_id``."""

    id: int
    relay_id: str
    serial: str
    engineer: str
    port: int
    opened_at: datetime

    @classmethod
    def from_row(cls, row: LiveChannelRow) -> ChannelRecord:
        """Copy an ORM row into a record."""
        return cls(row.id, row.relay_id, row.serial, row.engineer, row.port, row.opened_at)
