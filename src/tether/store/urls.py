"""Database URLs: which ones the store accepts, and how they are shown to people.

A PostgreSQL URL may carry a password; it never appears in a message or a log
line: use :func:`display_url` for anything a person will read.
"""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from tether.errors import BadInput

__all__ = ["ACCEPTED_URLS", "display_url", "mask_secret", "normalize_url", "sqlite_url"]

#: What :func:`normalize_url` accepts, for error messages and help texts.
ACCEPTED_URLS = (
    "sqlite:///relative/path.db or sqlite:////absolute/path.db "
    "(also sqlite+aiosqlite://...), "
    "or postgresql://USER:PASSWORD@HOST:PORT/DATABASE (also postgres:// "
    "and postgresql+asyncpg://)"
)

_SQLITE = "sqlite+aiosqlite"
_POSTGRESQL = "postgresql+asyncpg"
_DRIVERS = {
    ("sqlite", None): _SQLITE,
    ("sqlite", "aiosqlite"): _SQLITE,
    ("postgresql", None): _POSTGRESQL,
    ("postgresql", "asyncpg"): _POSTGRESQL,
    ("postgres", None): _POSTGRESQL,
    ("postgres", "asyncpg"): _POSTGRESQL,
}
# "scheme://user:secret@" -> "scheme://user:***@" for strings we could not parse.
_RAW_SECRET = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:/@]*):(.*)@")


def sqlite_url(path: Path) -> str:
    """Return the store URL of the SQLite database file ``path`` (made absolute)."""
    return f"{_SQLITE}:///{Path(path).expanduser().resolve()}"


def _mask_raw(url: str) -> str:
    return _RAW_SECRET.sub(r"\1:***@", url)


def _parse(url: str) -> URL:
    try:
        return make_url(url.strip())
    except (ArgumentError, ValueError) as exc:
        raise BadInput(f"not a database URL: {_mask_raw(url)!r}; expected {ACCEPTED_URLS}") from exc


def normalize_url(url: str) -> str:
    """Map a user-given database URL to the async driver the store uses.

    ``sqlite:///path`` becomes ``sqlite+aiosqlite:///path`` and
    ``postgresql://...`` (or ``postgres://``) becomes ``postgresql+asyncpg://...``;
    URLs already naming those drivers are returned unchanged. Anything else,
    including an in-memory SQLite database (which could not be shared between
    connections), raises :class:`~tether.errors.BadInput` listing what is accepted.
    """
    parsed = _parse(url)
    backend, _, driver = parsed.drivername.partition("+")
    target = _DRIVERS.get((backend.lower(), driver.lower() or None))
    if target is None:
        raise BadInput(
            f"unsupported database URL {display_url(url)!r}: "
            f"the store runs on SQLite or PostgreSQL; use {ACCEPTED_URLS}"
        )
    if target == _SQLITE and (not parsed.database or parsed.database == ":memory:"):
        raise BadInput(
            f"SQLite URL {display_url(url)!r} names no database file "
            "(in-memory databases are not supported); use sqlite:///path/to/tether.db"
        )
    return parsed.set(drivername=target).render_as_string(hide_password=False)


def display_url(url: str) -> str:
    """Return ``url`` fit for messages and logs: any password is shown as ``***``."""
    try:
        parsed = make_url(url.strip())
    except (ArgumentError, ValueError):
        return _mask_raw(url)
    return parsed.render_as_string(hide_password=True)


def mask_secret(text: str, url: str) -> str:
    """Remove the password of ``url`` from ``text`` (e.g. a driver's error message)."""
    try:
        password = make_url(url.strip()).password
    except (ArgumentError, ValueError):
        return _mask_raw(text)
    if password:
        text = text.replace(str(password), "***")
    return text
