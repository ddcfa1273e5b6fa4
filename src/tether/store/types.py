"""Column types shared by the store's models.

Both exist so that what the database holds is plain and portable (naive UTC
timestamps, a comma-separated port list) while Python code only ever sees the
safe form (aware UTC datetimes, a tuple of ints).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from tether.errors import BadInput
from tether.keys import check_serial

__all__ = [
    "PortList",
    "UTCDateTime",
    "format_ports",
    "parse_ports",
    "require_aware",
    "require_serial",
    "require_text",
]


def require_aware(value: datetime, what: str = "datetime") -> datetime:
    """Return ``value`` converted to UTC; raise :class:`ValueError` if it is naive.

    A naive datetime is a programming error (every clock in Tether is aware), so
    it is refused rather than guessed at.
    """
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ValueError(f"{what} must be timezone-aware (UTC), got naive {value.isoformat()}")
    return value.astimezone(UTC)


def require_text(value: str, what: str, max_len: int) -> str:
    """Return ``value`` if it is a non-empty string of at most ``max_len`` characters.

    Otherwise raise :class:`~tether.errors.BadInput` naming ``what``.
    """
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise BadInput(f"{what} must be 1 to {max_len} characters, got {value!r}")
    return value


def require_serial(serial: str) -> str:
    """The canonical form of ``serial`` (:func:`tether.keys.check_serial`), for rows and lookups.

    Every repository stores and looks up serials through this one function, so two
    spellings of one machine (``acme-1``, ``ACME-1``) can never become two rows.
    """
    return check_serial(serial)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as naive UTC and returned as an aware UTC datetime.

    Binding a naive datetime raises :class:`ValueError`; aware datetimes in any
    zone are converted to UTC first.
    """

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert an aware datetime to naive UTC for storage."""
        if value is None:
            return None
        return require_aware(value, "timestamp").replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        """Turn a stored naive UTC value back into an aware UTC datetime."""
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime from the database, got {type(value).__name__}")
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def parse_ports(text: str) -> tuple[int, ...]:
    """Parse ``"22,80,443"`` into ``(22, 80, 443)``; ``""`` gives ``()``.

    Raises :class:`ValueError` on anything that is not a comma-separated list of
    TCP ports (1-65535).
    """
    if not text.strip():
        return ()
    ports: list[int] = []
    for part in text.split(","):
        item = part.strip()
        if not item.isdigit():
            raise ValueError(f"not a port number: {item!r}")
        port = int(item)
        if not 1 <= port <= 65535:
            raise ValueError(f"port out of range 1-65535: {port}")
        ports.append(port)
    return tuple(ports)


def format_ports(ports: tuple[int, ...] | list[int]) -> str:
    """Render ports as ``"22,80,443"``, checking each is an int in 1-65535."""
    for port in ports:
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ValueError(f"port must be an integer in 1-65535, got {port!r}")
    return ",".join(str(p) for p in ports)


class PortList(TypeDecorator[tuple[int, ...]]):
    """A tuple of TCP ports stored as text ``"22,80,443"``."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: tuple[int, ...] | None, dialect: Dialect) -> str | None:
        """Render the tuple as comma-separated text."""
        if value is None:
            return None
        return format_ports(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> tuple[int, ...] | None:
        """Parse the stored text back into a tuple of ints."""
        if value is None:
            return None
        return parse_ports(str(value))
