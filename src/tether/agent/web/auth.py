"""Who may use the customer's page: the admin password, login throttling, sessions.

* The admin password is stored as an argon2 hash in one root-only file
  (:attr:`~tether.config.AgentConfig.web_password_path`), set by ``tether agent install
  --web-password`` or, while no password exists, on a first visit from the machine itself.
* A wrong password is answered only after :data:`FAILED_LOGIN_DELAY`, and at most
  :data:`FAILURE_LIMIT` passwords per client are checked within :data:`FAILURE_WINDOW`:
  each attempt is counted *before* its password is checked (:meth:`Throttle.attempt`),
  so parallel guesses cannot slip past the limit while earlier checks still run. A
  success forgets the client's attempts; beyond the limit it is refused outright until
  the oldest attempt ages out.
* The client is a browser that logged in before (its device cookie,
  :class:`DeviceCookies`) or else a source address (the real client behind a trusted
  proxy, ``[web] trusted_proxies``). So a stranger guessing from elsewhere, or from
  behind the same proxy or carrier, cannot lock out the admin's browser, and the
  machine's own console (loopback, not a proxy) is a client of its own. Setting a new
  password (``tether agent web-password``) forgets every lockout and device cookie.
* Sessions are random ids kept in memory (a restart of the agent logs everyone out);
  they end after :data:`IDLE_TIMEOUT` without use, and at the latest after :data:`MAX_AGE`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
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

    def version(self) -> tuple[int, int] | None:
        """Which password is set: changes whenever it is set anew (``None``: none is)."""
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return stat.st_ino, stat.st_mtime_ns

    def stored(self) -> bytes | None:
        """The stored hash (root-only), or ``None``: keys the device cookies of this password."""
        try:
            return self.path.read_bytes()
        except OSError:
            return None

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
    """Login attempts per client in a sliding window (in memory, monotonic time).

    A client is whatever key the caller chooses: a device cookie or a source address.
    """

    def __init__(
        self,
        *,
        limit: int = FAILURE_LIMIT,
        window: float = FAILURE_WINDOW,
        delay: float = FAILED_LOGIN_DELAY,
    ) -> None:
        self.limit, self.window, self.delay = limit, window, delay
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, client: str, now: float) -> deque[float]:
        attempts = self._failures.get(client, deque())
        while attempts and attempts[0] <= now - self.window:
            attempts.popleft()
        return attempts

    def attempt(self, client: str) -> int | None:
        """Count one login attempt of ``client`` before its password is checked.

        Returns ``None`` if the attempt may go on (it is counted now, whatever its
        outcome), or the seconds until ``client`` may try again (nothing counted).
        """
        now = time.monotonic()
        attempts = self._recent(client, now)
        if len(attempts) >= self.limit:
            return max(1, math.ceil(attempts[-self.limit] + self.window - now))
        attempts.append(now)
        self._failures[client] = attempts
        self._failures.move_to_end(client)
        while len(self._failures) > _MAX_SOURCES:
            self._failures.popitem(last=False)
        return None

    async def failed(self, client: str) -> None:
        """The attempt of ``client`` failed (it stays counted): wait :attr:`delay` seconds."""
        await asyncio.sleep(self.delay)

    def succeeded(self, client: str) -> None:
        """Forget ``client``'s attempts."""
        self._failures.pop(client, None)

    def clear(self) -> None:
        """Forget every client's attempts (the admin password was just set anew)."""
        self._failures.clear()


class DeviceCookies:
    """Marks a browser that logged in before, so others' wrong guesses do not lock it out.

    After a successful login the browser gets a random id with an HMAC under a key
    derived from the stored password hash (root-only, salted): nothing is stored, a
    restart keeps them valid, and setting a new password invalidates every one. A
    device's login attempts are counted apart from its source address's.
    """

    def __init__(self, password: AdminPassword) -> None:
        self._password = password
        self._version = password.version()

    def password_changed(self) -> bool:
        """Whether the password was set anew since the last call (then lockouts end too)."""
        version = self._password.version()
        changed = version != self._version
        self._version = version
        return changed

    def _mac(self, device: str) -> str | None:
        stored = self._password.stored()
        if stored is None:
            return None
        key = hashlib.sha256(b"tether-web-device\0" + stored).digest()
        return hmac.new(key, device.encode(), hashlib.sha256).hexdigest()

    def issue(self) -> str | None:
        """A new device cookie value (``None`` while no password is set)."""
        device = secrets.token_urlsafe(16)
        mac = self._mac(device)
        return None if mac is None else f"{device}.{mac}"

    def device(self, value: str | None) -> str | None:
        """The device id of a cookie value this password issued, else ``None``."""
        if not value or value.count(".") != 1:
            return None
        device, mac = value.split(".")
        expected = self._mac(device)
        if expected is None or not hmac.compare_digest(mac.encode(), expected.encode()):
            return None
        return device


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
