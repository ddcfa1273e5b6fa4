"""The relay: one SSH port for agents' tethers and engineers' jump connections.

Deny by default (asyncssh style): each hook of :class:`_RelayConnection` says yes only
after an explicit check, and every "no" an engineer can hit carries a reason their
``ssh`` prints. Agents log in as :data:`~tether.wire.AGENT_USERNAME` with their machine
key and register a tether key over the control subsystem; engineers log in with a
vendor-CA certificate and may only open ``direct-tcpip`` channels to
``SERIAL:PORT`` of a tethered machine, which the relay carries to the agent as a
``forwarded-tcpip`` channel. The relay never listens on a socket per tether.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import cast

from tether import log
from tether.audit import FieldValue
from tether.certs import RESERVED_NAMES
from tether.clock import SYSTEM_CLOCK, Clock
from tether.config import RelayConfig
from tether.keys import TetherKeyError, parse_key
from tether.protocol import (
    Cancel,
    CaseUpdate,
    ChainHead,
    Closing,
    HeadAnswer,
    HeadQuery,
    LineBuffer,
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
from tether.relay.audit import HEAD_INTERVAL, AuditWriter, HeadChecker, HeadChecks
from tether.relay.batching import Batcher
from tether.relay.limits import RateLimiter, SourceCounter
from tether.relay.requests import CaseWatcher
from tether.relay.routing import (
    AdmissionRefused,
    Registry,
    RouteRefused,
    TetherEntry,
    admit_tether,
)
from tether.sshlib import asyncssh
from tether.store import IssuedKey, MachineRecord, RevocationKind, Store, relay_chain
from tether.store.admission import Admission
from tether.store.records import TetherRecord
from tether.tasks import TaskSet
from tether.tuning import coalesce_writes, quick_acks
from tether.wire import (
    AGENT_USERNAME,
    CHANNEL_MAX_PACKET,
    CHANNEL_WINDOW,
    CONTROL_SUBSYSTEM,
    FORWARD_BIND_HOST,
    RELAY_SERVER_VERSION,
    RELAY_TIME_BANNER,
    TRANSPORT_CIPHERS,
)

logger = logging.getLogger("tether.relay")

_NO_SESSION = (
    "this relay gives no shell or commands; reach a machine with "
    "`ssh -J USER@RELAY tether-support@SERIAL` or `ssh -L 8443:SERIAL:443 USER@RELAY`"
)


class _NullListener(asyncssh.SSHListener):
    """Accepts an agent's tcpip-forward without opening any socket."""

    def __init__(self, port: int) -> None:
        self._port = port

    def get_port(self) -> int:
        return self._port

    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass


@dataclass
class _ChannelStats:
    engineer: str
    serial: str
    port: int
    started: float = field(default_factory=time.monotonic)
    to_machine: int = 0
    to_engineer: int = 0
    logged: bool = False
    #: Registers the channel in the shared store (for "engineers connected" views).
    row: asyncio.Task[int] | None = None
    relay: Relay | None = None

    def opened(self, relay: Relay) -> None:
        self.relay = relay
        self.row = relay._tasks.spawn(
            relay.store.channels.open(
                relay_id=relay.config.relay_id,
                serial=self.serial,
                engineer=self.engineer,
                port=self.port,
                now=relay.clock.now(),
            ),
            f"relay.channel.{self.serial}",
        )

    async def _forget(self, relay: Relay, row: asyncio.Task[int]) -> None:
        await relay.store.channels.close(await row)

    def close(self) -> None:
        if self.logged:
            return
        self.logged = True
        details: dict[str, FieldValue] = {
            "engineer": self.engineer,
            "serial": self.serial,
            "port": self.port,
            "bytes_to_machine": self.to_machine,
            "bytes_to_engineer": self.to_engineer,
            "duration": round(time.monotonic() - self.started, 3),
        }
        if self.row is not None and self.relay is not None:
            self.relay._tasks.spawn(
                self._forget(self.relay, self.row), f"relay.channel_close.{self.serial}"
            )
            self.relay.audit.record("channel.closed", details, log_as="channel.close")
        else:
            logger.info(log.format_event("channel.close", **details))


