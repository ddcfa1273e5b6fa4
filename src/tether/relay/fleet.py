"""This relay's membership in the fleet: its claimed id, its heartbeats, the sweep.

A relay claims its ``relay_id`` before it listens (a second process with an id that is
alive refuses to start, naming the holder), heartbeats every ``heartbeat_interval`` with
its tether count, and on each beat removes relays silent for ``dead_after`` seconds with
their tethers (:meth:`tether.store.relays.RelayRepo.sweep`). A relay that learns the
fleet gave it up (its heartbeats were late, e.g. during a database outage, and another
relay swept it) claims its id again and writes its registry rows again, each tether
through its admission's checks, while its agents stay connected
(:func:`tether.relay.tethers.readmit`), so the registry again names the machines it
carries.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable

from tether import log
from tether.clock import Clock
from tether.config import RelayConfig
from tether.errors import Refused
from tether.store import Store

logger = logging.getLogger("tether.relay.fleet")


class RelayIdInUse(Refused):
    """Another live relay holds this relay's id."""


class Membership:
    """Claim, heartbeat and leave; ``rejoined`` runs when the fleet had given us up.

    :param tether_count: how many tethers this relay carries now (for the heartbeat).
    :param rejoined: called after a re-claim; the relay writes its swept registry rows
        again.
    :param taken_over: called when another live process holds our id; the relay stops.
    """

    def __init__(
        self,
        config: RelayConfig,
        store: Store,
        clock: Clock,
        *,
        tether_count: Callable[[], int],
        rejoined: Callable[[], None],
        taken_over: Callable[[str], None],
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.instance = secrets.token_hex(8)
        #: Where this relay listens (its port once known): not ``advertise``, which
        #: behind a load balancer is the same for every relay.
        self.address = f"{config.listen[0]}:{config.listen[1]}"
        self._tether_count = tether_count
        self._rejoined = rejoined
        self._taken_over = taken_over

    async def join(self) -> None:
        """Claim the relay id; :class:`RelayIdInUse` if a live relay holds it."""
        holder = await self.store.relays.claim(
            self.config.relay_id, self.instance, self.address, self.clock.now(),
            self.config.dead_after,
        )  # fmt: skip
        if holder is not None:
            silent = (self.clock.now() - holder.last_seen_at).total_seconds()
            raise RelayIdInUse(
                f"relay id {self.config.relay_id!r} is in use by the relay at "
                f"{holder.address} (last heartbeat {max(silent, 0):.0f} s ago); give this "
                f"relay its own relay_id in {self.config.path}, or stop the other one "
                f"(its id is free {self.config.dead_after:g} s after its last heartbeat)"
            )

    async def serve(self) -> None:
        """Heartbeat and sweep until cancelled; a database hiccup only delays a beat."""
        interval = self.config.heartbeat_interval
        due = time.monotonic() + interval
        while True:
            # Beats keep their cadence: a beat that took long (a busy database) does not
            # push every later one back by as much, which would eat into dead_after.
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            due = max(due + interval, time.monotonic())
            try:
                await self.beat()
            except Exception as exc:  # the relay keeps its tethers through an outage
                log.event(logger, "relay.heartbeat_failed", level=logging.WARNING, error=str(exc))

    async def beat(self) -> None:
        """One heartbeat, then one sweep of dead relays."""
        relays = self.store.relays
        now = self.clock.now()
        held = await relays.heartbeat(
            self.config.relay_id, self.instance, self.address, now, self._tether_count()
        )
        if not held:
            await self._rejoin()
        for relay_id in await relays.sweep(now, self.config.dead_after):
            log.event(
                logger,
                "relay.dead",
                level=logging.WARNING,
                relay=relay_id,
                message=f"no heartbeat for {self.config.dead_after:g} s; its tethers are gone",
            )

    async def _rejoin(self) -> None:
        try:
            await self.join()
        except RelayIdInUse as exc:
            log.event(logger, "relay.taken_over", level=logging.ERROR, message=str(exc))
            self._taken_over(str(exc))
            return
        log.event(
            logger,
            "relay.rejoined",
            level=logging.WARNING,
            message="the fleet had given this relay up; its tethers are admitted again",
        )
        self._rejoined()

    async def leave(self) -> None:
        """Give the id back (clean stop); never raises."""
        try:
            await self.store.relays.leave(self.config.relay_id, self.instance)
        except Exception as exc:
            log.event(logger, "relay.leave_failed", level=logging.WARNING, error=str(exc))
