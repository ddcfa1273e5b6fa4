"""Engineer credentials for the vendor service: argon2 passwords, TOTP, bearer tokens.

Pure helpers shared by the HTTP API (:mod:`tether.vendor_service.api`) and the CLI
(``tether vendor engineer add --password-prompt``). Nothing here logs or stores a
secret: passwords become argon2id hashes, tokens are stored as their SHA-256 only,
and TOTP secrets go to the store and to the engineer, nowhere else.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from datetime import datetime, timedelta

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from tether.errors import BadInput

__all__ = [
    "MIN_PASSWORD_LENGTH",
    "TOKEN_LIFETIME",
    "Passwords",
    "check_password",
    "hash_password",
    "new_token",
    "new_totp_secret",
    "token_hash",
    "totp_matches",
    "totp_uri",
]

#: How long a vendor-service session lasts.
TOKEN_LIFETIME = timedelta(hours=12)
#: Shortest password an engineer may be given.
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024
#: How many argon2 computations run at once (each takes ~64 MiB of memory).
_CONCURRENT_HASHES = 4


def check_password(password: str) -> str:
    """Return ``password`` if it may become an engineer's password, else :class:`BadInput`.

    12 to 1024 characters of text (no NUL byte, no lone surrogate). The message never
    repeats the password.
    """
    if not isinstance(password, str):
        raise BadInput("the password must be text")
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise BadInput(
            f"the password must be {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters long"
        )
    if "\x00" in password or not _encodable(password):
        raise BadInput("the password holds characters that cannot be stored (NUL or broken text)")
    return password


def hash_password(password: str) -> str:
    """Hash a checked password (see :func:`check_password`) with argon2id, right here."""
    return PasswordHasher().hash(check_password(password))


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Passwords:
    """argon2id hashing and checking, off the event loop, constant-ish time for unknown names.

    :meth:`verify` with no stored hash still checks the password against a dummy hash,
    so that a wrong name costs as much time as a wrong password.
    """

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        """Use ``hasher`` (argon2-cffi's RFC 9106 low-memory defaults when ``None``)."""
        self._hasher = hasher or PasswordHasher()
        self._dummy = self._hasher.hash(secrets.token_urlsafe(24))
        self._gate: asyncio.Semaphore | None = None

    async def hash(self, password: str) -> str:
        """Hash a checked password in a worker thread."""
        check_password(password)
        async with self._limit():
            return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        """Whether ``password`` matches ``stored`` (``None``: compared with a dummy, False)."""
        candidate = password if _encodable(password) else "\x00invalid"
        target = stored if stored is not None else self._dummy
        async with self._limit():
            ok = await asyncio.to_thread(self._check, target, candidate)
        return ok and stored is not None

    def needs_rehash(self, stored: str) -> bool:
        """Whether ``stored`` was made with weaker parameters than today's."""
        try:
            return self._hasher.check_needs_rehash(stored)
        except (InvalidHashError, ValueError):
            return False

    def _check(self, stored: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored, password)
        except (VerificationError, InvalidHashError, ValueError):
            return False

    def _limit(self) -> asyncio.Semaphore:
        if self._gate is None:
            self._gate = asyncio.Semaphore(_CONCURRENT_HASHES)
        return self._gate


def new_token() -> tuple[str, str]:
    """A fresh bearer token (32 random bytes, URL-safe) and the SHA-256 hex to store."""
    token = secrets.token_urlsafe(32)
    return token, token_hash(token)


def token_hash(token: str) -> str:
    """The SHA-256 hex of a bearer token: what the store keeps."""
    return hashlib.sha256(token.encode("utf-8", errors="surrogatepass")).hexdigest()


def new_totp_secret() -> str:
    """A fresh base32 TOTP secret (160 bits)."""
    return pyotp.random_base32(32)


def totp_uri(secret: str, *, engineer: str, issuer: str) -> str:
    """The ``otpauth://`` URI an authenticator app scans."""
    return pyotp.TOTP(secret).provisioning_uri(name=engineer, issuer_name=issuer)


def totp_matches(secret: str, code: str, now: datetime) -> bool:
    """Whether ``code`` is the TOTP of ``secret`` at ``now`` (±1 step of 30 s)."""
    if not (len(code) == 6 and code.isascii() and code.isdigit()):
        return False
    return bool(pyotp.TOTP(secret).verify(code, for_time=now, valid_window=1))
