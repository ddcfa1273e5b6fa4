"""Who is calling the vendor API: sessions, the login rate limit, admin separation.

Every request but ``POST /api/login`` carries ``Authorization: Bearer <token>``. The
token is looked up by its SHA-256; a missing, unknown or expired token is 401, a
disabled engineer 403, and an engineer on an admin-only endpoint 403. Failed logins
are counted per engineer name: five within five minutes and that name is refused
(429, with ``Retry-After``) until the oldest failure is five minutes old.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tether.clock import Clock
from tether.config import VendorConfig
from tether.seal import SealPrivateKey
from tether.store import Store
from tether.vendor_service.api_credentials import Passwords, token_hash
from tether.vendor_service.api_errors import api_error
from tether.vendor_service.authority import Authority

__all__ = [
    "Admin",
    "ApiContext",
    "Caller",
    "Ctx",
    "LoginLimiter",
    "Principal",
    "api_context",
    "current_admin",
    "current_engineer",
]

#: Failed logins allowed per name within :data:`LOGIN_WINDOW`.
LOGIN_FAILURE_LIMIT = 5
LOGIN_WINDOW = timedelta(minutes=5)
#: Names whose failures are remembered at once (oldest forgotten first).
_MAX_TRACKED_NAMES = 10_000

_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="The token from POST /api/login, as `Authorization: Bearer <token>`.",
)


class LoginLimiter:
    """Counts failed logins per engineer name in a sliding window (in memory)."""

    def __init__(
        self,
        clock: Clock,
        *,
        limit: int = LOGIN_FAILURE_LIMIT,
        window: timedelta = LOGIN_WINDOW,
    ) -> None:
        """Allow ``limit`` failures per name within ``window``, timed by ``clock``."""
        self._clock = clock
        self._limit = limit
        self._window = window
        self._failures: OrderedDict[str, deque[datetime]] = OrderedDict()

    def _recent(self, name: str, now: datetime) -> deque[datetime]:
        failures = self._failures.get(name, deque())
        while failures and failures[0] <= now - self._window:
            failures.popleft()
        if not failures:
            self._failures.pop(name, None)
        return failures

    def retry_after(self, name: str) -> int | None:
        """Seconds until ``name`` may try again, or ``None`` if it may try now."""
        now = self._clock.now()
        failures = self._recent(name, now)
        if len(failures) < self._limit:
            return None
        wait = failures[-self._limit] + self._window - now
        return max(1, math.ceil(wait.total_seconds()))

    def failed(self, name: str) -> None:
        """Count one failed login of ``name``."""
        now = self._clock.now()
        failures = self._recent(name, now)
        failures.append(now)
        self._failures[name] = failures
        self._failures.move_to_end(name)
        while len(self._failures) > _MAX_TRACKED_NAMES:
            self._failures.popitem(last=False)

    def succeeded(self, name: str) -> None:
        """Forget the failures of ``name`` after a successful login."""
        self._failures.pop(name, None)


@dataclass
class ApiContext:
    """Everything the endpoints use, built once by :func:`~tether.vendor_service.app.create_app`."""

    authority: Authority
    clock: Clock
    seal_key: SealPrivateKey | None
    passwords: Passwords
    limiter: LoginLimiter
    relay_host_key: str

    @property
    def store(self) -> Store:
        """The shared database."""
        return self.authority.store

    @property
    def config(self) -> VendorConfig:
        """The vendor configuration."""
        return self.authority.config

    def now(self) -> datetime:
        """The current time (from the injected clock)."""
        return self.clock.now()


@dataclass(frozen=True)
class Principal:
    """The engineer behind a request (never holds the token itself)."""

    name: str
    admin: bool
    totp_enabled: bool
    token_hash: str


def api_context(request: Request) -> ApiContext:
    """The :class:`ApiContext` of the app serving ``request``."""
    ctx = getattr(request.app.state, "tether", None)
    if not isinstance(ctx, ApiContext):  # pragma: no cover - create_app sets it
        raise RuntimeError("the vendor API was not built with create_app")
    return ctx


Ctx = Annotated[ApiContext, Depends(api_context)]


async def current_engineer(
    ctx: Ctx,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The logged-in, active engineer; 401 without a valid session, 403 if disabled."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise api_error(
            401,
            "log in first: POST /api/login, then send 'Authorization: Bearer <token>'",
            _UNAUTHORIZED,
        )
    digest = token_hash(credentials.credentials)
    session = await ctx.store.tokens.get(digest)
    if session is None:
        raise api_error(401, "unknown or ended session; log in again", _UNAUTHORIZED)
    if session.expired(ctx.now()):
        await ctx.store.tokens.delete(digest)
        raise api_error(401, "your session expired; log in again", _UNAUTHORIZED)
    engineer = await ctx.store.engineers.get(session.engineer)
    if engineer is None:
        raise api_error(401, "this engineer no longer exists; log in again", _UNAUTHORIZED)
    if not engineer.active:
        raise api_error(403, f"engineer {engineer.name} is disabled")
    return Principal(engineer.name, engineer.admin, engineer.totp_enabled, digest)


Caller = Annotated[Principal, Depends(current_engineer)]


async def current_admin(caller: Caller) -> Principal:
    """The logged-in engineer, if an admin; 403 otherwise."""
    if not caller.admin:
        raise api_error(403, "only a vendor admin may do this")
    return caller


Admin = Annotated[Principal, Depends(current_admin)]
