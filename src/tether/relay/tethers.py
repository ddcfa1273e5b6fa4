"""The agents' side of the relay: a machine registers its tether key, or asks for one.

An agent logs in as :data:`~tether.wire.AGENT_USERNAME` with its machine key and opens
the control subsystem (:class:`ControlSession`). Its first message is either
``register`` (a tether key: checked, bound to the machine key on first use, entered in
the registry — :meth:`TetherLink.register`) or ``request`` (a one-click case:
:mod:`tether.relay.requests`). Afterwards the relay sends notices on the same channel
(closing, audit head queries) and the agent reports its audit head and sealed password.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING

from tether import log
from tether.audit import FieldValue
from tether.keys import TetherKeyClaims, TetherKeyError, parse_key
from tether.protocol import (
    AccessClosed,
    Cancel,
    CaseUpdate,
    ChainHead,
    Closing,
    GrantLimits,
    HeadAnswer,
    HeadQuery,
    LineBuffer,
    PasswordWithdrawn,
    ProtocolError,
    RefusalReason,
    Register,
    Registered,
    Request,
    SealedPassword,
    encode,
)
from tether.protocol import Refused as RefusedMessage
from tether.protocol import decode as decode_message
from tether.relay.audit import HeadChecker
from tether.relay.forwarding import NullListener
from tether.relay.metrics import ADMITTED, REGISTER_TIMEOUT
from tether.relay.requests import CaseWatcher
from tether.relay.routing import AdmissionRefused, TetherEntry, admit_tether
from tether.sshlib import asyncssh
from tether.store import IssuedKey, MachineRecord, StoreConflict, StoreError
from tether.store.admission import Admission
from tether.wire import CONTROL_SUBSYSTEM

if TYPE_CHECKING:
    from tether.relay.connection import RelayConnection
    from tether.relay.server import Relay

logger = logging.getLogger("tether.relay")

#: What an agent is told when its admission cannot reach the database (it retries).
DATABASE_UNAVAILABLE = "vendor database unavailable; try again later"


class ControlSession(asyncssh.SSHServerSession[bytes]):
    """The agent's control channel: one ``register``, then relay→agent notices."""

    def __init__(self, owner: TetherLink) -> None:
        self._owner = owner
        self._lines = LineBuffer()
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None
        self._registering = False
        self._case: CaseWatcher | None = None
        self._request: asyncio.Task[None] | None = None

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self._chan = chan

    def subsystem_requested(self, subsystem: str) -> bool:
        return subsystem == CONTROL_SUBSYSTEM

    def data_received(self, data: bytes, datatype: int | None) -> None:
        owner = self._owner
        tasks = owner.relay.tasks
        try:
            for line in self._lines.feed(data):
                message = decode_message(line)
                if isinstance(message, SealedPassword):
                    owner.store_sealed_password(message)
                elif isinstance(message, PasswordWithdrawn):
                    owner.password_withdrawn(message)
                elif isinstance(message, GrantLimits):
                    owner.store_limits(message)
                elif isinstance(message, AccessClosed):
                    owner.access_closed(message)
                elif isinstance(message, ChainHead | HeadAnswer):
                    owner.audit_message(message)
                elif isinstance(message, Cancel) and self._case is not None:
                    tasks.spawn(self._case.cancel(), f"relay.cancel.{owner.peer}")
                elif self._registering:
                    raise ProtocolError("one register or request per connection")
                elif isinstance(message, Register):
                    self._registering = True
                    tasks.spawn(owner.register(message, self), f"relay.register.{owner.peer}")
                elif isinstance(message, Request) and owner.machine_key is not None:
                    self._registering = True
                    self._start_request(message, owner.machine_key)
                else:
                    raise ProtocolError("expected a register or request message")
        except ProtocolError as exc:
            owner.refuse(RefusalReason.PROTOCOL, str(exc), self)

    def _start_request(self, message: Request, machine_key: str) -> None:
        owner = self._owner
        relay = owner.relay
        if not relay.requests_by_source.allow(owner.connection.source, time.monotonic()):
            owner.refuse(
                RefusalReason.PROTOCOL,
                "too many support requests from this address; try again later",
                self,
            )
            return
        owner.request_started()
        self._case = CaseWatcher(
            relay.store,
            relay.clock.now,
            machine_key,
            self.send,
            timeout=relay.config.request_timeout,
        )
        self._request = relay.tasks.spawn(
            self._serve_request(self._case, message), f"relay.request.{owner.peer}"
        )

    async def _serve_request(self, case: CaseWatcher, message: Request) -> None:
        try:
            await case.run(message)
        except AdmissionRefused as refusal:
            # A serial bound to another machine is audited; malformed requests are not.
            bound = refusal.reason == RefusalReason.OTHER_MACHINE
            self._owner.refuse(
                refusal.reason,
                refusal.message,
                self,
                serial=message.serial if bound else None,
                event="request.refused",
            )
            return
        self._owner.close()

    def send(self, message: RefusedMessage | Registered | Closing | CaseUpdate | HeadQuery) -> None:
        """Send one message to the agent; nothing, once its channel is closing.

        An agent may hang up at any moment (a customer withdrawing a request, a machine
        going away): what the relay had left to say then has no one to hear it.
        """
        if self._chan is not None and not self._chan.is_closing():
            self._chan.write(encode(message))

    def connection_lost(self, exc: Exception | None) -> None:
        # The agent closed its control channel: its tether (or request) ends with it.
        if self._case is not None and not self._case.done:
            self._owner.relay.tasks.spawn(self._case.cancel(), f"relay.cancel.{self._owner.peer}")
        if self._request is not None:
            self._request.cancel()  # nobody is waiting for the case's outcome any more
        self._owner.close()


