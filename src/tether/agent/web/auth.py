"""Who may use the customer's page: the admin password, login throttling, sessions.

* The admin password is stored as an argon2 hash in one root-only file
  (:attr:`~tether.config.AgentConfig.web_password_path`), set by ``tether agent install
  --web-password`` or, while no password exists, on a first visit from the machine itself.
* A wrong password is answered only after :data:`FAILED_LOGIN_DELAY`, and a source with
  :data:`FAILURE_LIMIT` failures within :data:`FAILURE_WINDOW` is refused outright until
  the oldest ages out: guessing costs time, not just CPU.
* Sessions are random ids kept in memory (a restart of the agent logs everyone out);
  they end after :data:`IDLE_TIMEOUT` without use, and at the latest after :data:`MAX_AGE`.
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from tether.errors import BadInput

#: A wrong password is answered this much later (seconds).
FAILED_LOGIN_DELAY = 1.0
FAILURE_LIMIT = 5
FAILURE_WINDOW = 300.0
IDLE_TIMEOUT = 3600.0
MAX_AGE = 12 * 3600.0
MIN_PASSWORD = 12
_MAX_SOURCES = 10_000
_MAX_SESSIONS = 1_000


class AdminPassword:
    """The admin password's argon2 hash in ``path`` (0600, written atomically)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._hasher = PasswordHasher()

    def is_set(self) -> bool:
        """Whether a password has been set."""
        return self.path.is_file()

    def set(self, password: str, confirm: str | None = None) -> None:
        """Store ``password`` (at least :data:`MIN_PASSWORD` characters; ``confirm`` must match)."""
        if confirm is not None and confirm != password:
            raise BadInput("the two passwords differ; type the same password twice")
        if len(password) < MIN_PASSWORD:
            raise BadInput(f"the admin password must have at least {MIN_PASSWORD} characters")
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(self._hasher.hash(password) + "\n")
        tmp.replace(self.path)

    def verify(self, password: str) -> bool:
        """Whether ``password`` is the admin password (False when none is set)."""
        try:
            stored = self.path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return False
        try:
            return self._hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False


class Throttle:
    """Failed logins per source address in a sliding window (in memory, monotonic time)."""

    def __init__(
        self,
        *,
        limit: int = FAILURE_LIMIT,
        window: float = FAILURE_WINDOW,
        delay: float = FAILED_LOGIN_DELAY,
    ) -> None:
        self.limit, self.window, self.delay = limit, window, delay
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, source: str, now: float) -> deque[float]:
        failures = self._failures.get(source, deque())
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        return failures

    def retry_after(self, source: str) -> int | None:
        """Seconds until ``source`` may try again, or ``None`` if it may try now."""
        now = time.monotonic()
        failures = self._recent(source, now)
        if len(failures) < self.limit:
            return None
        return max(1, math.ceil(failures[-self.limit] + self.window - now))

    async def failed(self, source: str) -> None:
        """Count a failure of ``source``, then wait :attr:`delay` seconds."""
        now = time.monotonic()
        failures = self._recent(source, now)
        failures.append(now)
        self._failures[source] = failures
        self._failures.move_to_end(source)
        while len(self._failures) > _MAX_SOURCES:
            self._failures.popitem(last=False)
        await asyncio.sleep(self.delay)

    def succeeded(self, source: str) -> None:
        """Forget ``source``'s failures."""
        self._failures.pop(source, None)


@dataclass
class Session:
    """A browser's session: anonymous (login form) until the password was given."""

    sid: str
    admin: bool
    created: float
    seen: float
    flash: tuple[str, bool] | None = field(default=None)


class Sessions:
    """Session ids (random, 256 bits) to :class:`Session`, in memory."""

    def __init__(self) -> None:
        self._by_id: OrderedDict[str, Session] = OrderedDict()

    def new(self, *, admin: bool) -> Session:
        """Start a session; beyond a thousand the oldest anonymous one is forgotten first.

        So a client that only fetches the login form again and again cannot push the
        admin's own session out.
        """
        now = time.monotonic()
        session = Session(secrets.token_urlsafe(32), admin, now, now)
        self._by_id[session.sid] = session
        while len(self._by_id) > _MAX_SESSIONS:
            anonymous = next((sid for sid, s in self._by_id.items() if not s.admin), None)
            if anonymous is None:
                self._by_id.popitem(last=False)
            else:
                del self._by_id[anonymous]
        return session

    def get(self, sid: str | None) -> Session | None:
        """The live session ``sid``, or ``None`` (unknown, idle too long, or too old)."""
        session = self._by_id.get(sid) if sid else None
        if session is None:
            return None
        now = time.monotonic()
        if now - session.seen > IDLE_TIMEOUT or now - session.created > MAX_AGE:
            self.drop(session.sid)
            return None
        session.seen = now
        self._by_id.move_to_end(session.sid)
        return session

    def drop(self, sid: str) -> None:
        """End session ``sid``."""
        self._by_id.pop(sid, None)
