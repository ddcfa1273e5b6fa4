"""How a relay applies the fleet's revocations: keys, engineers, as soon as they are written.

Revocations are rows of the shared store (:class:`~tether.store.RevocationRepo`); each
relay reads those newer than its cursor and cuts what they name: the tethers holding a
revoked key, the connections of a disabled engineer (SPEC: live sessions end ≤ 1 s,
fleet-wide). A PostgreSQL ``LISTEN`` wakes the reader at once; polling is the fallback.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from tether import log
from tether.protocol import RefusalReason
from tether.store import Revocation, RevocationKind

if TYPE_CHECKING:
    from tether.relay.server import Relay

logger = logging.getLogger("tether.relay")

#: Revocations read per query; a longer backlog is read in several.
REVOCATION_BATCH = 1000


class RevocationWatch:
    """Reads the revocation feed from where this relay started and applies it."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        #: The newest revocation applied (or already in the past when the relay started).
        self.cursor = 0

    async def start(self) -> None:
        """Start after what exists: keys revoked before are refused at admission anyway."""
        self.cursor = await self.relay.store.revocations.head()

    async def serve(self) -> None:
        """Apply revocations from the shared store as soon as they appear.

        With a live LISTEN (PostgreSQL) a notification wakes this loop at once and the
        feed is polled only every ``listen_poll_interval`` as a safety net; without one
        (SQLite, or the listening connection down) it polls every ``poll_interval``.
        A notification only says "re-read": what is applied always comes from
        ``revocations.since(cursor)``, never from a payload.
        """
        while True:
            try:
                await self.check()
            except Exception as exc:  # a database hiccup must not stop the relay
                log.event(logger, "relay.watch_error", level=logging.WARNING, error=str(exc))
            await self._next_check()

    async def _next_check(self) -> None:
        """Return when the revocation feed should be read again."""
        changes = self.relay.changes
        if changes is None:
            await asyncio.sleep(self.relay.config.poll_interval)
            return
        # Losing the LISTEN wakes this wait, so the next one already uses the fast pace.
        if changes.listening:
            await changes.wait(self.relay.config.listen_poll_interval)
        else:
            await changes.wait(self.relay.config.poll_interval)

    async def check(self) -> None:
        """Apply every revocation newer than this relay's cursor, and advance the cursor."""
        while True:
            batch = await self.relay.store.revocations.since(self.cursor, limit=REVOCATION_BATCH)
            self._apply(batch)
            if len(batch) < REVOCATION_BATCH:
                return

    def _apply(self, batch: list[Revocation]) -> None:
        for revocation in batch:
            self.cursor = revocation.id
            if revocation.kind == RevocationKind.KEY:
                self.relay.revoked_keys.add(revocation.subject)
                for entry in self.relay.registry.with_key(revocation.subject):
                    entry.link.drop(
                        RefusalReason.REVOKED, f"the vendor revoked this key: {revocation.reason}"
                    )
                    self._observe_cut("key", revocation)
            elif revocation.kind == RevocationKind.ENGINEER:
                for conn in self.relay.engineer_connections(revocation.subject):
                    log.event(
                        logger,
                        "engineer.cut",
                        engineer=revocation.subject,
                        reason=revocation.reason,
                    )
                    conn.close()
                    self._observe_cut("engineer", revocation)
            elif revocation.kind == RevocationKind.MACHINE:
                # The serial was re-bound: the machine holding it now is not the one the
                # vendor means any more (replaced, or a copied disk). Permanent for it.
                held = self.relay.registry.get(revocation.subject)
                if held is not None:
                    held.link.drop(
                        RefusalReason.OTHER_MACHINE,
                        f"the vendor re-bound serial {revocation.subject} to a new machine "
                        f"({revocation.reason})",
                    )
                    self._observe_cut("machine", revocation)

    def _observe_cut(self, kind: str, revocation: Revocation) -> None:
        """Time from the revocation's write to this cut, into the relay's histogram."""
        seconds = (self.relay.clock.now() - revocation.at).total_seconds()
        self.relay.metrics.revocation_cut.labels(kind).observe(max(0.0, seconds))
