"""Opening and closing support access: the state machine behind ``tether access …``.

These operations run in the CLI process as well as in the daemon, always under the
state lock, so they work when the daemon and the web page are down. Each change is
bracketed by intent records (``OPENING`` → ``OPEN``, ``CLOSING`` → ``CLOSED``) so
that :meth:`AccessManager.recover` can finish or undo it after a crash. The machine
itself is changed only through :class:`~tether.agent.machine.effects.Machine`; every step is
written to the agent's hash-chained audit log.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from tether import log
from tether.agent.locks import state_lock
from tether.agent.machine.effects import Machine, MachineError, RecorderSpec, SupportGrant
from tether.agent.machine.limits import Limits
from tether.agent.machine.recorder_setup import choose_python, library_for, recorder_command
from tether.agent.state import AccessMode, AccessState, AccessStatus, CloseReason, StateFile
from tether.audit import FieldValue
from tether.audit_log import AuditLog
from tether.clock import SYSTEM_CLOCK, Clock
from tether.config import AgentConfig, FailMode
from tether.errors import BadInput, NotReady, Refused
from tether.keys import TetherKeyClaims, parse_key
from tether.seal import generate_password, seal

logger = logging.getLogger("tether.agent")

#: Direct access lasts this long unless the customer says otherwise.
DIRECT_DEFAULT_DURATION = timedelta(days=7)
#: Closing access for these reasons spends its key (the relay is told); the others
#: are the relay's own verdicts (revoked, refused) or a failed opening.
SPENDING_REASONS = frozenset({CloseReason.CUSTOMER, CloseReason.EXPIRED})
#: Engineers in tether mode arrive through the agent, i.e. from the machine's loopback.
TETHER_SOURCES = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class Offer:
    """What a verified key will open on this machine."""

    claims: TetherKeyClaims
    ports: tuple[int, ...]
    refused_ports: tuple[int, ...]


@dataclass(frozen=True)
class PasswordChoice:
    """The support account's password: the customer's own, or generated and sealed."""

    own: str | None = None

    @property
    def generated(self) -> bool:
        return self.own is None


def recorder_for(config: AgentConfig) -> RecorderSpec | None:
    """Return how sessions are recorded under ``config`` (None: recording is off).

    Raises:
        MachineError: recording is on, must not fail open, and no recorder can run.
    """
    settings = config.recording
    if not settings.enabled:
        return None
    fail_open = settings.fail == FailMode.OPEN
    python = choose_python(settings.python)
    if python is None:
        if fail_open:
            log.event(
                logger,
                "access.recording_unavailable",
                level=logging.WARNING,
                note="no Python the support account can run; sessions will not be recorded",
            )
            return None
        raise MachineError(
            "no Python the support account can run for the session recorder: set "
            f'[recording] python in {config.path} (or fail = "open" to run unrecorded)'
        )
    library = library_for(config.state_dir)
    command = recorder_command(
        python=python,
        directory=config.recordings_dir,
        serial=config.serial,
        fail_open=fail_open,
        max_bytes=settings.max_session,
        sftp_server=settings.sftp_server,
        root=library,
    )
    return RecorderSpec(command, config.recordings_dir, fail_open, library)


def _machine_for(config: AgentConfig) -> Machine:
    from tether.agent.machine.system import SystemMachine

    return SystemMachine(config.paths)


class AccessManager:
    """The access state machine as seen from the machine (files and effects, no network)."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        clock: Clock = SYSTEM_CLOCK,
        machine: Machine | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.state_file = StateFile(config.state_dir / "access.json")
        self.audit = AuditLog(config.state_dir / "audit.log", clock=clock)
        self._machine = machine
        self._lock_path = config.state_dir / "state.lock"

    @property
    def machine(self) -> Machine:
        if self._machine is None:
            self._machine = _machine_for(self.config)
        return self._machine

    def state(self) -> AccessState:
        return self.state_file.load()

    # --- opening --------------------------------------------------------------------

    def check_key(self, key_text: str, ports: tuple[int, ...] | None = None) -> Offer:
        """Verify a pasted key offline against this machine; raise a clear error if bad.

        :param ports: open only these of the key's ports (the customer's choice).
        """
        claims = parse_key(
            key_text, self.config.vendor_keys, now=self.clock.now(), serial=self.config.serial
        )
        allowed = set(self.config.allowed_ports)
        if ports is not None:
            allowed &= set(ports)
        ports = tuple(p for p in claims.ports if p in allowed)
        refused = tuple(p for p in claims.ports if p not in allowed)
        if not ports:
            raise BadInput(
                f"this key only opens ports {', '.join(map(str, claims.ports))}, none of which this "
                f"machine allows ({', '.join(map(str, sorted(allowed)))}); see extra_ports in "
                f"{self.config.path}"
            )
        return Offer(claims, ports, refused)

    def enable_with_key(
        self,
        key_text: str,
        *,
        by: str,
        duration: timedelta | None = None,
        password: PasswordChoice | None = None,
        ports: tuple[int, ...] | None = None,
        limits: Limits | None = None,
    ) -> tuple[AccessState, Offer]:
        """Open access with a pasted tether key (verified first; nothing changes if bad).

        :param ports: open only these of the key's ports (default: all this machine allows).
        :param limits: what the grant allows (default: everything).
        """
        offer = self.check_key(key_text, ports)
        claims = offer.claims
        expires_at = claims.expires_at
        if duration is not None:
            expires_at = min(expires_at, self.clock.now() + _positive(duration))
        state = AccessState(
            status=AccessStatus.OPENING,
            mode=AccessMode.TETHER,
            grant_id=claims.key_id,
            account=self.config.support_account,
            allow_from=TETHER_SOURCES,
            key="".join(key_text.split()),
            key_id=claims.key_id,
            serial=claims.serial,
            relay=claims.relay,
            ports=offer.ports,
            expires_at=expires_at,
            limits=limits or Limits(),
        )
        return self._open(state, password or PasswordChoice(), by=by), offer

    def enable_direct(
        self,
        *,
        by: str,
        duration: timedelta | None = None,
        allow_from: tuple[str, ...] = (),
        no_expire: bool = False,
        password: PasswordChoice | None = None,
        limits: Limits | None = None,
    ) -> AccessState:
        """Open direct access: sshd trusts the vendor CA for the support account.

        :param limits: what the grant allows (default: everything).
        """
        if no_expire and duration is not None:
            raise BadInput("--no-expire and --duration contradict each other: choose one")
        now = self.clock.now()
        expires_at = None if no_expire else now + _positive(duration or DIRECT_DEFAULT_DURATION)
        state = AccessState(
            status=AccessStatus.OPENING,
            mode=AccessMode.DIRECT,
            grant_id="direct-" + secrets.token_hex(8),
            account=self.config.support_account,
            allow_from=allow_from,
            serial=self.config.serial,
            expires_at=expires_at,
            limits=limits or Limits(),
        )
        return self._open(state, password or PasswordChoice(), by=by)

    def _open(self, state: AccessState, password: PasswordChoice, *, by: str) -> AccessState:
        if self.config.vendor_ca is None:
            raise NotReady(
                f"{self.config.path} has no vendor_ca: copy the vendor's agent-trust.toml into it"
            )
        secret, sealed = self._password(state, password)
        recorder = recorder_for(self.config)
        with state_lock(self._lock_path):
            current = self.state_file.load()
            if current.in_transition:
                raise NotReady(
                    "a previous change was interrupted; start the agent to repair it first"
                )
            if current.is_open:
                if current.grant_id == state.grant_id and current.limits != state.limits:
                    raise Refused(
                        "support access is already open with this key and other limits "
                        f"({current.limits.summary()}); disable it first to change them"
                    )
                if current.grant_id == state.grant_id:
                    # The same grant again: not a new use of its key. A password of the
                    # customer's own replaces the generated one (and the vendor's copy).
                    if password.own is None:
                        return current
                    return self._replace_password(current, password.own, recorder, by=by)
                until = (
                    f"until {current.expires_at:%Y-%m-%d %H:%M} UTC"
                    if current.expires_at
                    else "without end"
                )
                raise Refused(f"support access is already open ({until}); disable it first")
            if state.key_id is not None:
                self._refuse_spent(state.key_id, current)
            intent = replace(
                state, opened_at=self.clock.now(), opened_by=by, sealed_password=sealed
            )
            self.state_file.save(intent)  # intent first: a crash from here on is repaired
            grant = SupportGrant(
                account=self.config.support_account,
                vendor_ca=self.config.vendor_ca,
                expires_at=state.expires_at,
                allow_from=state.allow_from,
                password=secret,
                recorder=recorder,
                limits=state.limits,
            )
            try:
                self.machine.open(grant)
            except MachineError as exc:
                self.state_file.save(
                    intent.closing(CloseReason.FAILED, self.clock.now(), str(exc)).closed()
                )
                self.audit.append(
                    "access.open_failed", by=by, mode=state.mode.value, reason=str(exc)
                )
                raise
            opened = replace(intent, status=AccessStatus.OPEN)
            self.state_file.save(opened)
            self.audit.append(
                "access.opened",
                by=by,
                mode=state.mode.value,
                grant=state.grant_id,
                key_id=state.key_id,
                relay=state.relay,
                ports=list(state.ports),
                allow_from=list(state.allow_from),
                expires_at=state.expires_at.isoformat() if state.expires_at else None,
                password_source="generated"
                if password.generated and sealed
                else ("own" if secret else "none"),
                recording=self.config.recording.fail.value if recorder else "off",
                **({"limits": state.limits.describe()} if state.limits.restricted else {}),
            )
        log.event(
            logger,
            "access.opened",
            by=by,
            mode=state.mode.value,
            grant=state.grant_id,
            expires=state.expires_at,
        )
        return opened

    def _replace_password(
        self, current: AccessState, own: str, recorder: RecorderSpec | None, *, by: str
    ) -> AccessState:
        """Give the open grant's account the customer's own password (under the lock).

        The grant is applied again as it is (``Machine.open`` is idempotent) with the new
        password; the sealed copy is dropped from the state, so the agent withdraws it
        from the vendor: the console must not show a password that no longer works.
        """
        if self.config.vendor_ca is None:  # checked by _open; here for the type checker
            raise NotReady(f"{self.config.path} has no vendor_ca")
        self.machine.open(
            SupportGrant(
                account=current.account or self.config.support_account,
                vendor_ca=self.config.vendor_ca,
                expires_at=current.expires_at,
                allow_from=current.allow_from,
                password=own,
                recorder=recorder,
                limits=current.limits,
            )
        )
        updated = replace(current, sealed_password=None, password_withdrawn=True)
        self.state_file.save(updated)
        self.audit.append(
            "access.password_replaced",
            by=by,
            grant=current.grant_id,
            chosen_by="customer",
            vendor_copy="withdrawn" if current.sealed_password else "none",
        )
        return updated

    def _refuse_spent(self, key_id: str, current: AccessState) -> None:
        """Refuse a key that already opened access here: each key works once.

        The audit log is the record of every opening (``access.opened`` with the key
        id); the access it opened has closed since (disable, expiry, revocation), so
        the key is spent. Raised before anything on the machine changes.
        """
        used = [
            e
            for e in self.audit.entries(skip_damaged=True)
            if e.event == "access.opened" and e.fields.get("key_id") == key_id
        ]
        if not used:
            return
        how = f"it opened access on {used[-1].at:%Y-%m-%d %H:%M} UTC"
        if current.key_id == key_id and current.closed_at and current.close_reason:
            how += (
                f", closed ({current.close_reason.value}) on {current.closed_at:%Y-%m-%d %H:%M} UTC"
            )
        raise BadInput(
            f"this key was already used on this machine ({how}); each key works once: "
            "ask the vendor for a new key"
        )

    def _password(
        self, state: AccessState, choice: PasswordChoice
    ) -> tuple[str | None, str | None]:
        if choice.own is not None:
            if len(choice.own) < 12:
                raise BadInput("the support account's password must have at least 12 characters")
            return choice.own, None
        if self.config.vendor_seal_key is None or state.grant_id is None:
            return None, None  # no password: engineers use certificates only
        secret = generate_password()
        sealed = seal(
            secret, self.config.vendor_seal_key, serial=self.config.serial, grant_id=state.grant_id
        )
        return secret, sealed

    # --- closing ----------------------------------------------------------------------

    def close(self, reason: CloseReason, *, by: str, detail: str | None = None) -> AccessState:
        """Close access: kill sessions, remove account and sshd changes (idempotent)."""
        with state_lock(self._lock_path):
            return self._close_locked(reason, by=by, detail=detail)

    def _close_locked(
        self, reason: CloseReason, *, by: str, detail: str | None = None
    ) -> AccessState:
        current = self.state_file.load()
        if current.status == AccessStatus.CLOSED:
            return current
        if current.status == AccessStatus.CLOSING:
            intent = current  # finish the interrupted close with its original reason
        else:
            intent = current.closing(reason, self.clock.now(), detail)
        self.state_file.save(intent)
        report = self.machine.close(current.account or self.config.support_account)
        closed = intent.closed(report.notes)
        why = intent.close_reason or reason
        if current.key and why in SPENDING_REASONS:
            # The relay must learn that this key is spent; the agent tells it (now, if
            # it holds the tether; else when it next runs) and then forgets the key.
            closed = replace(closed, unreported_key=current.key)
        self.state_file.save(closed)
        could_not: dict[str, FieldValue] = (
            {"could_not": [note[:400] for note in report.notes]} if report.notes else {}
        )
        self.audit.append(
            "access.closed",
            by=by,
            reason=why.value,
            detail=intent.close_detail,
            grant=current.grant_id,
            sessions_killed=report.sessions_killed,
            account_removed=report.account_removed,
            sshd_reloaded=report.sshd_reloaded,
            **could_not,
        )
        log.event(
            logger,
            "access.closed",
            by=by,
            reason=why.value,
            detail=intent.close_detail,
            sessions=report.sessions_killed,
        )
        return closed

    def spent_reported(self, key: str) -> None:
        """The relay was told that ``key`` is spent: stop keeping it."""
        with state_lock(self._lock_path):
            state = self.state_file.load()
            if state.unreported_key == key:
                self.state_file.save(replace(state, unreported_key=None))

    def expire_if_due(self, now: datetime | None = None) -> AccessState | None:
        """Close access whose expiry has passed; return the new state if it closed."""
        with state_lock(self._lock_path):
            return self._expire_locked(now)

    def _expire_locked(self, now: datetime | None = None) -> AccessState | None:
        state = self.state_file.load()
        moment = now or self.clock.now()
        if state.is_open and state.expires_at is not None and moment >= state.expires_at:
            return self._close_locked(CloseReason.EXPIRED, by="expiry")
        return None

    def recover(self) -> str | None:
        """Repair an interrupted change; say what was done, if anything.

        Whoever changes the state holds the state lock for the whole change, and a
        dead process's lock is released by the kernel. So an ``OPENING`` or
        ``CLOSING`` record seen *under the lock* was left by a process that died.
        """
        with state_lock(self._lock_path):
            state = self.state_file.load()
            if state.status == AccessStatus.OPENING:
                self._close_locked(
                    CloseReason.CRASH_RECOVERY, by="recovery", detail="opening was interrupted"
                )
                return "an interrupted opening of access was undone"
            if state.status == AccessStatus.CLOSING:
                self._close_locked(state.close_reason or CloseReason.CRASH_RECOVERY, by="recovery")
                return "an interrupted closing of access was completed"
            if self._expire_locked() is not None:
                return "access past its expiry was closed"
        return None


def _positive(duration: timedelta) -> timedelta:
    if duration <= timedelta(0):
        raise BadInput("the duration must be longer than zero")
    return duration
