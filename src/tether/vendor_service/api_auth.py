"""Who is calling the vendor API: sessions, the login rate limit, admin separation.

Every request but ``POST /api/login`` carries ``Authorization: Bearer <token>``. The
token is looked up by its SHA-256; a missing, unknown or expired token is 401, a
disabled engineer 403, and an engineer on an admin-only endpoint 403.

Failed logins are counted per engineer name *and source address* (the client a trusted
proxy names, ``trusted_proxies`` in vendor.toml), each one before its password is
checked: five within five minutes and that name is refused from that source (429, with
``Retry-After``) until the oldest failure is five minutes old; twenty from one source,
whatever the names, and the source is refused. A limit per name alone let anyone lock
an admin out for five minutes with five requests; per source, a stranger only locks
out themselves. The price: guesses from many addresses are each limited on their own,
which is what the one-time codes (TOTP) an admin can require are for.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

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

#: Failed logins allowed per (name, source) within :data:`LOGIN_WINDOW`.
LOGIN_FAILURE_LIMIT = 5
#: Failed logins allowed per source, whatever the names, within :data:`LOGIN_WINDOW`.
SOURCE_FAILURE_LIMIT = 20
LOGIN_WINDOW = timedelta(minutes=5)
#: Clients whose failures are remembered at once (oldest forgotten first).
_MAX_TRACKED = 10_000

_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="The token from POST /api/login, as `Authorization: Bearer <token>`.",
)


class LoginLimiter:
    """Counts failed logins per (name, source) and per source in a sliding window (in memory)."""

    def __init__(
        self,
        clock: Clock,
        *,
        limit: int = LOGIN_FAILURE_LIMIT,
        source_limit: int = SOURCE_FAILURE_LIMIT,
        window: timedelta = LOGIN_WINDOW,
    ) -> None:
        """Allow ``limit`` failures per (name, source) and ``source_limit`` per source."""
        self._clock = clock
        self._limit = limit
        self._source_limit = source_limit
        self._window = window
        self._pairs: OrderedDict[tuple[str, str], deque[datetime]] = OrderedDict()
        self._sources: OrderedDict[str, deque[tuple[datetime, str]]] = OrderedDict()

    def _fresh(self, times: deque[Any], now: datetime, at: Callable[[Any], datetime]) -> None:
        while times and at(times[0]) <= now - self._window:
            times.popleft()

    def _wait(self, oldest: datetime, now: datetime) -> int:
        return max(1, math.ceil((oldest + self._window - now).total_seconds()))

    def retry_after(self, name: str, source: str) -> tuple[int, str] | None:
        """``(seconds, who is refused)`` until ``name`` may try from ``source``, or ``None``."""
        now = self._clock.now()
        pair = self._pairs.get((name, source), deque())
        self._fresh(pair, now, lambda t: t)
        by_source = self._sources.get(source, deque())
        self._fresh(by_source, now, lambda item: item[0])
        if len(by_source) >= self._source_limit:
            return self._wait(by_source[-self._source_limit][0], now), f"from {source}"
        if len(pair) >= self._limit:
            return self._wait(pair[-self._limit], now), f"for {name} from {source}"
        return None

    def failed(self, name: str, source: str) -> None:
        """Count one failed (or not yet checked) login of ``name`` from ``source``."""
        now = self._clock.now()
        self._pairs.setdefault((name, source), deque()).append(now)
        self._pairs.move_to_end((name, source))
        self._sources.setdefault(source, deque()).append((now, name))
        self._sources.move_to_end(source)
        for table in (self._pairs, self._sources):
            while len(table) > _MAX_TRACKED:
                table.popitem(last=False)

    def succeeded(self, name: str, source: str) -> None:
        """Forget the failures of ``name`` from ``source`` after a successful login."""
        self._pairs.pop((name, source), None)
        by_source = self._sources.get(source)
        if by_source is not None:
            kept = deque(item for item in by_source if item[1] != name)
            if kept:
                self._sources[source] = kept
            else:
                del self._sources[source]


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