class AdmissionChecks:
    """What a tether's admission checks in the store's transaction: the vendor's record
    of its key, the revocations this relay knows, the serial's machine.

    The checks run where the transaction runs (on SQLite, the store's writer thread):
    they read the relay's state and change nothing of it; :attr:`first_use` says, once
    the admission is through, whether it bound the key.
    """

    def __init__(
        self,
        relay: Relay,
        claims: TetherKeyClaims,
        machine_key: str,
        now: datetime,
        connected_at: datetime | None = None,
    ) -> None:
        self.relay = relay
        self.claims = claims
        self.machine_key = machine_key
        self.now = now
        self.connected_at = connected_at
        self.first_use = False

    def admission(self) -> Admission:
        """The admission to submit to the relay's batcher."""
        relay, claims = self.relay, self.claims
        return Admission(
            key_id=claims.key_id,
            serial=claims.serial,
            machine_key=self.machine_key,
            relay_id=relay.config.relay_id,
            relay_address=relay.config.advertise,
            now=self.now,
            check_key=self.check_key,
            check_owner=self.check_owner,
            connected_at=self.connected_at,
        )

    def check_key(self, issued: IssuedKey | None) -> None:
        claims, relay = self.claims, self.relay
        admit_tether(claims, issued, self.machine_key, self.now)
        # The admission binds an unused key to this machine at ``now``.
        self.first_use = issued is not None and issued.first_used_at == self.now
        if claims.key_id in relay.revoked_keys:
            raise AdmissionRefused(RefusalReason.REVOKED, "this key was revoked by the vendor")
        previous = relay.registry.get(claims.serial)
        if previous is not None and previous.machine_key != self.machine_key:
            raise AdmissionRefused(
                RefusalReason.OTHER_MACHINE,
                f"machine {claims.serial} is tethered by another machine right now",
            )

    def check_owner(self, owner: MachineRecord) -> None:
        # A serial belongs to one machine (trust on first use, case-insensitive), so no
        # other machine can take over its route, with any key.
        if owner.machine_key is not None and owner.machine_key != self.machine_key:
            raise AdmissionRefused(
                RefusalReason.OTHER_MACHINE,
                f"serial {self.claims.serial} is registered to another machine; the vendor "
                "must re-bind it before this machine can tether",
            )


