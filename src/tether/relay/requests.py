"""One-click support requests, as the relay handles them.

A machine without a key logs in with its machine key and sends ``request`` (serial,
problem description) on its control channel. The relay:

1. applies trust on first use: the first machine key seen for a serial is recorded;
   a different key for that serial is refused until a vendor admin re-binds it, so a
   spoofed serial cannot pull engineers onto an attacker's machine;
2. opens a case in the shared store and tells the agent it is waiting;
3. watches the case until the vendor service issues a key (at once under the
   auto-approve policy, or when an engineer approves), denies it, or the customer
   cancels; then hands the result to the agent.

The relay never signs anything: keys are issued by the vendor service, which keeps
the signing key off the internet-facing host.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from tether import log
from tether.keys import check_serial
from tether.protocol import CaseUpdate, RefusalReason, Request
from tether.relay.routing import AdmissionRefused
from tether.store import CaseStatus, Store

logger = logging.getLogger("tether.relay.requests")

MAX_DESCRIPTION = 2000
POLL_INTERVAL = 0.25


def check_request(message: Request) -> str:
    """Validate a request; return the cleaned description or raise AdmissionRefused."""
    try:
        check_serial(message.serial)
    except Exception:
        raise AdmissionRefused(
            RefusalReason.PROTOCOL, "the request names an invalid serial"
        ) from None
    description = message.description.strip()
    if not description:
        raise AdmissionRefused(
            RefusalReason.PROTOCOL, "describe the problem: the description is empty"
        )
    if len(description) > MAX_DESCRIPTION:
        raise AdmissionRefused(
            RefusalReason.PROTOCOL,
            f"the description is too long (at most {MAX_DESCRIPTION} characters)",
        )
    if not all(c.isprintable() or c in "\n\t" for c in description):
        raise AdmissionRefused(RefusalReason.PROTOCOL, "the description holds control characters")
    return description


class CaseWatcher:
    """Opens a case for one request and reports it to the agent until it ends.

    :param send: sends one :class:`CaseUpdate` to the agent.
    """

    def __init__(
        self,
        store: Store,
        now: Callable[[], datetime],
        machine_key: str,
        send: Callable[[CaseUpdate], None],
    ) -> None:
        self._store = store
        self._now = now
        self._machine_key = machine_key
        self._send = send
        self.case_id: int | None = None
        self.done = False

    async def run(self, message: Request) -> None:
        """Bind the serial (first use), open the case and wait for its outcome."""
        description = check_request(message)
        bound = await self._store.machines.bind_first_use(
            message.serial, self._machine_key, self._now()
        )
        if bound.machine_key != self._machine_key:
            raise AdmissionRefused(
                RefusalReason.OTHER_MACHINE,
                f"serial {message.serial} is registered to another machine; the vendor must "
                "re-bind it before this machine can ask for support",
            )
        waiting = [
            c
            for c in await self._store.cases.list(status=CaseStatus.PENDING)
            if c.machine_key == self._machine_key
        ]
        if waiting:
            raise AdmissionRefused(
                RefusalReason.PROTOCOL,
                f"a request from this machine is already waiting (case {waiting[0].id})",
            )
        case = await self._store.cases.open(
            serial=message.serial,
            machine_key=self._machine_key,
            description=description,
            now=self._now(),
        )
        self.case_id = case.id
        log.event(logger, "case.opened", case=case.id, serial=message.serial)
        self._send(CaseUpdate(case.id, "pending", "waiting for the vendor to approve"))
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            if self.done:  # the customer withdrew the request (see cancel)
                return
            current = await self._store.cases.get(case.id)
            if current is None:
                break
            status = current.status.value
            if status == "pending":
                continue
            self.done = True
            if status == "issued" and current.key_text:
                self._send(
                    CaseUpdate(case.id, "issued", "the vendor issued a key", current.key_text)
                )
            elif status == "denied":
                self._send(
                    CaseUpdate(
                        case.id, "denied", current.deny_reason or "the vendor denied the request"
                    )
                )
            else:
                self._send(CaseUpdate(case.id, status, f"the request was {status}"))
            log.event(logger, "case.answered", case=case.id, status=status)
            return

    async def cancel(self) -> None:
        """The customer gave up, or the connection went away while waiting."""
        if self.case_id is not None and not self.done:
            self.done = True
            await self._store.cases.cancel(self.case_id, self._now())
            log.event(logger, "case.cancelled", case=self.case_id)
