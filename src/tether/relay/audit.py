"""The relay's audit: its own hash-chained log in the database, and machines' chain heads.

:class:`AuditWriter` keeps database writes off the data path: the relay hands it an
event (one per tether up/down and per engineer channel open/close, never per packet)
without waiting, and a single background task appends queued events to the relay's
chain (``relay:<relay id>``) in batches, one transaction per batch.

:class:`HeadChecker` follows one tethered machine's audit log from the outside. The
agent reports its log's head ``(seq, hash)``; the relay keeps the last head it accepted
(``audit_heads``) and, before accepting a newer one, asks the agent for the hash its log
now holds at the stored ``seq``. A different hash (or none), or a head that went
backwards, means the machine's history was rewritten: the head row is flagged, an
``audit.head_mismatch`` event is written to the relay's chain and logged.

A machine cannot make the relay do unbounded work or store unbounded data: messages are
bounded by the control protocol (one line, at most 16 KiB, a number and a hash), only
the newest unprocessed report is kept, reports are checked at most once per
``min_interval`` per tether, a report equal to the last accepted one costs nothing, one
question is outstanding at a time (answers to anything else are ignored), and after a
mismatch the tether's reports are no longer checked (the next check comes with the next
connection). The database holds one head row per (serial, machine key).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime

from tether import log
from tether.audit import FieldValue, check_event
from tether.store import PendingEvent, Store, StoreError
from tether.tasks import TaskSet

# The relay's own logger: audit lines sit with the relay's other lines.
logger = logging.getLogger("tether.relay")

#: Events held in memory while the database is slow or away; beyond this they are dropped
#: (and the drop is logged), so a database outage cannot exhaust the relay's memory.
MAX_QUEUED = 10_000
#: Events written in one transaction.
BATCH = 500
#: Seconds between attempts while the database refuses writes.
RETRY_DELAY = 1.0
#: Seconds a shutting-down relay waits for head checks in progress.
STOP_WAIT = 5.0
#: Seconds between two checks of one machine's reported heads (agents report every 60 s
#: and on change, so this only bounds what a misbehaving machine can cost).
HEAD_INTERVAL = 10.0


class AuditWriter:
    """Appends the relay's events to its chain in the background, in order, in batches.

    :param store: the shared database.
    :param chain: the chain to append to, ``relay:<relay id>``.
    :param now: the clock stamping each event when it is handed over.
    """

    def __init__(self, store: Store, chain: str, now: Callable[[], datetime]) -> None:
        self._store = store
        self._chain = chain
        self._now = now
        self._queue: asyncio.Queue[PendingEvent] = asyncio.Queue(MAX_QUEUED)
        self._dropped = 0
        self._inflight: list[PendingEvent] | None = None
        self._closing = False
        self._tasks = TaskSet()
        self._task: asyncio.Task[None] | None = None
        #: Called with the seconds each append to the database took (failed ones too).
        self.observe: Callable[[float], None] = lambda seconds: None

    @property
    def backlog(self) -> int:
        """Events handed over but not yet written: queued, plus the batch in flight."""
        return self._queue.qsize() + len(self._inflight or ())

    @property
    def chain(self) -> str:
        """The chain this writer appends to."""
        return self._chain

    def write(self, event: str, /, **fields: FieldValue) -> None:
        """Queue one event (never blocks); see :meth:`record`."""
        self.record(event, fields)

    def record(
        self, event: str, fields: Mapping[str, FieldValue], *, log_as: str | None = None
    ) -> None:
        """Queue one event (never blocks); with ``log_as``, also log it under that name.

        Bad or secret-looking fields are refused here, before anything is queued.

        :raises ValueError: a bad event name or field (a programming error).
        """
        check_event(event, fields)
        if log_as is not None:
            log.event_fields(logger, log_as, fields)
        try:
            self._queue.put_nowait(PendingEvent(event, fields, self._now()))
        except asyncio.QueueFull:
            self._dropped += 1
            log.event(
                logger,
                "audit.dropped",
                level=logging.ERROR,
                chain=self._chain,
                audit_event=event,
                dropped=self._dropped,
            )

    def start(self) -> None:
        """Start writing queued events in the background."""
        self._task = self._tasks.spawn(self._serve(), f"relay.audit.{self._chain}")

    async def _serve(self) -> None:
        while not self._closing:
            batch = [await self._queue.get()]
            while len(batch) < BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._inflight = batch
            for attempt in itertools.count():
                if attempt:
                    await asyncio.sleep(RETRY_DELAY)
                if await self._append(batch) or self._closing:
                    break
            self._inflight = None

    async def aclose(self) -> None:
        """Stop the background writer, letting a batch in flight finish, then write the rest.

        Events still queued are written once more; if the database refuses them too,
        the failure is logged (``audit.failed``).
        """
        self._closing = True
        task = self._task
        if task is not None and self._inflight is not None:
            await asyncio.wait({task}, timeout=RETRY_DELAY * 5)
        await self._tasks.aclose()
        rest = list(self._inflight or ())
        while not self._queue.empty():
            rest.append(self._queue.get_nowait())
        for start in range(0, len(rest), BATCH):
            await self._append(rest[start : start + BATCH])

    async def _append(self, batch: list[PendingEvent]) -> bool:
        started = time.monotonic()
        try:
            await self._store.audit.append_many(self._chain, batch)
        except StoreError as exc:
            self.observe(time.monotonic() - started)
            log.event(
                logger,
                "audit.failed",
                level=logging.ERROR,
                chain=self._chain,
                events=len(batch),
                error=str(exc),
            )
            return False
        self.observe(time.monotonic() - started)
        return True


class HeadChecker:
    """Checks the chain heads one tethered machine reports (see the module docstring).

    :param store: the shared database (heads are kept there).
    :param serial: the tethered machine's serial.
    :param machine_key: SHA256 fingerprint of its machine key.
    :param ask: sends the agent a question: "hash of entry ``seq``?".
    :param audit: writes an event to the relay's chain.
    :param now: the relay's clock.
    :param min_interval: seconds between two checks of this machine's reports.
    :param answer_timeout: seconds to wait for the agent's answer.
    """

    def __init__(
        self,
        store: Store,
        serial: str,
        machine_key: str,
        *,
        ask: Callable[[int], None],
        audit: AuditWriter,
        now: Callable[[], datetime],
        min_interval: float = HEAD_INTERVAL,
        answer_timeout: float = 10.0,
    ) -> None:
        self._store = store
        self.serial = serial
        self.machine_key = machine_key
        self._ask = ask
        self._audit = audit
        self._now = now
        self._min_interval = min_interval
        self._answer_timeout = answer_timeout
        self._pending: tuple[int, str] | None = None
        self._accepted: tuple[int, str] | None = None
        self._question: tuple[int, asyncio.Future[tuple[bool, str | None]]] | None = None
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()
        #: Set once a mismatch was found: later reports on this tether are not checked.
        self.flagged = False

    def reported(self, seq: int, digest: str) -> None:
        """The agent reported its head; it is checked by :meth:`serve` (newest wins)."""
        if self.flagged or (seq, digest) == self._accepted:
            return
        self._pending = (seq, digest)
        self._wake.set()

    def answered(self, seq: int, digest: str | None) -> None:
        """The agent answered a question; answers nobody asked for are ignored."""
        if self._question is not None and self._question[0] == seq:
            future = self._question[1]
            if not future.done():
                future.set_result((True, digest))

    def stop(self) -> None:
        """The tether is gone: :meth:`serve` returns once a check in progress is done.

        (Cancelling it instead could abandon a database call half-way.)
        """
        self._stopped.set()
        self._wake.set()
        if self._question is not None and not self._question[1].done():
            self._question[1].set_result((False, None))

    async def serve(self) -> None:
        """Check reports as they come, at most one per ``min_interval``, until :meth:`stop`."""
        while not self.flagged and not self._stopped.is_set():
            await self._wake.wait()
            self._wake.clear()
            if self._stopped.is_set():
                return
            report, self._pending = self._pending, None
            if report is None:
                continue
            try:
                await self._check(*report)
            except StoreError as exc:
                log.event(
                    logger,
                    "audit.head_error",
                    level=logging.WARNING,
                    serial=self.serial,
                    error=str(exc),
                )
            # Rate limit: the next report waits, unless the tether goes away meanwhile.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), self._min_interval)

    async def _check(self, seq: int, digest: str) -> None:
        stored = await self._store.audit.head(self.serial, self.machine_key)
        if stored is None or stored.seq == 0:
            return await self._accept(seq, digest)
        if seq < stored.seq:
            return await self._mismatch(
                seq,
                digest,
                stored.seq,
                f"the log now ends at entry {seq}, but entry {stored.seq} was reported "
                "before: entries were removed from it",
            )
        if seq == stored.seq:
            if digest == stored.hash:
                self._accepted = (seq, digest)
                return None
            return await self._mismatch(
                seq,
                digest,
                stored.seq,
                f"entry {seq} has another hash than reported before: the log was rewritten",
            )
        answered, now_held = await self._question_for(stored.seq)
        if not answered:
            log.event(logger, "audit.head_unanswered", serial=self.serial, seq=stored.seq)
            return None
        if now_held != stored.hash:
            held = "no such entry" if now_held is None else "another hash"
            return await self._mismatch(
                seq,
                digest,
                stored.seq,
                f"entry {stored.seq}, reported before as the log's last, now has {held}: "
                "the log was rewritten",
            )
        return await self._accept(seq, digest)

    async def _question_for(self, seq: int) -> tuple[bool, str | None]:
        """Ask the agent for the hash of entry ``seq``: (answered in time, the hash)."""
        future: asyncio.Future[tuple[bool, str | None]] = asyncio.get_running_loop().create_future()
        self._question = (seq, future)
        try:
            self._ask(seq)
            return await asyncio.wait_for(future, self._answer_timeout)
        except TimeoutError:
            return False, None
        finally:
            self._question = None

    async def _accept(self, seq: int, digest: str) -> None:
        await self._store.audit.put_head(
            serial=self.serial, machine_key=self.machine_key, seq=seq, hash=digest, now=self._now()
        )
        self._accepted = (seq, digest)

    async def _mismatch(self, seq: int, digest: str, checked: int, problem: str) -> None:
        self.flagged = True
        await self._store.audit.flag_head(
            serial=self.serial,
            machine_key=self.machine_key,
            seq=seq,
            hash=digest,
            problem=problem,
            now=self._now(),
        )
        self._audit.write(
            "audit.head_mismatch",
            serial=self.serial,
            machine=self.machine_key,
            seq=checked,
            reported_seq=seq,
            problem=problem,
        )
        log.event(
            logger,
            "audit.head_mismatch",
            level=logging.WARNING,
            serial=self.serial,
            machine=self.machine_key,
            seq=checked,
            problem=problem,
        )


class HeadChecks:
    """The relay's running :class:`HeadChecker` tasks, stopped cleanly at shutdown.

    Stopping (rather than cancelling) lets a check finish its database call, so no
    connection is abandoned half-way.
    """

    def __init__(self) -> None:
        self._tasks = TaskSet()
        self._running: dict[HeadChecker, asyncio.Task[None]] = {}

    def start(self, checker: HeadChecker) -> None:
        """Run ``checker`` until it stops (its tether closed) or the relay shuts down."""
        task = self._tasks.spawn(checker.serve(), f"relay.heads.{checker.serial}")
        self._running[checker] = task
        task.add_done_callback(lambda _: self._running.pop(checker, None))

    async def aclose(self) -> None:
        """Stop every checker, wait for checks in progress (a few seconds), then cancel."""
        for checker in list(self._running):
            checker.stop()
        if self._running:
            await asyncio.wait(list(self._running.values()), timeout=STOP_WAIT)
        await self._tasks.aclose()
