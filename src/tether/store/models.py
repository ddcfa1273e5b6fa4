"""ORM models of the shared state (vendor service and relays).

These classes never leave :mod:`tether.store`: repositories turn rows into the
frozen records of :mod:`tether.store.records`. Any change here needs a new
Alembic revision under ``migrations/versions`` (the test suite checks that the
models and the migrations agree). New nullable columns (for example an
engineer's password hash or TOTP secret) are a plain ``op.add_column`` on both
backends.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Enum,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tether.store.types import PortList, UTCDateTime

__all__ = [
    "ApiTokenRow",
    "AuditEventRow",
    "AuditHeadRow",
    "Base",
    "CaseRow",
    "CaseStatus",
    "EngineerRow",
    "IssuedKeyRow",
    "KeyKind",
    "LiveChannelRow",
    "MachineRow",
    "RelayRow",
    "RevocationKind",
    "RevocationRow",
    "SealedPasswordRow",
    "TetherRow",
]

#: Constraint names are fixed by convention so that migrations can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class KeyKind(enum.Enum):
    """How a tether key came to be issued."""

    MANUAL = "manual"
    """Issued by the vendor for a serial (``tether vendor issue-key``)."""
    REQUEST = "request"
    """Issued on a one-click request from the customer's machine."""


class RevocationKind(enum.Enum):
    """What a revocation entry revokes."""

    KEY = "key"
    """A tether key (subject: its key id)."""
    ENGINEER = "engineer"
    """An engineer, disabled or removed (subject: the engineer's name)."""
    MACHINE = "machine"
    """A serial re-bound to a new machine (subject: the serial): its tether ends."""


class CaseStatus(enum.Enum):
    """Where a one-click support request (a case) stands."""

    PENDING = "pending"
    """Waiting for the vendor (auto-approval or an engineer)."""
    ISSUED = "issued"
    """Approved: a key was issued and handed to the waiting machine."""
    DENIED = "denied"
    """The vendor said no (the reason is kept)."""
    CANCELLED = "cancelled"
    """The customer gave up, or the machine went away while waiting."""


def _enum_type(cls: type[enum.Enum], name: str) -> Enum:
    """A portable enum column: VARCHAR(16) holding the member's value, with a CHECK."""
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        validate_strings=True,
        values_callable=lambda members: [m.value for m in members],
    )


