"""One relay port for raw SSH, SSH inside TLS, and SSH over a WebSocket (in TLS or not).

With ``tls_certificate`` / ``tls_key`` in relay.toml every connection on ``listen``
(after its PROXY header, behind HAProxy) goes through :class:`Carriers`: its first bytes
pick the layer (:func:`tether.carriers.classify`), TLS is unwrapped with the configured
certificate, an HTTP ``GET`` must be a WebSocket upgrade for ``/tether``, and whatever is
inside must then be SSH, handed to the same asyncssh server as a raw connection. The SSH
inside is unchanged: the relay's host key, pinned by every tether key, is the trust;
TLS only lets the stream through networks that pass nothing but HTTPS.

Every connection holds a slot in the pre-auth gate from accept (:mod:`tether.relay.door`),
whatever its carrier: a connection stalled inside TLS or a WebSocket handshake counts
against its address and block, is evicted and timed out, and earns penalties, as one
stalled inside the SSH key exchange does. It also has at most ``login_timeout`` seconds
to get through its layers to SSH. Refusals are counted per network block in the relay's
refusal summary, never logged one line each.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from pathlib import Path

from tether.carriers import CodecLayer, Kind, LayerError, Sniff, TlsCodec, WebSocketCodec
from tether.errors import ConfigError
from tether.relay.door import Slot
from tether.sshlib import asyncssh

#: Builds the SSH server connection for a client, its carrier and its gate slot
#: (``None``: the relay is draining).
SshFactory = Callable[[tuple[str, int], str, Slot], asyncio.BaseProtocol | None]
#: Counts a refusal: (client address, reason).
Refuse = Callable[[str, str], None]
#: The gate at accept: a slot for (transport, client address), or ``None`` (refused, closed).
Admit = Callable[[asyncio.Transport, str], Slot | None]


def server_context(certificate: Path, key: Path) -> ssl.SSLContext:
    """The relay's TLS server context (TLS 1.2 or later) from PEM files.

    Raises :class:`~tether.errors.ConfigError` naming the file that cannot be used.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(certificate, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot use the TLS certificate {certificate} with key {key}: {exc}"
        ) from None
    return context


class _Pending:
    """One connection on its way to SSH: its layers so far and its deadline."""

    def __init__(
        self, client: tuple[str, int], transport: asyncio.Transport, admission: Slot
    ) -> None:
        self.client = client
        self.transport = transport
        self.admission = admission
        self.layers: tuple[str, ...] = ()
        self.started = False
        self.timer: asyncio.TimerHandle | None = None

    def give_up(self) -> None:
        if not self.started:
            self.transport.abort()

    def lost(self) -> None:
        """Closed before reaching SSH: its gate slot is free (SSH's own loss is SSH's)."""
        if not self.started:
            self.admission.lost()


class _Sniff(Sniff):
    """A :class:`Sniff` that reports a connection lost before its layer was chosen."""

    def __init__(
        self,
        choose: Callable[[str, asyncio.Transport], asyncio.BaseProtocol | None],
        lost: Callable[[], None],
    ) -> None:
        super().__init__(choose)
        self._lost = lost

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._lost()


class Carriers:
    """Takes accepted connections through their layers to the relay's SSH server.

    :param tls: the relay's TLS context; ``None``: TLS is refused (raw SSH and
        WebSocket without TLS only).
    :param ssh: builds the SSH server connection for ``(client, carrier)``.
    :param refuse: counts a refused connection (address, reason).
    :param timeout: seconds a connection may take to reach SSH.
    """

    def __init__(
        self, tls: ssl.SSLContext | None, ssh: SshFactory, refuse: Refuse, timeout: float
    ) -> None:
        self._tls = tls
        self._ssh = ssh
        self._refuse = refuse
        self._timeout = timeout

    def accept(
        self,
        transport: asyncio.Transport,
        client: tuple[str, int],
        rest: bytes,
        admission: Slot,
    ) -> None:
        """Run on ``transport`` (from ``client``, holding ``admission``) what its first
        bytes announce."""
        pending = _Pending(client, transport, admission)
        pending.timer = asyncio.get_running_loop().call_later(self._timeout, pending.give_up)
        sniff = self._sniff(pending)
        transport.set_protocol(sniff)
        sniff.connection_made(transport)
        if rest:
            sniff.data_received(rest)

    def _sniff(self, pending: _Pending) -> Sniff:
        return _Sniff(lambda kind, transport: self._choose(pending, kind, transport), pending.lost)

    def _choose(
        self, pending: _Pending, kind: str, transport: asyncio.Transport
    ) -> asyncio.BaseProtocol | None:
        if kind == Kind.SSH:
            conn = self._ssh(pending.client, "+".join((*pending.layers, "ssh")), pending.admission)
            pending.started = True
            if conn is None:
                pending.admission.withdraw()
                transport.abort()
                return None
            if pending.timer is not None:
                pending.timer.cancel()
            return conn
        if kind == Kind.TLS and self._tls is not None and not pending.layers:
            pending.layers += ("tls",)
            return CodecLayer(
                TlsCodec(self._tls, server_side=True),
                self._sniff(pending),
                failed=lambda exc: self._failed(pending, exc),
            )
        if kind == Kind.HTTP and "websocket" not in pending.layers:
            pending.layers += ("websocket",)
            return CodecLayer(
                WebSocketCodec(),
                self._sniff(pending),
                failed=lambda exc: self._failed(pending, exc),
            )
        reason = "tls-not-configured" if kind == Kind.TLS else "unknown-protocol"
        self._refuse(pending.client[0], reason)
        transport.abort()
        return None

    def _failed(self, pending: _Pending, exc: LayerError) -> None:
        if not pending.started:
            self._refuse(pending.client[0], f"bad-{pending.layers[-1]}")
            pending.lost()


