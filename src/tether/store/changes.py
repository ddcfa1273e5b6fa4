"""Wait for the next change to the revocation feed: PostgreSQL LISTEN/NOTIFY.

Every revocation (a revoked key, a disabled or removed engineer: every
:class:`~tether.store.RevocationKind`) is written with a ``NOTIFY`` on
:data:`~tether.store.REVOCATION_CHANNEL` in the same transaction. A
:class:`ChangeFeed` keeps one dedicated connection that ``LISTEN`` s on that
channel and turns each notification into a wake-up for :meth:`ChangeFeed.wait`.

The payload is never trusted or even read: a wake-up only tells the caller to
re-read ``store.revocations.since(cursor)``. For the same reason the feed also
wakes its waiter when the listening connection is (re)established — anything
notified while it was down was missed, so the caller must re-read from its
cursor — and when the connection is lost, so that the caller can fall back to
polling at once (:attr:`ChangeFeed.listening` is then ``False``).

The connection is made from the store's own SQLAlchemy URL with the same
translation SQLAlchemy's asyncpg dialect uses (so host, port, user, database and
query options such as ``ssl`` match the store's pool); its password never
appears in a log line or an error message.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from tether import log
from tether.store.db import CONNECT_TIMEOUT
from tether.store.repos import REVOCATION_CHANNEL
from tether.store.urls import display_url, mask_secret
from tether.tasks import TaskSet

__all__ = ["LISTEN_APPLICATION_NAME", "ChangeFeed"]

logger = logging.getLogger("tether.store.changes")

#: ``application_name`` of the listening connection (how it shows in ``pg_stat_activity``).
LISTEN_APPLICATION_NAME = "tether-listen"
#: Seconds between two attempts to (re)connect the listening connection.
RECONNECT_DELAY = 1.0
#: Seconds between two liveness checks of an idle listening connection: a connection
#: whose peer vanished without a FIN (a cut network) raises no event by itself.
PING_INTERVAL = 5.0
#: Keys the SQLAlchemy dialect understands but :func:`asyncpg.connect` does not.
_SQLALCHEMY_ONLY = ("prepared_statement_cache_size", "prepared_statement_name_func")


def connect_params(engine: AsyncEngine, url: str) -> dict[str, Any]:
    """The :func:`asyncpg.connect` keyword arguments for the store at ``url``.

    ``engine`` is the store's engine (a ``postgresql+asyncpg`` one); its dialect
    turns ``url`` into asyncpg parameters exactly as it does for the pool.
    """
    args, params = engine.dialect.create_connect_args(make_url(url))
    if args:  # the asyncpg dialect passes everything by keyword; anything else is a surprise
        raise ValueError("unexpected positional connection arguments for asyncpg")
    params = dict(params)
    for key in _SQLALCHEMY_ONLY:
        params.pop(key, None)
    params["timeout"] = CONNECT_TIMEOUT
    settings = dict(params.get("server_settings") or {})
    settings.setdefault("application_name", LISTEN_APPLICATION_NAME)
    params["server_settings"] = settings
    return params


class ChangeFeed:
    """Wake-ups when the revocation feed may have grown (PostgreSQL only).

    Start with :meth:`start` (returns at once; the connection is made in the
    background and retried every :attr:`reconnect_delay` seconds until it
    works), stop with :meth:`aclose`. One task at a time calls :meth:`wait`.

    :param engine: the store's engine, for its URL translation (see :func:`connect_params`).
    :param url: the store's normalized ``postgresql+asyncpg://`` URL (may carry a password).
    :param channel: the channel to ``LISTEN`` on.
    """

    def __init__(self, engine: AsyncEngine, url: str, *, channel: str = REVOCATION_CHANNEL) -> None:
        self._params = connect_params(engine, url)
        self._url = url
        self._url_for_display = display_url(url)
        self._channel = channel
        self._wake = asyncio.Event()
        self._tasks = TaskSet()
        self._listening = False
        #: Seconds between two connection attempts.
        self.reconnect_delay = RECONNECT_DELAY
        #: Seconds between two liveness checks of the listening connection.
        self.ping_interval = PING_INTERVAL
        #: How many times the listening connection was established (1 after the first).
        self.connects = 0

    @property
    def listening(self) -> bool:
        """Whether a ``LISTEN`` is live right now (changes wake :meth:`wait` at once)."""
        return self._listening

    def start(self) -> None:
        """Start listening in the background (call from a running event loop)."""
        self._tasks.spawn(self._run(), "store.changes")

    async def aclose(self) -> None:
        """Stop listening and close the connection."""
        await self._tasks.aclose()
        self._listening = False

    async def wait(self, within: float) -> bool:
        """Return once the feed may have changed, or after ``within`` seconds.

        ``True``: a notification arrived, or the listening connection came up or
        went down since the previous call; the caller must re-read the feed from
        its cursor. ``False``: nothing happened within ``within`` seconds (a caller polls
        then anyway, as a safety net). Wake-ups that arrive while the caller is
        busy re-reading are kept for its next call, so none is lost.
        """
        try:
            await asyncio.wait_for(self._wake.wait(), within)
        except TimeoutError:
            return False
        self._wake.clear()
        return True

    def _notified(self, *_args: object) -> None:
        # asyncpg calls this with (connection, pid, channel, payload); the payload is not
        # read: a wake-up makes the caller re-read the feed, whatever a notifier claimed.
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                await self._listen_once()
            except Exception as exc:  # whatever broke the connection, listen again later
                log.event(
                    logger,
                    "store.listen_failed",
                    level=logging.WARNING,
                    database=self._url_for_display,
                    error=mask_secret(str(exc) or type(exc).__name__, self._url),
                    retry_in=self.reconnect_delay,
                )
            await asyncio.sleep(self.reconnect_delay)

    async def _listen_once(self) -> None:
        """Connect, LISTEN, and return when the connection is lost."""
        conn = await asyncpg.connect(**self._params)
        lost = asyncio.Event()
        try:
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(self._channel, self._notified)
            self._listening = True
            self.connects += 1
            self._wake.set()  # re-read: whatever was notified while not listening is missed
            log.event(logger, "store.listen", database=self._url_for_display, channel=self._channel)
            while not conn.is_closed():
                try:
                    await asyncio.wait_for(lost.wait(), self.ping_interval)
                except TimeoutError:
                    await conn.fetchval("SELECT 1", timeout=self.ping_interval)
                else:
                    break
            log.event(
                logger,
                "store.listen_lost",
                level=logging.WARNING,
                database=self._url_for_display,
                retry_in=self.reconnect_delay,
            )
        finally:
            if self._listening:
                self._listening = False
                self._wake.set()  # poll at the fast pace from now on
            conn.terminate()