class _CountingForwarder(asyncssh.SSHForwarder):
    """Pipes one channel to its peer, counting bytes for the channel's log line."""

    def __init__(
        self, stats: _ChannelStats, to_machine: bool, peer: asyncssh.SSHForwarder | None = None
    ) -> None:
        super().__init__(peer)
        self._stats = stats
        self._to_machine = to_machine

    def data_received(self, data: bytes, datatype: int | None = None) -> None:
        if self._to_machine:
            self._stats.to_machine += len(data)
        else:
            self._stats.to_engineer += len(data)
        super().data_received(data, datatype)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # The machine side may have spoken (sshd's banner) before this side existed;
        # SSHForwarder buffers that but never replays it for tunnelled channels.
        peer = self._peer
        if isinstance(peer, _CountingForwarder):
            peer.replay_buffered()

    def replay_buffered(self) -> None:
        if self._peer is None:
            return
        if self._inpbuf:
            data, self._inpbuf = self._inpbuf, b""
            self._peer.write(data)
        if self.was_eof_received():
            self._peer.write_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._stats.close()


class Relay:
    """A relay process: ``await relay.start()``, then ``await relay.aclose()``.

    :param config: the relay's settings (listen address, keys, limits).
    :param store: the shared state (issued keys, revocations, tether registry).
    :param clock: the time source for key validity (injectable for tests).
    """

    def __init__(self, config: RelayConfig, store: Store, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.registry: Registry[_RelayConnection] = Registry()
        self.unauthenticated = 0
        self._engineers: dict[str, set[_RelayConnection]] = {}
        self.connections: set[_RelayConnection] = set()
        #: Keys revoked while this relay ran (closes the revoke-during-register race).
        self.revoked_keys: set[str] = set()
        self.unauthenticated_by_source = SourceCounter(config.max_unauthenticated_per_source)
        self.requests_by_source = RateLimiter(config.requests_per_source_per_hour, 3600.0)
        self._tasks = TaskSet()
        #: Admissions and unregistrations are batched: a relay restart or a network
        #: failure moves thousands of tethers at once (bench/README.md).
        self.admissions: Batcher[Admission, TetherRecord] = Batcher(
            store.tethers.admit_many, self._tasks, "relay.admissions"
        )
        self.departures: Batcher[tuple[str, str], None] = Batcher(
            store.tethers.unregister_many, self._tasks, "relay.departures"
        )
        self._server: asyncssh.SSHAcceptor | None = None
        self._host_key = asyncssh.read_private_key(config.host_key)
        self.engineer_ca = asyncssh.read_public_key(config.engineer_ca)
        self.host_key_fingerprint = self._host_key.get_fingerprint("sha256")
        self._revocation_cursor = 0
        self._closed = asyncio.Event()
        #: The relay's hash-chained audit log (``relay:<relay id>`` in the database).
        self.audit = AuditWriter(store, relay_chain(config.relay_id), clock.now)
        #: Seconds between two checks of one machine's reported audit chain heads.
        self.head_interval = HEAD_INTERVAL
        self.head_checks = HeadChecks()

    @property
    def port(self) -> int:
        """The TCP port the relay listens on (useful when configured with port 0)."""
        if self._server is None:
            raise RuntimeError("relay not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Clear this relay's stale registry rows, start listening and watching."""
        await self.store.tethers.clear_relay(self.config.relay_id)
        await self.store.channels.clear_relay(self.config.relay_id)
        self._revocation_cursor = await self.store.revocations.head()
        self.audit.start()
        host, port = self.config.listen
        self._server = await asyncssh.create_server(
            lambda: _RelayConnection(self),
            host,
            port,
            server_host_keys=[self._host_key],
            server_version=RELAY_SERVER_VERSION,
            login_timeout=self.config.login_timeout,
            keepalive_interval=self.config.keepalive_interval,
            keepalive_count_max=self.config.keepalive_count_max,
            agent_forwarding=False,
            x11_forwarding=False,
            allow_scp=False,
            encoding=None,  # the control channel speaks bytes
            tcp_keepalive=True,
            encryption_algs=list(TRANSPORT_CIPHERS),
            # No GSSAPI: without this asyncssh looks up this host's FQDN (blocking DNS,
            # in a thread) for every connection that logs in.
            gss_host=None,
            window=CHANNEL_WINDOW,
            max_pktsize=CHANNEL_MAX_PACKET,
        )
        self._tasks.spawn(self._watch(), "relay.watch")
        log.event(
            logger,
            "relay.listen",
            relay=self.config.relay_id,
            address=f"{host}:{self.port}",
            host_key=self.host_key_fingerprint,
        )

    async def serve(self) -> None:
        """Start, then run until :meth:`aclose` is called."""
        await self.start()
        await self._closed.wait()

    async def aclose(self) -> None:
        """Stop listening and drop every tether and engineer connection."""
        if self._server is not None:
            self._server.close()
        # Spread the agents' return so the next relay is not met by all of them at once.
        spread = len(self.registry) / self.config.reconnect_rate
        for entry in self.registry:
            entry.link.drop(
                RefusalReason.SHUTDOWN,
                "the relay is shutting down; reconnect later",
                retry_within=spread,
            )
        for conn in list(self.connections):
            conn.close()
        await self.head_checks.aclose()
        await self._tasks.aclose()
        if self._server is not None:
            await self._server.wait_closed()
        await self.audit.aclose()
        self._closed.set()

    # --- engineers ---------------------------------------------------------------

    def engineer_connected(self, name: str, conn: _RelayConnection) -> None:
        self._engineers.setdefault(name, set()).add(conn)

    def engineer_gone(self, name: str, conn: _RelayConnection) -> None:
        conns = self._engineers.get(name)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self._engineers[name]

    # --- revocations and expiry ----------------------------------------------------

    async def _watch(self) -> None:
        """Apply revocations from the shared store as soon as they appear."""
        while True:
            try:
                await self.check_revocations()
            except Exception as exc:  # a database hiccup must not stop the relay
                log.event(logger, "relay.watch_error", level=logging.WARNING, error=str(exc))
            await asyncio.sleep(self.config.poll_interval)

    async def check_revocations(self) -> None:
        for revocation in await self.store.revocations.since(self._revocation_cursor):
            self._revocation_cursor = revocation.id
            if revocation.kind == RevocationKind.KEY:
                self.revoked_keys.add(revocation.subject)
                for entry in self.registry.with_key(revocation.subject):
                    entry.link.drop(
                        RefusalReason.REVOKED, f"the vendor revoked this key: {revocation.reason}"
                    )
            elif revocation.kind == RevocationKind.ENGINEER:
                for conn in list(self._engineers.get(revocation.subject, ())):
                    log.event(
                        logger,
                        "engineer.cut",
                        engineer=revocation.subject,
                        reason=revocation.reason,
                    )
                    conn.close()


class _ControlSession(asyncssh.SSHServerSession[bytes]):
    """The agent's control channel: one ``register``, then relay→agent notices."""

    def __init__(self, owner: _RelayConnection) -> None:
        self._owner = owner
        self._lines = LineBuffer()
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None
        self._registering = False
        self._case: CaseWatcher | None = None

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self._chan = chan

    def subsystem_requested(self, subsystem: str) -> bool:
        return subsystem == CONTROL_SUBSYSTEM

    def data_received(self, data: bytes, datatype: int | None) -> None:
        tasks = self._owner.relay._tasks
        try:
            for line in self._lines.feed(data):
                message = decode_message(line)
                if isinstance(message, SealedPassword):
                    self._owner.store_sealed_password(message)
                elif isinstance(message, ChainHead | HeadAnswer):
                    self._owner.audit_message(message)
                elif isinstance(message, Cancel) and self._case is not None:
                    tasks.spawn(self._case.cancel(), f"relay.cancel.{self._owner.peer}")
                elif self._registering:
                    raise ProtocolError("one register or request per connection")
                elif isinstance(message, Register):
                    self._registering = True
                    tasks.spawn(
                        self._owner.register(message, self), f"relay.register.{self._owner.peer}"
                    )
                elif isinstance(message, Request) and self._owner.machine_key is not None:
                    self._registering = True
                    if not self._owner.relay.requests_by_source.allow(
                        self._owner.source, time.monotonic()
                    ):
                        self._owner.refuse(
                            RefusalReason.PROTOCOL,
                            "too many support requests from this address; try again later",
                            self,
                        )
                        return
                    self._owner.request_started()
                    self._case = CaseWatcher(
                        self._owner.relay.store,
                        self._owner.relay.clock.now,
                        self._owner.machine_key,
                        self.send,
                    )
                    tasks.spawn(
                        self._serve_request(self._case, message),
                        f"relay.request.{self._owner.peer}",
                    )
                else:
                    raise ProtocolError("expected a register or request message")
        except ProtocolError as exc:
            self._owner.refuse(RefusalReason.PROTOCOL, str(exc), self)

    async def _serve_request(self, case: CaseWatcher, message: Request) -> None:
        try:
            await case.run(message)
        except AdmissionRefused as refusal:
            self._owner.refuse(refusal.reason, refusal.message, self)
            return
        self._owner.close()

    def send(self, message: RefusedMessage | Registered | Closing | CaseUpdate | HeadQuery) -> None:
        if self._chan is not None:
            self._chan.write(encode(message))

    def connection_lost(self, exc: Exception | None) -> None:
        # The agent closed its control channel: its tether (or request) ends with it.
        if self._case is not None and not self._case.done:
            self._owner.relay._tasks.spawn(self._case.cancel(), f"relay.cancel.{self._owner.peer}")
        self._owner.close()


class _RelayConnection(asyncssh.SSHServer):
    """One client connection: an agent or an engineer, decided at authentication."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.conn: asyncssh.SSHServerConnection | None = None
        self.peer = "?"
        self.username = ""
        self.role: str | None = None  # "agent" | "engineer" once known
        self.authenticated = False
        self.machine_key: str | None = None
        self.entry: TetherEntry[_RelayConnection] | None = None
        self.control: _ControlSession | None = None
        self.heads: HeadChecker | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._register_deadline: asyncio.TimerHandle | None = None
        self._closing = False
        self._password_received = False
        self.certificate_valid_before: float | None = None
        self.source = "?"
        self._counted = False
        self._cert_expiry: asyncio.TimerHandle | None = None

    # --- connection lifecycle --------------------------------------------------------

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        coalesce_writes(conn)
        quick_acks(conn)
        self.relay.connections.add(self)
        peer = conn.get_extra_info("peername") or ("?", 0)
        self.peer = f"{peer[0]}:{peer[1]}"
        self.source = str(peer[0])
        self.relay.unauthenticated += 1
        self._capture_certificate(conn)
        self._counted = self.relay.unauthenticated_by_source.admit(self.source)
        if not self._counted or self.relay.unauthenticated > self.relay.config.max_unauthenticated:
            log.event(logger, "relay.busy", level=logging.WARNING, peer=self.peer)
            conn.disconnect(
                asyncssh.DISC_TOO_MANY_CONNECTIONS, "too many connections waiting to log in; retry"
            )

    def _capture_certificate(self, conn: asyncssh.SSHServerConnection) -> None:
        """Remember when the engineer's certificate ends, to close the connection then.

        asyncssh checks a certificate's validity at login only and hands the
        certificate to no public hook, so its validation step is wrapped here
        (tests/integration/relay/test_admission.py fails if this stops working).
        """
        original = conn._validate_openssh_certificate

        async def validate(username: str, cert: asyncssh.SSHCertificate) -> asyncssh.SSHKey | None:
            key = await original(username, cert)  # type: ignore[arg-type]
            valid_before = getattr(cert, "_valid_before", None)
            if key is not None and isinstance(valid_before, int):
                self.certificate_valid_before = float(valid_before)
            return key

        conn._validate_openssh_certificate = validate  # type: ignore[method-assign]

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self.relay.unauthenticated_by_source.release(self.source)

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.connections.discard(self)
        self._uncount()
        if not self.authenticated:
            self.relay.unauthenticated -= 1
        for timer in (self._expiry, self._register_deadline, self._cert_expiry):
            if timer is not None:
                timer.cancel()
        if self.role == "engineer":
            self.relay.engineer_gone(self.username, self)
        if self.heads is not None:
            self.heads.stop()
        if self.entry is not None and self.relay.registry.remove(self.entry):
            entry = self.entry
            down: dict[str, FieldValue] = {
                "serial": entry.serial,
                "key_id": entry.key_id,
                "machine": entry.machine_key,
                "duration": (self.relay.clock.now() - entry.connected_at).total_seconds(),
                "reason": str(exc)[:200] if exc else "closed",
            }
            self.relay.audit.record("tether.down", down, log_as="tether.down")
            self.relay._tasks.spawn(
                self.relay.departures.submit((entry.serial, self.relay.config.relay_id)),
                f"relay.unregister.{entry.serial}",
            )

    def close(self) -> None:
        if self.conn is not None and not self._closing:
            self._closing = True
            self.conn.close()

    def drop(self, reason: RefusalReason, message: str, *, retry_within: float = 0.0) -> None:
        """Tell the agent why (and when to come back), then end its tether and channels."""
        if self.control is not None:
            self.control.send(Closing(reason, message, retry_within))
        if self.entry is not None:
            log.event(logger, "tether.drop", serial=self.entry.serial, reason=reason.value)
        self.close()

    def refuse(self, reason: RefusalReason, message: str, control: _ControlSession) -> None:
        log.event(
            logger,
            "tether.refused",
            level=logging.WARNING,
            peer=self.peer,
            machine=self.machine_key,
            reason=reason.value,
        )
        control.send(RefusedMessage(reason, message))
        self.close()

    # --- authentication -----------------------------------------------------------------

    async def begin_auth(self, username: str) -> bool:
        self.username = username
        if username == AGENT_USERNAME:
            self.role = "agent"
            if self.conn is not None:
                # Agents compare clocks with the relay (`tether access check`).
                self.conn.send_auth_banner(
                    f"{RELAY_TIME_BANNER}{self.relay.clock.now().isoformat()}\n"
                )
        elif username not in RESERVED_NAMES:
            engineer = await self.relay.store.engineers.get(username)
            if engineer is not None and engineer.active:
                self.role = "engineer"
        if self.role is None:
            log.event(
                logger, "login.refused", level=logging.WARNING, peer=self.peer, user=username[:64]
            )
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        # An agent is whoever holds its machine key; the tether key decides the rest.
        if self.role == "agent" and username == AGENT_USERNAME:
            self.machine_key = key.get_fingerprint("sha256")
            return True
        return False

    def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return (
            self.role == "engineer"
            and username == self.username
            and key.public_data == self.relay.engineer_ca.public_data
        )

    def auth_completed(self) -> None:
        self.authenticated = True
        self.relay.unauthenticated -= 1
        self._uncount()
        if self.role == "engineer":
            self.relay.engineer_connected(self.username, self)
            log.event(logger, "engineer.login", engineer=self.username, peer=self.peer)
            if self.certificate_valid_before is None:
                self.close()  # engineers only ever authenticate with a certificate
                return
            loop = asyncio.get_running_loop()
            self._cert_expiry = loop.call_later(
                max(0.0, self.certificate_valid_before - time.time()), self._certificate_expired
            )
            # A revocation processed between begin_auth and now found nothing to cut.
            self.relay._tasks.spawn(self._recheck_engineer(), f"relay.recheck.{self.username}")
        elif self.role == "agent":
            loop = asyncio.get_running_loop()
            self._register_deadline = loop.call_later(
                self.relay.config.register_timeout, self._register_timed_out
            )

    def _certificate_expired(self) -> None:
        log.event(logger, "engineer.cert_expired", engineer=self.username, peer=self.peer)
        self.close()

    async def _recheck_engineer(self) -> None:
        engineer = await self.relay.store.engineers.get(self.username)
        if engineer is None or not engineer.active:
            log.event(
                logger, "engineer.cut", engineer=self.username, reason="disabled during login"
            )
            self.close()

    def request_started(self) -> None:
        """A one-click request may wait for a human: no registration deadline then."""
        if self._register_deadline is not None:
            self._register_deadline.cancel()

    def _register_timed_out(self) -> None:
        if self.entry is None:
            log.event(logger, "tether.refused", peer=self.peer, reason="register-timeout")
            self.close()

    # --- agents -------------------------------------------------------------------------

    def session_requested(self) -> _ControlSession:
        if self.role == "agent" and self.control is None:
            self.control = _ControlSession(self)
            return self.control
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, _NO_SESSION)

    async def register(self, message: Register, control: _ControlSession) -> None:
        """Check the presented tether key and, if it is good, register the tether."""
        if self.machine_key is None:
            return
        now = self.relay.clock.now()
        machine_key = self.machine_key
        relay = self.relay
        first_use = False

        def check_key(issued: IssuedKey | None) -> None:
            nonlocal first_use
            admit_tether(claims, issued, machine_key, now)
            # The admission binds an unused key to this machine at ``now``.
            first_use = issued is not None and issued.first_used_at == now
            if claims.key_id in relay.revoked_keys:
                raise AdmissionRefused(RefusalReason.REVOKED, "this key was revoked by the vendor")
            previous = relay.registry.get(claims.serial)
            if previous is not None and previous.machine_key != machine_key:
                raise AdmissionRefused(
                    RefusalReason.OTHER_MACHINE,
                    f"machine {claims.serial} is tethered by another machine right now",
                )

        def check_owner(owner: MachineRecord) -> None:
            # A serial belongs to one machine (trust on first use, case-insensitive),
            # so no other machine can take over its route, with any key.
            if owner.machine_key is not None and owner.machine_key != machine_key:
                raise AdmissionRefused(
                    RefusalReason.OTHER_MACHINE,
                    f"serial {claims.serial} is registered to another machine; the vendor "
                    "must re-bind it before this machine can tether",
                )

        try:
            try:
                claims = parse_key(message.key, relay.config.vendor_keys, now=now)
            except TetherKeyError as exc:
                raise AdmissionRefused(RefusalReason(exc.reason), str(exc)) from None
            # Key check, first-use bindings and the registry row: one transaction, so
            # a refused tether changes nothing and a revocation cannot slip in between.
            await relay.admissions.submit(
                Admission(
                    key_id=claims.key_id,
                    serial=claims.serial,
                    machine_key=machine_key,
                    relay_id=relay.config.relay_id,
                    relay_address=relay.config.advertise,
                    now=now,
                    check_key=check_key,
                    check_owner=check_owner,
                )
            )
        except AdmissionRefused as refusal:
            self.refuse(refusal.reason, refusal.message, control)
            return
        if self._closing or claims.key_id in relay.revoked_keys:
            # Closed or revoked while the transaction ran: take the row back out.
            relay._tasks.spawn(
                relay.departures.submit((claims.serial, relay.config.relay_id)),
                f"relay.unregister.{claims.serial}",
            )
            if not self._closing:
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
        self.entry = entry
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
            Registered(claims.serial, claims.expires_at.isoformat(), claims.ports, audit_heads=True)
        )
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
        self._audit_up(claims.key_id, first_use=first_use)

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
        self.relay._tasks.spawn(
            self.relay.store.passwords.put(
                key_id=entry.key_id, serial=entry.serial, sealed=message.sealed, now=now
            ),
            f"relay.password.{entry.serial}",
        )
        log.event(logger, "password.sealed_received", serial=entry.serial, key=entry.key_id)

    def server_requested(self, listen_host: str, listen_port: int) -> _NullListener | bool:
        if self.role == "agent" and self.entry is not None and self.entry.may_offer(listen_port):
            self.entry.offered_ports.add(listen_port)
            return _NullListener(listen_port)
        log.event(logger, "forward.refused", user=self.username[:64], port=listen_port)
        return False

    # --- engineers ----------------------------------------------------------------------

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Awaitable[asyncssh.SSHTCPSession[bytes]]:
        if self.role != "engineer":
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "forwarding is for engineers only"
            )
        try:
            entry = self.relay.registry.route(dest_host, dest_port)
        except RouteRefused as refusal:
            log.event(
                logger,
                "channel.refused",
                engineer=self.username,
                host=dest_host[:80],
                port=dest_port,
                reason=str(refusal),
            )
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, str(refusal)
            ) from None
        return self._bridge(entry, dest_port)

    async def _bridge(
        self, entry: TetherEntry[_RelayConnection], port: int
    ) -> asyncssh.SSHTCPSession[bytes]:
        # SSHForwarder is asyncssh's own channel-to-channel pipe; it speaks the
        # SSHTCPSession protocol without being declared one, hence the casts.
        stats = _ChannelStats(self.username, entry.serial, port)
        agent = entry.link.conn
        if agent is None:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "the tether just closed")
        try:
            _, upstream = await agent.create_connection(
                lambda: cast(
                    asyncssh.SSHTCPSession[bytes], _CountingForwarder(stats, to_machine=False)
                ),
                FORWARD_BIND_HOST,
                port,
                self.username,
                0,
                window=CHANNEL_WINDOW,
                max_pktsize=CHANNEL_MAX_PACKET,
            )
        except asyncssh.ChannelOpenError as exc:
            log.event(
                logger, "channel.failed", engineer=self.username, serial=entry.serial, port=port
            )
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_CONNECT_FAILED,
                f"machine {entry.serial} could not open port {port}: {exc.reason}",
            ) from None
        log.event(logger, "channel.open", engineer=self.username, serial=entry.serial, port=port)
        self.relay.audit.write(
            "channel.opened", engineer=self.username, serial=entry.serial, port=port
        )
        stats.opened(self.relay)
        down = _CountingForwarder(
            stats, to_machine=True, peer=cast(asyncssh.SSHForwarder, upstream)
        )
        return cast(asyncssh.SSHTCPSession[bytes], down)