class FrontDoor:
    """Hands connections accepted by our own listener (not asyncssh's) to SSH.

    :param options: the relay's SSH server options.
    :param tls: the TLS context; ``None``: raw SSH only (as ``asyncssh.listen`` would).
    :param admit: the pre-auth gate, asked first about every connection.
    :param draining: whether the relay takes no new connections now.
    :param refuse: counts a connection that never reached SSH (address, reason).
    :param timeout: seconds a connection may take through its layers to SSH.
    """

    def __init__(
        self,
        options: asyncssh.SSHServerConnectionOptions,
        tls: ssl.SSLContext | None,
        *,
        admit: Admit,
        draining: Callable[[], bool],
        refuse: Refuse,
        timeout: float,
    ) -> None:
        self._options = options
        self._admit = admit
        self._draining = draining
        self._carriers = None if tls is None else Carriers(tls, self.new_ssh, refuse, timeout)

    def hand_off(
        self,
        transport: asyncio.Transport,
        client: tuple[str, int],
        rest: bytes,
        accepted: float | None = None,
    ) -> None:
        """Run SSH (or, with TLS, what the first bytes announce) for ``client``.

        ``accepted``: when the TCP connection was accepted (``time.monotonic()``), the
        start of the handshake-duration metric; ``None``: now.
        """
        if self._draining():
            transport.abort()
            return
        admission = self._admit(transport, client[0])
        if admission is None:
            return
        if self._carriers is not None:
            self._carriers.accept(transport, client, rest, admission)
            return
        conn = self.new_ssh(client, "ssh", admission, accepted)
        if conn is None:
            admission.withdraw()
            transport.abort()
            return
        transport.set_protocol(conn)
        conn.connection_made(transport)
        if rest:
            conn.data_received(rest)

    def new_ssh(
        self,
        client: tuple[str, int],
        carrier: str,
        admission: Slot,
        accepted: float | None = None,
    ) -> asyncio.Protocol | None:
        """An SSH server connection for ``client`` (``None`` while draining).

        ``carrier`` names the layers it came through (``ssh``, ``tls+ssh``,
        ``tls+websocket+ssh``); ``admission`` is its gate slot, taken at accept.
        """
        if self._draining():
            return None
        conn = _GatedConnection(asyncio.get_running_loop(), self._options, admission)
        # RelayConnection (limits, logs, audit) takes the client from "peername"; the
        # transport's own peername is the balancer's, or the client's again.
        conn.set_extra_info(
            peername=client,
            carrier=carrier,
            admission=admission,
            accepted=time.monotonic() if accepted is None else accepted,
        )
        return conn


class _GatedConnection(asyncssh.SSHServerConnection):
    """An SSH server connection that tells its gate slot whenever the client sends
    something before logging in, so that the gate evicts quiet connections first."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        options: asyncssh.SSHServerConnectionOptions,
        admission: Slot,
    ) -> None:
        super().__init__(loop, options)
        self._admission = admission

    def data_received(self, data: bytes, datatype: int | None = None) -> None:
        # After the key exchange the slot is no longer stalled and this is one dict lookup.
        self._admission.active()
        super().data_received(data, datatype)


class AcceptFront(asyncio.Protocol):
    """The listening socket's protocol without PROXY headers: hand each connection on."""

    def __init__(
        self, hand_off: Callable[[asyncio.Transport, tuple[str, int], bytes, float], None]
    ) -> None:
        self._hand_off = hand_off

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not isinstance(transport, asyncio.Transport):  # pragma: no cover
            transport.close()
            return
        peer = transport.get_extra_info("peername") or ("?", 0)
        self._hand_off(transport, (str(peer[0]), int(peer[1])), b"", time.monotonic())


__all__ = ["AcceptFront", "Carriers", "FrontDoor", "server_context"]
