"""The agent's outbound tether: one SSH connection to the relay named in the key.

The agent logs in with its machine key, checks the relay's host key against the
fingerprint pinned in the tether key, registers the key on the control subsystem and
asks the relay to forward the allowed ports. Each forwarded channel is connected to
``127.0.0.1:PORT`` on this machine and nowhere else. The connection goes the first way
that works of those ``[network]`` allows (:func:`~tether.agent.reach.connect_any`), the
one that last worked first; :attr:`Tunnel.status` names it.

If the connection drops for a reason that may pass (network, relay restart), the
tunnel reconnects after an exponential backoff with full jitter (capped, 60 s by
default) and logs ``reconnecting in N s (reason)``. If the relay refuses the key for a
reason that cannot pass (revoked, expired, used by another machine), the tunnel stops
and reports it so that access is closed.

While the tether is up, the agent reports its audit log's head (seq and hash of the last
entry) to the relay: at once, whenever it changes (checked every few seconds) and at
least once a minute; and it answers the relay's questions about the hash of an earlier
entry, so that the vendor notices a log rewritten on the machine.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import cast

from tether import log
from tether.agent.network import Carrier, TransportKind
from tether.agent.reach import NoWayToRelay, PinnedClient, connect_any, describe_error
from tether.agent.status import TunnelState, TunnelStatus
from tether.audit_log import AuditLog
from tether.clock import SYSTEM_CLOCK, Clock
from tether.config import TetherSettings
from tether.errors import ConfigError
from tether.keys import TetherKeyClaims
from tether.protocol import (
    PERMANENT_REASONS,
    AccessClosed,
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
    SealedPassword,
    decode,
    encode,
)
from tether.protocol import Refused as RefusedMessage
from tether.sshlib import asyncssh
from tether.tasks import TaskSet
from tether.wire import (
    CONTROL_SUBSYSTEM,
    FORWARD_BIND_HOST,
    MACHINE_LOOPBACK,
    PROTOCOL_VERSION,
)

logger = logging.getLogger("tether.agent.tunnel")


def backoff_delay(
    attempt: int, *, initial: float, cap: float, rng: random.Random, window: float = 0.0
) -> float:
    """Full-jitter exponential backoff: uniform in [0, max(window, min(cap, initial·2^attempt))].

    ``window`` is a relay's "come back within W s": it widens the draw so that agents
    return spread over it, but never narrows it below the backoff, so a tiny window
    (a relay with few tethers) cannot turn retries into a tight loop.
    """
    ceiling = max(window, min(cap, initial * (2 ** min(attempt, 32))))
    return rng.uniform(0, ceiling)


class TetherRefused(Exception):
    """The relay refused this key for good (or the agent's own check failed)."""

    def __init__(self, reason: RefusalReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class _Transient(Exception):
    """A failure worth retrying after a backoff (or within ``retry_within`` seconds)."""

    def __init__(self, message: str, retry_within: float = 0.0) -> None:
        super().__init__(message)
        self.retry_within = retry_within


#: What a relay may say to an agent.
RelayMessage = Registered | RefusedMessage | Closing | CaseUpdate | HeadQuery


class ControlClient(asyncssh.SSHClientSession[bytes]):
    """The agent's end of the control channel: queues what the relay says (None = closed)."""

    def __init__(self) -> None:
        self.lines = LineBuffer()
        self.messages: asyncio.Queue[RelayMessage | None] = asyncio.Queue()

    def data_received(self, data: bytes, datatype: int | None) -> None:
        try:
            for line in self.lines.feed(data):
                message = decode(line)
                if not isinstance(
                    message, (Registered, RefusedMessage, Closing, CaseUpdate, HeadQuery)
                ):
                    raise ProtocolError("relay sent an agent's message")
                self.messages.put_nowait(message)
        except ProtocolError as exc:
            log.event(logger, "tether.protocol_error", level=logging.WARNING, error=str(exc))
            self.messages.put_nowait(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.messages.put_nowait(None)


class Tunnel:
    """Holds one tether until stopped or refused.

    :param key_text: the tether key exactly as stored (sent to the relay to register).
    :param claims: the key's claims, already verified offline by the agent.
    :param machine_key: the agent's private machine key.
    :param ports: the ports to offer (the key's ports that the customer allows).
    :param on_change: called with every new :class:`TunnelStatus`.
    :param sealed_password: the support password sealed to the vendor, sent once registered.
    :param password_withdrawn: no sealed password any more: tell the relay to forget it.
    :param limits: what the grant allows, in words, told to the relay for the vendor
        console (``()``: nothing limited; None: not told).
    :param audit: the machine's audit log, whose head is reported to the relay.
    :param head_check: seconds between two looks at the audit log's head.
    :param head_refresh: seconds after which an unchanged head is reported again.
    """

    def __init__(
        self,
        key_text: str,
        claims: TetherKeyClaims,
        machine_key: asyncssh.SSHKey,
        ports: tuple[int, ...],
        settings: TetherSettings,
        *,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        on_change: Callable[[TunnelStatus], None] | None = None,
        sealed_password: str | None = None,
        password_withdrawn: bool = False,
        limits: tuple[str, ...] | None = None,
        audit: AuditLog | None = None,
        head_check: float = 5.0,
        head_refresh: float = 60.0,
    ) -> None:
        self._key_text = key_text
        self._claims = claims
        self._machine_key = machine_key
        self._ports = ports
        self._settings = settings
        self._clock = clock
        self._rng = rng or random.Random()
        self._on_change = on_change
        self._sealed_password = sealed_password
        self._password_withdrawn = password_withdrawn
        self._limits = limits
        self._audit = audit
        self._head_check = head_check
        self._head_refresh = head_refresh
        self._tasks = TaskSet()
        self._conn: asyncssh.SSHClientConnection | None = None
        self._control: asyncssh.SSHClientChannel[bytes] | None = None
        self._wake = asyncio.Event()
        self._stopped = False
        #: The way to the relay that last carried the tether (tried first next time).
        self._worked: TransportKind | None = None
        self._carrier: Carrier | None = None
        self.status = TunnelStatus(TunnelState.CONNECTING, claims.relay, clock.now(), ports=ports)

    def _set(self, status: TunnelStatus) -> None:
        self.status = status
        if self._on_change is not None:
            self._on_change(status)

    async def serve(self) -> TetherRefused | None:
        """Hold the tether; return the refusal that ended it, or None if stopped."""
        attempt = 0
        # A relay going down says within how long to come back; that holds for every
        # attempt until one succeeds (attempts while it is still down must not fall back
        # to short backoffs and all meet it the moment it is up again).
        spread = 0.0
        while not self._stopped:
            self._set(
                TunnelStatus(
                    TunnelState.CONNECTING, self._claims.relay, self._clock.now(), ports=self._ports
                )
            )
            hint = 0.0
            try:
                await self._run_once()
                reason = "connection closed"
                attempt = 0 if self.status.state == TunnelState.CONNECTED else attempt
            except TetherRefused as refusal:
                self._set(
                    replace(
                        self.status,
                        state=TunnelState.REFUSED,
                        reason=refusal.message,
                        since=self._clock.now(),
                    )
                )
                log.event(
                    logger,
                    "tether.refused",
                    level=logging.WARNING,
                    reason=refusal.reason.value,
                    message=refusal.message,
                )
                return refusal
            except _Transient as exc:
                reason = str(exc)
                hint = exc.retry_within
            except (TimeoutError, OSError, asyncssh.Error) as exc:
                reason = describe_error(exc, self._claims.relay)
            if self._stopped:
                break
            was_connected = self.status.state == TunnelState.CONNECTED
            if was_connected:
                attempt = 0
                # A new drop: the relay's hint decides; an unannounced one (the relay
                # died) spreads the return over reconnect_spread.
                spread = hint or self._settings.reconnect_spread
            elif hint:
                spread = hint
            delay = backoff_delay(
                attempt,
                initial=self._settings.backoff_initial,
                cap=self._settings.backoff_cap,
                rng=self._rng,
                window=spread,
            )
            attempt += 1
            now = self._clock.now()
            retry_at = now + _seconds(delay)
            self._set(
                TunnelStatus(
                    TunnelState.RECONNECTING, self._claims.relay, now, retry_at, reason, self._ports
                )
            )
            log.event(
                logger, "tether.reconnecting", message=f"reconnecting in {delay:.1f} s ({reason})"
            )
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
                attempt, spread = 0, 0.0  # an explicit reset reconnects now, backoff anew
            except TimeoutError:
                pass
        self._set(TunnelStatus(TunnelState.STOPPED, self._claims.relay, self._clock.now()))
        return None

    async def _connect(self, client: PinnedClient) -> tuple[asyncssh.SSHClientConnection, Carrier]:
        """Log in over the way that last worked, else the first that works now."""
        try:
            conn, carrier, failures = await connect_any(
                self._claims.relay, client, self._machine_key, self._settings, first=self._worked
            )
        except (NoWayToRelay, ConfigError) as exc:
            raise _Transient(str(exc)) from None
        for failure in failures:
            log.event(logger, "tether.transport_failed", reason=failure)
        if self._worked != carrier.kind:
            log.event(logger, "tether.transport", transport=carrier.describe())
        self._worked = carrier.kind
        if self._stopped:
            conn.close()
        return conn, carrier

    async def _run_once(self) -> None:
        client = PinnedClient(self._claims.relay_host_key)
        try:
            conn, carrier = await self._connect(client)
        except asyncssh.HostKeyNotVerifiable:
            raise _Transient(
                f"relay host key {client.mismatch} is not the one pinned by the key "
                f"({self._claims.relay_host_key})"
            ) from None
        self._conn = conn
        self._carrier = carrier
        try:
            if self._stopped:
                return
            await self._register(conn)
            await conn.wait_closed()
        finally:
            self._conn = None
            conn.close()

    async def _register(self, conn: asyncssh.SSHClientConnection) -> None:
        chan, session = await conn.create_session(
            ControlClient, subsystem=CONTROL_SUBSYSTEM, encoding=None
        )
        control = cast(ControlClient, session)
        chan.write(encode(Register(self._key_text, PROTOCOL_VERSION)))
        try:
            reply = await asyncio.wait_for(
                control.messages.get(), timeout=self._settings.connect_timeout
            )
        except TimeoutError:
            raise _Transient("the relay did not answer the registration") from None
        if isinstance(reply, RefusedMessage):
            if reply.reason in PERMANENT_REASONS:
                raise TetherRefused(reply.reason, reply.message)
            raise _Transient(f"relay refused for now: {reply.message}")
        if not isinstance(reply, Registered):
            raise _Transient("the relay closed the control channel")
        if self._sealed_password is not None:
            # Only the vendor can open it; the relay just stores it for the vendor service.
            chan.write(encode(SealedPassword(self._claims.key_id, self._sealed_password)))
        elif self._password_withdrawn:
            # The customer chose their own: the vendor's copy no longer works.
            chan.write(encode(PasswordWithdrawn(self._claims.key_id)))
        if self._limits is not None and reply.grant_limits:
            # For the vendor console: the engineer knows before connecting.
            chan.write(encode(GrantLimits(self._claims.key_id, self._limits)))
        offered = []
        for port in self._ports:
            try:
                await conn.forward_remote_port(FORWARD_BIND_HOST, port, MACHINE_LOOPBACK, port)
                offered.append(port)
            except asyncssh.ChannelListenError:
                log.event(logger, "tether.port_refused", level=logging.WARNING, port=port)
        if not offered:
            raise _Transient("the relay accepted none of this machine's ports")
        over = None if self._carrier is None else self._carrier.describe()
        self._set(
            TunnelStatus(
                TunnelState.CONNECTED,
                self._claims.relay,
                self._clock.now(),
                ports=self._ports,
                transport=over,
            )
        )
        log.event(
            logger,
            "tether.up",
            relay=self._claims.relay,
            serial=self._claims.serial,
            ports=self._ports,
            transport=over or "",
            tls_issuer="" if self._carrier is None else self._carrier.tls_issuer,
        )
        reporter = (
            self._tasks.spawn(self._report_heads(chan, self._audit), "tether.heads")
            if self._audit is not None and reply.audit_heads
            else None
        )
        self._control = chan
        try:
            await self._listen(chan, control)
        finally:
            self._control = None
            if reporter is not None:
                reporter.cancel()

    async def _listen(self, chan: asyncssh.SSHClientChannel[bytes], control: ControlClient) -> None:
        """Listen for the relay's notices and questions until the channel closes."""
        while True:
            message = await control.messages.get()
            if message is None:
                raise _Transient("the relay closed the tether")
            if isinstance(message, HeadQuery):
                if self._audit is not None:
                    digest = await asyncio.to_thread(self._audit.entry_hash, message.seq)
                    chan.write(encode(HeadAnswer(message.seq, digest)))
                continue
            if isinstance(message, Closing):
                log.event(
                    logger, "tether.closing", reason=message.reason.value, message=message.message
                )
                if message.reason in PERMANENT_REASONS:
                    raise TetherRefused(message.reason, message.message)
                raise _Transient(message.message, message.retry_within)

    async def _report_heads(self, chan: asyncssh.SSHClientChannel[bytes], audit: AuditLog) -> None:
        """Report the audit log's head now, when it changes, and at least every refresh."""
        last: tuple[int, str] | None = None
        sent_at = 0.0
        while True:
            try:
                head = await asyncio.to_thread(audit.head)
            except OSError as exc:
                log.event(logger, "tether.audit_unreadable", level=logging.WARNING, error=str(exc))
            else:
                if head != last or time.monotonic() - sent_at >= self._head_refresh:
                    try:
                        chan.write(encode(ChainHead(*head)))
                    except BrokenPipeError:
                        return  # the tether is going down; the listener ends it
                    last, sent_at = head, time.monotonic()
            await asyncio.sleep(self._head_check)

    @property
    def key_id(self) -> str:
        """The id of the key this tether presents."""
        return self._claims.key_id

    def reset(self) -> None:
        """Drop the current connection (if any) and reconnect now."""
        self._wake.set()
        if self._conn is not None:
            self._conn.close()

    async def aclose(self, *, closed: str | None = None) -> bool:
        """Stop for good: the connection, and every channel through it, ends now.

        :param closed: the machine closed the access this key opened (disable, expiry):
            tell the relay first, so that it counts the key as spent.
        :returns: whether the relay was told (the tether was up to say it).
        """
        self._stopped = True
        self._wake.set()
        told = closed is not None and _say_closed(self._control, self._claims.key_id, closed)
        if self._conn is not None:
            self._conn.close()
            await self._conn.wait_closed()
        return told


def _say_closed(control: asyncssh.SSHClientChannel[bytes] | None, key_id: str, reason: str) -> bool:
    """Send ``access-closed`` (then EOF, so it arrives before the disconnect)."""
    if control is None:
        return False
    try:
        control.write(encode(AccessClosed(key_id, reason)))
        control.write_eof()
    except (BrokenPipeError, asyncssh.Error, OSError):
        return False  # the tether is gone already
    return True


async def report_spent(
    key_text: str,
    claims: TetherKeyClaims,
    machine_key: asyncssh.SSHKey,
    settings: TetherSettings,
    reason: str,
) -> bool:
    """Tell the relay that a key whose access closed while no tether was up is spent.

    The agent registers the key once more (the same machine: no new use), offers no
    port, says ``access-closed`` and hangs up. Returns True once the relay knows, or
    refuses the key for good anyway (revoked, expired, already spent); False if it
    could not be reached (try again later).
    """
    client = PinnedClient(claims.relay_host_key)
    try:
        conn, _, _ = await connect_any(claims.relay, client, machine_key, settings, keepalive=False)
    except (asyncssh.HostKeyNotVerifiable, NoWayToRelay, ConfigError):
        return False
    try:
        chan, session = await conn.create_session(
            ControlClient, subsystem=CONTROL_SUBSYSTEM, encoding=None
        )
        control = cast(ControlClient, session)
        chan.write(encode(Register(key_text, PROTOCOL_VERSION)))
        reply = await asyncio.wait_for(control.messages.get(), settings.connect_timeout)
        if isinstance(reply, RefusedMessage):
            return reply.reason in PERMANENT_REASONS
        if not isinstance(reply, Registered):
            return False
        told = _say_closed(chan, claims.key_id, reason)
        if told:  # the relay hangs up once it has read it
            await asyncio.wait_for(control.messages.get(), settings.connect_timeout)
        return told
    except (TimeoutError, OSError, asyncssh.Error):
        return False
    finally:
        conn.close()
        await conn.wait_closed()


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)
