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

from sqlalchemy import Enum, ForeignKey, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tether.store.types import PortList, UTCDateTime

__all__ = [
    "Base",
    "EngineerRow",
    "IssuedKeyRow",
    "KeyKind",
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


class RelayRow(Base):
    """A relay process that reported itself (fleet membership)."""

    __tablename__ = "relays"

    relay_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    address: Mapped[str] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())


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
