"""One-click support requests, as the relay handles them.

A machine without a key logs in with its machine key and sends ``request`` (serial,
problem description) on its control channel. The relay:

1. refuses a machine key other than the one the serial is bound to (a vendor admin
   re-binds a replaced machine), so a spoofed serial cannot pull engineers onto an
   attacker's machine. A request never binds a serial itself: anyone can send one for
   any serial, and the real machine must not be locked out by whoever asked first.
   The binding is made when a vendor-issued key is first used, or when a person
   approves the case for this machine key, seeing its fingerprint;
2. opens a case in the shared store and tells the agent it is waiting;
3. watches the case until the vendor service issues a key (under the auto-approve
   policy only for a serial already bound to this machine key; otherwise when an
   engineer approves), denies it, or the customer cancels; then hands the result to
   the agent.

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


def check_request(message: Request) -> tuple[str, str]:
    """Validate a request; return its canonical serial and cleaned description.

    Raises :class:`AdmissionRefused` for an invalid serial or description.
    """
    try:
        serial = check_serial(message.serial)
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
    return serial, description


class CaseWatcher:
    """Opens a case for one request and reports it to the agent until it ends.

    :param send: sends one :class:`CaseUpdate` to the agent.
    :param timeout: seconds the case may stay pending; then the relay cancels it and
        tells the agent to ask again (an open connection per waiting request is held
        only that long, whatever the hourly request rate allows).
    """

    def __init__(
        self,
        store: Store,
        now: Callable[[], datetime],
        machine_key: str,
        send: Callable[[CaseUpdate], None],
        timeout: float = 3600.0,
    ) -> None:
        self._timeout = timeout
        self._store = store
        self._now = now
        self._machine_key = machine_key
        self._send = send
        self.case_id: int | None = None
        self.done = False

    async def run(self, message: Request) -> None:
        """Check the serial's binding, open the case and wait for its outcome."""
        serial, description = check_request(message)
        bound = await self._store.machines.get(serial)
        if bound is not None and bound.machine_key not in (None, self._machine_key):
            log.event(
                logger,
                "request.refused",
                level=logging.WARNING,
                serial=serial,
                reason="other-machine",
            )
            raise AdmissionRefused(
                RefusalReason.OTHER_MACHINE,
                f"serial {serial} is registered to another machine; the vendor must "
                "re-bind it before this machine can ask for support",
            )
        known = bound is not None and bound.machine_key == self._machine_key
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
            serial=serial,
            machine_key=self._machine_key,
            description=description,
            now=self._now(),
            limits=message.limits,
        )
        self.case_id = case.id
        log.event(logger, "case.opened", case=case.id, serial=serial, known=known)
        self._send(
            CaseUpdate(
                case.id,
                "pending",
                "waiting for the vendor to approve"
                if known
                else "waiting for a vendor engineer to approve (the vendor does not know this "
                "machine yet)",
            )
        )
        deadline = asyncio.get_running_loop().time() + self._timeout
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            if self.done:  # the customer withdrew the request (see cancel)
                return
            current = await self._store.cases.get(case.id)
            if current is None:
                break
            status = current.status.value
            if status == "pending" and asyncio.get_running_loop().time() >= deadline:
                # cancel() changes only a case still pending: an answer that raced in wins.
                current = await self._store.cases.cancel(case.id, self._now())
                status = current.status.value
                if status == "cancelled":
                    self.done = True
                    log.event(logger, "case.expired", case=case.id, after=f"{self._timeout:g}s")
                    self._send(
                        CaseUpdate(
                            case.id,
                            "cancelled",
                            f"no answer from the vendor within {self._timeout:g} s; the "
                            "request was withdrawn, ask again if the problem remains",
                        )
                    )
                    return
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