class Base(DeclarativeBase):
    """Declarative base of all store models."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class IssuedKeyRow(Base):
    """A tether key the vendor issued, and what happened to it since."""

    __tablename__ = "issued_keys"

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    serial: Mapped[str] = mapped_column(String(128), index=True)
    kind: Mapped[KeyKind] = mapped_column(_enum_type(KeyKind, "key_kind"))
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime())
    not_before: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ports: Mapped[tuple[int, ...]] = mapped_column(PortList())
    relay: Mapped[str] = mapped_column(String(255))
    relay_host_key: Mapped[str] = mapped_column(String(255))
    issued_by: Mapped[str] = mapped_column(String(64))
    description: Mapped[str | None] = mapped_column(Text)
    bound_machine_key: Mapped[str | None] = mapped_column(String(255))
    first_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoke_reason: Mapped[str | None] = mapped_column(Text)


class EngineerRow(Base):
    """A support engineer account of the vendor."""

    __tablename__ = "engineers"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: argon2 hash (PHC string) of the engineer's vendor-service password; never leaves the store
    #: except through :meth:`~tether.store.EngineerRepo.credentials`.
    password_hash: Mapped[str | None] = mapped_column(Text)
    #: Base32 TOTP secret when the engineer uses one-time codes.
    totp_secret: Mapped[str | None] = mapped_column(String(64))
    admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class TetherRow(Base):
    """A live tether: which relay holds the machine with this serial right now."""

    __tablename__ = "tethers"

    serial: Mapped[str] = mapped_column(String(128), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(64), ForeignKey("issued_keys.key_id"))
    relay_id: Mapped[str] = mapped_column(String(128), index=True)
    relay_address: Mapped[str] = mapped_column(String(255))
    machine_key: Mapped[str] = mapped_column(String(255))
    connected_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    #: The grant's limits as the machine reported them (JSON list of lines); NULL: none
    #: reported (an older agent, or not yet).
    limits: Mapped[str | None] = mapped_column(Text, nullable=True)


class RelayRow(Base):
    """A relay process that reported itself (fleet membership)."""

    __tablename__ = "relays"

    relay_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    address: Mapped[str] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    #: Random token of the process that holds this id (two processes, one id: refused).
    instance: Mapped[str] = mapped_column(String(64), default="", server_default="")
    #: Tethers the relay carried at its last heartbeat.
    tethers: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class RevocationRow(Base):
    """One append-only revocation event; relays poll ``id > last_seen_id``."""

    __tablename__ = "revocations"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[RevocationKind] = mapped_column(_enum_type(RevocationKind, "revocation_kind"))
    subject: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    reason: Mapped[str] = mapped_column(Text)


class SealedPasswordRow(Base):
    """A support-account password sealed (HPKE) to the vendor by the machine."""

    __tablename__ = "sealed_passwords"

    key_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("issued_keys.key_id", ondelete="CASCADE"), primary_key=True
    )
    serial: Mapped[str] = mapped_column(String(128))
    sealed: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ApiTokenRow(Base):
    """A vendor-service session: only the SHA-256 of the bearer token is stored."""

    __tablename__ = "api_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    engineer: Mapped[str] = mapped_column(
        String(64), ForeignKey("engineers.name", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class MachineRow(Base):
    """Trust on first use: the machine key first seen asking for support for a serial."""

    __tablename__ = "machines"

    serial: Mapped[str] = mapped_column(String(128), primary_key=True)
    #: SHA256 fingerprint of the bound machine key; ``None`` after an admin re-bind.
    machine_key: Mapped[str | None] = mapped_column(String(255))
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    rebound_by: Mapped[str | None] = mapped_column(String(64))
    rebound_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class CaseRow(Base):
    """A one-click support request and its outcome."""

    __tablename__ = "cases"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    serial: Mapped[str] = mapped_column(String(128), index=True)
    machine_key: Mapped[str] = mapped_column(String(255))
    description: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    status: Mapped[CaseStatus] = mapped_column(_enum_type(CaseStatus, "case_status"), index=True)
    decided_by: Mapped[str | None] = mapped_column(String(64))
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    key_id: Mapped[str | None] = mapped_column(String(64), ForeignKey("issued_keys.key_id"))
    #: The issued tether key, handed to the waiting machine (a tether key holds no secret).
    key_text: Mapped[str | None] = mapped_column(Text)
    deny_reason: Mapped[str | None] = mapped_column(Text)
    #: What the customer's grant will allow (JSON list of lines); NULL: not said.
    limits: Mapped[str | None] = mapped_column(Text, nullable=True)


class LiveChannelRow(Base):
    """An engineer's channel to a tethered machine, open right now on some relay."""

    __tablename__ = "live_channels"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    relay_id: Mapped[str] = mapped_column(String(128), index=True)
    serial: Mapped[str] = mapped_column(String(128), index=True)
    engineer: Mapped[str] = mapped_column(String(64))
    port: Mapped[int] = mapped_column(Integer)
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AuditEventRow(Base):
    """One entry of a hash-chained audit log kept in the database (see :mod:`tether.audit`).

    ``chain`` names the log (``vendor``, ``relay:<relay id>``); ``id`` is the order
    rows were written in, the database's equivalent of a file's line order, so a
    verifier can tell entries that were swapped from entries that were edited.
    """

    __tablename__ = "audit_events"
    __table_args__ = (UniqueConstraint("chain", "seq"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    chain: Mapped[str] = mapped_column(String(160))
    seq: Mapped[int] = mapped_column(BigInteger)
    #: Exactly as hashed: UTC to the second, ``Z`` suffix.
    at: Mapped[str] = mapped_column(String(20))
    event: Mapped[str] = mapped_column(String(64))
    #: The fields as canonical JSON text (an object).
    fields: Mapped[str] = mapped_column(Text)
    prev: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHeadRow(Base):
    """The last chain head a machine reported over its tether, and any mismatch seen."""

    __tablename__ = "audit_heads"

    serial: Mapped[str] = mapped_column(String(128), primary_key=True)
    #: SHA256 fingerprint of the machine key that reported it.
    machine_key: Mapped[str] = mapped_column(String(255), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    #: How many times the machine's log was found not to contain what it reported before.
    mismatches: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: The last mismatch, in words (``None`` while the log has always matched).
    mismatch: Mapped[str | None] = mapped_column(Text)
    mismatch_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