class TetherLink:
    """The agent's side of one relay connection: its machine key, tether and timers.

    It is the ``link`` of the connection's :class:`~tether.relay.routing.TetherEntry`
    once registered, which is how the relay reaches the agent's connection (to open an
    engineer's channel) and drops the tether (revocation, expiry, replacement).
    """

    def __init__(self, connection: RelayConnection) -> None:
        self.connection = connection
        self.relay = connection.relay
        self.machine_key: str | None = None
        self.entry: TetherEntry[TetherLink] | None = None
        #: What the registered tether key grants (checked again by :meth:`readmission`).
        self.claims: TetherKeyClaims | None = None
        self.control: ControlSession | None = None
        self.heads: HeadChecker | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._register_deadline: asyncio.TimerHandle | None = None
        self._password_received = False
        self._limits_received = False
        #: Why the relay itself ended the tether (revoked, expired...), for the audit.
        self._ended_by: RefusalReason | None = None

    @property
    def peer(self) -> str:
        return self.connection.peer

    @property
    def conn(self) -> asyncssh.SSHServerConnection | None:
        """The agent's SSH connection (channels to the machine are opened on it)."""
        return self.connection.conn

    def close(self) -> None:
        self.connection.close()

    # --- lifecycle ----------------------------------------------------------------------

    def authenticated(self) -> None:
        """The agent logged in: it has ``register_timeout`` seconds to register."""
        self._register_deadline = asyncio.get_running_loop().call_later(
            self.relay.config.register_timeout, self._register_timed_out
        )

    def request_started(self) -> None:
        """A one-click request may wait for a human: no registration deadline then."""
        if self._register_deadline is not None:
            self._register_deadline.cancel()

    def _register_timed_out(self) -> None:
        if self.entry is None:
            log.event(logger, "tether.refused", peer=self.peer, reason=REGISTER_TIMEOUT)
            self.relay.metrics.admissions.labels(REGISTER_TIMEOUT).inc()
            self.close()

    def open_control(self) -> ControlSession | None:
        """The control session for the agent's first session channel (None after that)."""
        if self.control is not None:
            return None
        self.control = ControlSession(self)
        return self.control

    def lost(self, exc: Exception | None) -> None:
        """The connection is gone: stop timers and checks, unregister and audit the tether."""
        for timer in (self._expiry, self._register_deadline):
            if timer is not None:
                timer.cancel()
        if self.heads is not None:
            self.heads.stop()
        entry = self.entry
        relay = self.relay
        if entry is not None and relay.registry.remove(entry):
            if self._ended_by is not None:  # the relay dropped it: revoked, expired...
                reason = self._ended_by.value
            else:
                reason = str(exc)[:200] if exc else "closed"
            down: dict[str, FieldValue] = {
                "serial": entry.serial,
                "key_id": entry.key_id,
                "machine": entry.machine_key,
                "duration": (relay.clock.now() - entry.connected_at).total_seconds(),
                "reason": reason,
            }
            relay.audit.record("tether.down", down, log_as="tether.down")
            relay.tasks.spawn(
                relay.departures.submit((entry.serial, relay.config.relay_id)),
                f"relay.unregister.{entry.serial}",
            )

    def drop(self, reason: RefusalReason, message: str, *, retry_within: float = 0.0) -> None:
        """Tell the agent why (and when to come back), then end its tether and channels.

        ``reason`` is also what the relay's audit chain gives for the ``tether.down``.
        """
        if self._ended_by is None:
            self._ended_by = reason
        if self.control is not None:
            self.control.send(Closing(reason, message, retry_within))
        if self.entry is not None:
            log.event(logger, "tether.drop", serial=self.entry.serial, reason=reason.value)
            self.relay.metrics.tether_drops.labels(reason.value).inc()
        self.close()

    def refuse(
        self,
        reason: RefusalReason,
        message: str,
        control: ControlSession,
        *,
        serial: str | None = None,
        key_id: str | None = None,
        event: str = "tether.refused",
    ) -> None:
        """Tell the agent why it is refused and hang up.

        With ``serial`` (a key the vendor signed, or a serial bound to a machine) the
        refusal also goes into the relay's audit chain: a machine other than the one a
        serial belongs to, or a revoked, spent or expired key, is an event the vendor
        must be able to find later. Refusals of garbage are only logged.
        """
        if event == "tether.refused":
            self.relay.metrics.admissions.labels(reason.value).inc()
        log.event(
            logger,
            event,
            level=logging.WARNING,
            peer=self.peer,
            machine=self.machine_key,
            serial=serial,
            reason=reason.value,
        )
        if serial is not None:
            fields: dict[str, FieldValue] = {
                "serial": serial,
                "key_id": key_id,
                "machine": self.machine_key,
                "peer": self.peer,
                "reason": reason.value,
            }
            self.relay.audit.record(event, {k: v for k, v in fields.items() if v is not None})
        control.send(RefusedMessage(reason, message))
        self.close()

    # --- registration -------------------------------------------------------------------

    async def register(self, message: Register, control: ControlSession) -> None:
        """Check the presented tether key and, if it is good, register the tether."""
        if self.machine_key is None:
            return
        now = self.relay.clock.now()
        machine_key = self.machine_key
        relay = self.relay
        try:
            claims = parse_key(message.key, relay.config.vendor_keys, now=now)
        except TetherKeyError as exc:
            self.refuse(RefusalReason(exc.reason), str(exc), control)
            return
        checks = AdmissionChecks(relay, claims, machine_key, now)
        try:
            # Key check, first-use bindings and the registry row: one transaction, so
            # a refused tether changes nothing and a revocation cannot slip in between.
            await relay.admissions.submit(checks.admission())
        except AdmissionRefused as refusal:
            # The vendor signed this key: its refusal goes into the audit chain.
            self.refuse(
                refusal.reason,
                refusal.message,
                control,
                serial=claims.serial,
                key_id=claims.key_id,
            )
            return
        except StoreConflict as exc:
            # A race with another relay's write for this serial: worth another try.
            log.event(logger, "tether.store_conflict", level=logging.WARNING, error=str(exc))
            self.refuse(
                RefusalReason.INTERNAL, "the relay could not register this tether now", control
            )
            return
        except StoreError as exc:
            # The database is away (an outage, a restart): the key was not checked, so
            # nothing is known against it. A transient refusal: the agent backs off and
            # retries, and live tethers are untouched. Not audited: the audit chain is in
            # that same database. The error names the database without its password.
            log.event(logger, "tether.store_unavailable", level=logging.WARNING, error=str(exc))
            self.refuse(RefusalReason.UNAVAILABLE, DATABASE_UNAVAILABLE, control)
            return
        if self.connection.closing or claims.key_id in relay.revoked_keys:
            # Closed or revoked while the transaction ran: take the row back out.
            relay.tasks.spawn(
                relay.departures.submit((claims.serial, relay.config.relay_id)),
                f"relay.unregister.{claims.serial}",
            )
            if not self.connection.closing:
                self.refuse(RefusalReason.REVOKED, "this key was revoked by the vendor", control)
            return
        entry = TetherEntry(
            serial=claims.serial,
            key_id=claims.key_id,
            machine_key=machine_key,
            expires_at=claims.expires_at,
            key_ports=frozenset(claims.ports),
            connected_at=now,
            link=self,
        )
        self.entry, self.claims = entry, claims
        previous = relay.registry.add(entry)
        if previous is not None:
            previous.link.entry = None  # its late close must not unregister the new tether
            previous.link.drop(
                RefusalReason.REPLACED, "a newer tether from this machine replaced this one"
            )
        if self._register_deadline is not None:
            self._register_deadline.cancel()
        self._expiry = asyncio.get_running_loop().call_later(
            max(0.0, (claims.expires_at - now).total_seconds()),
            self.drop,
            RefusalReason.EXPIRED,
            "the tether key expired",
        )
        control.send(
            Registered(
                claims.serial,
                claims.expires_at.isoformat(),
                claims.ports,
                audit_heads=True,
                grant_limits=True,
            )
        )
        relay.metrics.admissions.labels(ADMITTED).inc()
        relay.metrics.handshake_duration.observe(time.monotonic() - self.connection.accepted)
        if not checks.first_use:
            # The key was bound before: this machine tethered with it already, to this
            # relay or another one of the fleet (the binding is in the shared store, so
            # a relay restart does not make every returning machine look new).
            relay.metrics.reconnects.inc()
        log.event(
            logger,
            "tether.up",
            serial=claims.serial,
            key=claims.key_id,
            machine=self.machine_key,
            peer=self.peer,
            ports=claims.ports,
            expires=claims.expires_at,
        )
        self._audit_up(claims.key_id, first_use=checks.first_use)

    def readmission(self) -> AdmissionChecks | None:
        """This live tether's admission once more, checked as at registration (after the
        fleet gave this relay up and swept its registry rows); None if not registered."""
        if self.entry is None or self.claims is None:
            return None
        entry = self.entry
        return AdmissionChecks(
            self.relay, self.claims, entry.machine_key, self.relay.clock.now(), entry.connected_at
        )

    def _audit_up(self, key_id: str, *, first_use: bool) -> None:
        """Audit the tether (and the key's first use) and start checking its chain heads."""
        entry, control = self.entry, self.control
        if entry is None or control is None:
            return
        machine = entry.machine_key
        if first_use:
            self.relay.audit.write("key.used", key_id=key_id, serial=entry.serial, machine=machine)
        self.relay.audit.write(
            "tether.up",
            serial=entry.serial,
            key_id=key_id,
            machine=machine,
            peer=self.peer,
            relay=self.relay.config.relay_id,
            ports=sorted(entry.key_ports),
        )
        self.heads = HeadChecker(
            self.relay.store,
            entry.serial,
            machine,
            ask=lambda seq: control.send(HeadQuery(seq)),
            audit=self.relay.audit,
            now=self.relay.clock.now,
            min_interval=self.relay.head_interval,
        )
        self.relay.head_checks.start(self.heads)

    # --- after registration -------------------------------------------------------------

    def audit_message(self, message: ChainHead | HeadAnswer) -> None:
        """Hand the agent's audit head report or answer to this tether's checker."""
        if self.heads is None:
            raise ProtocolError("audit message before registration")
        if isinstance(message, ChainHead):
            self.heads.reported(message.seq, message.hash)
        else:
            self.heads.answered(message.seq, message.hash)

    def store_sealed_password(self, message: SealedPassword) -> None:
        """Keep the machine's sealed support password for the vendor service (once)."""
        entry = self.entry
        if entry is None or message.key_id != entry.key_id or self._password_received:
            raise ProtocolError("sealed password out of place")
        if not message.sealed.startswith("hpke1.") or len(message.sealed) > 4096:
            raise ProtocolError("sealed password malformed")
        self._password_received = True
        now = self.relay.clock.now()
        self.relay.tasks.spawn(
            self.relay.store.passwords.put(
                key_id=entry.key_id, serial=entry.serial, sealed=message.sealed, now=now
            ),
            f"relay.password.{entry.serial}",
        )
        log.event(logger, "password.sealed_received", serial=entry.serial, key=entry.key_id)

    def store_limits(self, message: GrantLimits) -> None:
        """Keep what the grant allows, in the machine's words, for the vendor console (once)."""
        entry = self.entry
        if entry is None or message.key_id != entry.key_id or self._limits_received:
            raise ProtocolError("grant limits out of place")
        self._limits_received = True
        self.relay.tasks.spawn(
            self.relay.store.tethers.set_limits(
                entry.serial, entry.key_id, self.relay.config.relay_id, message.limits
            ),
            f"relay.limits.{entry.serial}",
        )
        log.event(logger, "tether.limits", serial=entry.serial, limits=len(message.limits))

    def password_withdrawn(self, message: PasswordWithdrawn) -> None:
        """The customer replaced the sealed password: the vendor must not show it any more."""
        entry = self.entry
        if entry is None or message.key_id != entry.key_id or self._password_received:
            raise ProtocolError("password withdrawal out of place")
        self._password_received = True
        self.relay.tasks.spawn(
            self.relay.store.passwords.forget(entry.key_id), f"relay.password.{entry.serial}"
        )
        log.event(logger, "password.withdrawn", serial=entry.serial, key=entry.key_id)

    def access_closed(self, message: AccessClosed) -> None:
        """The machine closed the access this tether's key opened: the key is spent.

        A copy of the machine's state presenting it again is refused, and its sealed
        password (which no longer works: the account is gone) is forgotten.
        """
        entry = self.entry
        if entry is None or message.key_id != entry.key_id:
            raise ProtocolError("access-closed out of place")
        detail = f"access closed on {entry.serial} ({message.reason[:40]})"
        self.relay.tasks.spawn(self._spend(entry.key_id, entry.serial, detail), "relay.spend")

    async def _spend(self, key_id: str, serial: str, detail: str) -> None:
        store, now = self.relay.store, self.relay.clock.now()
        await store.keys.spend(key_id, detail=detail, now=now)
        await store.passwords.forget(key_id)
        self.relay.audit.write("key.spent", key_id=key_id, serial=serial, detail=detail)
        log.event(logger, "key.spent", serial=serial, key=key_id, detail=detail)

    def forward_requested(self, listen_port: int) -> NullListener | None:
        """The agent offers ``listen_port``: accepted (no socket) if its key allows it."""
        if self.entry is not None and self.entry.may_offer(listen_port):
            self.entry.offered_ports.add(listen_port)
            return NullListener(listen_port)
        return None


