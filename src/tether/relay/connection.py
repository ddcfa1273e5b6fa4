"""One client connection to the relay, before and after it says who it is.

Deny by default (asyncssh style): each hook of :class:`RelayConnection` says yes only
after an explicit check. Until authentication the connection is counted against the
relay's limits on unauthenticated connections. ``begin_auth`` decides the role from the
user name — :data:`~tether.wire.AGENT_USERNAME` makes an agent
(:class:`~tether.relay.tethers.TetherLink`), :data:`~tether.wire.PEER_USERNAME` another
relay of the fleet (:class:`~tether.relay.peering.PeerSession`, only with the fleet's
peer key, never a certificate), the name of an active engineer an engineer
(:class:`~tether.relay.engineers.EngineerLink`, only with a certificate) — and every
later hook is handed to that role, or refused with a reason the client's ``ssh`` prints.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from tether import log
from tether.certs import RESERVED_NAMES
from tether.relay.door import Slot
from tether.relay.engineers import EngineerLink
from tether.relay.forwarding import NullListener
from tether.relay.peering import PeerSession
from tether.relay.tethers import ControlSession, TetherLink
from tether.sshlib import asyncssh
from tether.tuning import coalesce_writes, quick_acks, skip_ignore_packets
from tether.wire import AGENT_USERNAME, PEER_USERNAME, RELAY_TIME_BANNER

if TYPE_CHECKING:
    from tether.relay.server import Relay

logger = logging.getLogger("tether.relay")

_NO_SESSION = (
    "this relay gives no shell or commands; reach a machine with "
    "`ssh -J USER@RELAY tether-support@SERIAL` or `ssh -L 8443:SERIAL:443 USER@RELAY`"
)


class RelayConnection(asyncssh.SSHServer):
    """One client connection: an agent or an engineer, decided at authentication."""

    def __init__(self, relay: Relay, *, peers_only: bool = False) -> None:
        self.relay = relay
        #: On the relay-to-relay port (``peer_listen``): nobody but a peer relay logs in.
        self.peers_only = peers_only
        self.conn: asyncssh.SSHServerConnection | None = None
        self.peer = "?"
        self.source = "?"
        self.username = ""
        #: The role, once ``begin_auth`` knows it (None: refused whatever it presents).
        self.link: TetherLink | EngineerLink | PeerSession | None = None
        self.authenticated = False
        self.closing = False
        self.certificate_valid_before: float | None = None
        self.certificate_key_id: str | None = None
        #: When the TCP connection was accepted (``time.monotonic()``): the start of the
        #: handshake a tether's admission completes.
        self.accepted = time.monotonic()
        #: Its slot in the pre-auth gate, taken at accept (relay/door.py).
        self.admission: Slot | None = None
        #: When the client finished its key exchange and named its user (``begin_auth``).
        self.kex_done: float | None = None

    # --- connection lifecycle --------------------------------------------------------

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        # Behind HAProxy the TCP accept came before the PROXY header (relay._hand_off).
        accepted = conn.get_extra_info("accepted")
        self.accepted = accepted if isinstance(accepted, float) else time.monotonic()
        coalesce_writes(conn)
        quick_acks(conn)
        skip_ignore_packets(conn)
        self.relay.connections.add(self)
        peer = conn.get_extra_info("peername") or ("?", 0)
        self.peer = f"{peer[0]}:{peer[1]}"
        self.source = str(peer[0])
        self.relay.unauthenticated += 1
        self._capture_certificate(conn)
        # The gate admitted this connection at accept (before TLS or SSH cost anything);
        # from here on it ends it through gate_closed.
        admission = conn.get_extra_info("admission")
        if not isinstance(admission, Slot):  # every listener goes through FrontDoor
            self.closing = True
            conn.abort()
            return
        self.admission = admission
        admission.attach(self)

    def gate_closed(self, why: str) -> None:
        """The gate ended this pending connection (login time over, or evicted)."""
        if self.conn is not None and not self.closing:
            self.closing = True
            self.conn.disconnect(asyncssh.DISC_BY_APPLICATION, why)

    def _capture_certificate(self, conn: asyncssh.SSHServerConnection) -> None:
        """Refuse certificates that name nobody; remember when a good one ends.

        A user certificate with no principals is refused, as OpenSSH's sshd refuses it:
        asyncssh would take it as valid for *any* user name, so a CA-signed certificate
        without ``-n`` would log in as whichever engineer the client names.

        asyncssh checks a certificate's validity at login only and hands the
        certificate to no public hook, so its validation step is wrapped here; the
        relay closes an engineer's connection when the certificate ends
        (tests/integration/relay/test_admission.py fails if this stops working).
        """
        original = conn._validate_openssh_certificate

        async def validate(
            username: str, cert: asyncssh.public_key.SSHOpenSSHCertificate
        ) -> asyncssh.SSHKey | None:
            if not cert.principals:
                log.event(
                    logger,
                    "login.refused",
                    level=logging.WARNING,
                    peer=self.peer,
                    user=username[:64],
                    reason="certificate-without-principals",
                )
                return None
            key = await original(username, cert)
            valid_before = getattr(cert, "_valid_before", None)
            if key is not None and isinstance(valid_before, int):
                self.certificate_valid_before = float(valid_before)
                key_id = getattr(cert, "_key_id", None)
                if isinstance(key_id, str):
                    self.certificate_key_id = key_id[:128]
            return key

        conn._validate_openssh_certificate = validate  # type: ignore[method-assign]

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.connections.discard(self)
        if not self.authenticated:
            self.relay.unauthenticated -= 1
            if self.admission is not None:
                self.admission.lost()  # no-op if the gate ended it
        if isinstance(self.link, EngineerLink | PeerSession):
            self.link.lost()
        elif isinstance(self.link, TetherLink):
            self.link.lost(exc)

    def close(self) -> None:
        if self.conn is not None and not self.closing:
            self.closing = True
            self.conn.close()

    # --- authentication -----------------------------------------------------------------

    async def begin_auth(self, username: str) -> bool:
        self.username = username
        self.kex_done = time.monotonic()
        if self.admission is not None:
            self.admission.progressed()  # key exchange done: no longer stalled
        if self.peers_only or username == PEER_USERNAME:
            # With a relay-to-relay port, peers log in there only, and only peers do.
            on_peer_port = self.peers_only or self.relay.config.peer_listen is None
            if username == PEER_USERNAME and self.relay.peers is not None and on_peer_port:
                self.link = PeerSession(self)
        elif username == AGENT_USERNAME:
            self.link = TetherLink(self)
            if self.conn is not None:
                # Agents compare clocks with the relay (`tether access check`).
                self.conn.send_auth_banner(
                    f"{RELAY_TIME_BANNER}{self.relay.clock.now().isoformat()}\n"
                )
                if self.relay.tls_banner is not None:
                    # Which TLS certificate is ours: the agent tells inspection apart.
                    self.conn.send_auth_banner(self.relay.tls_banner)
        elif username not in RESERVED_NAMES:
            engineer = await self.relay.store.engineers.get(username)
            if engineer is not None and engineer.active:
                self.link = EngineerLink(self, username)
        if self.link is None:
            log.event(
                logger, "login.refused", level=logging.WARNING, peer=self.peer, user=username[:64]
            )
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        # An agent is whoever holds its machine key; the tether key decides the rest.
        if isinstance(self.link, TetherLink) and username == AGENT_USERNAME:
            self.link.machine_key = key.get_fingerprint("sha256")
            return True
        # A peer relay is whoever holds the fleet's peer key, and nothing else is.
        return (
            isinstance(self.link, PeerSession)
            and username == PEER_USERNAME
            and self.relay.peers is not None
            and self.relay.peers.accepts(key)
        )

    def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return (
            isinstance(self.link, EngineerLink)
            and username == self.username
            and key.public_data == self.relay.engineer_ca.public_data
        )

    def auth_completed(self) -> None:
        self.authenticated = True
        self.relay.unauthenticated -= 1
        if self.admission is not None:
            self.admission.authenticated()
        if isinstance(self.link, EngineerLink):
            self.link.authenticated(self.certificate_valid_before)
        elif isinstance(self.link, TetherLink | PeerSession):
            self.link.authenticated()

    # --- what each role may open ----------------------------------------------------------

    def session_requested(self) -> ControlSession:
        if isinstance(self.link, TetherLink):
            control = self.link.open_control()
            if control is not None:
                return control
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, _NO_SESSION)

    def server_requested(self, listen_host: str, listen_port: int) -> NullListener | bool:
        if isinstance(self.link, TetherLink):
            listener = self.link.forward_requested(listen_port)
            if listener is not None:
                return listener
        log.event(logger, "forward.refused", user=self.username[:64], port=listen_port)
        return False

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Awaitable[asyncssh.SSHTCPSession[bytes]]:
        if isinstance(self.link, PeerSession):
            return self.link.open_channel(dest_host, dest_port, orig_host)
        if not isinstance(self.link, EngineerLink):
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "forwarding is for engineers only"
            )
        return self.link.open_channel(dest_host, dest_port)