async def readmit(relay: Relay) -> None:
    """Write this live relay's registry rows again after the fleet swept them.

    A relay whose heartbeats were late (a database outage, a saturated machine) is given
    up by its peers, which remove its tethers' and channels' rows, while its agents are
    still connected. Each tether goes through its admission's checks once more, in the
    relay's batches (200 a transaction): the agents stay connected, and no reconnect
    storm follows. One refused now (its key revoked or expired meanwhile, its serial
    re-bound) is dropped with the reason; one the store cannot take now is sent to
    register anew, spread over the relay's reconnect rate. Live channels get their
    rows back too.
    """
    pending = [
        (entry.link, checks)
        for entry in relay.registry
        if (checks := entry.link.readmission()) is not None
    ]
    results = await asyncio.gather(
        *(relay.admissions.submit(checks.admission()) for _, checks in pending),
        return_exceptions=True,
    )
    spread = len(pending) / relay.config.reconnect_rate
    kept = 0
    for (link, _), result in zip(pending, results, strict=True):
        if isinstance(result, AdmissionRefused):
            link.drop(result.reason, result.message)
        elif isinstance(result, BaseException):
            link.drop(
                RefusalReason.SHUTDOWN,
                "the relay lost its place in the fleet; reconnect to register again",
                retry_within=spread,
            )
        else:
            kept += 1
    for channel in list(relay.live_channels):
        channel.opened(relay)
    log.event(
        logger,
        "relay.readmitted",
        tethers=kept,
        dropped=len(pending) - kept,
        channels=len(relay.live_channels),
    )
