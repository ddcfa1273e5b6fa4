"""Probe a relay each way the tunnel could reach it: reachable, pinned key, TLS, clock."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from datetime import datetime

from tether.agent.network import (
    Carrier,
    NetworkError,
    NetworkSettings,
    TransportKind,
    resolve_proxy,
)
from tether.agent.reach import PinnedClient, cannot_reach, connect_as_agent
from tether.errors import ConfigError
from tether.keys import parse_address
from tether.sshlib import asyncssh
from tether.wire import RELAY_TIME_BANNER, RELAY_TLS_BANNER


class _BannerClient(PinnedClient):
    def __init__(self, fingerprint: str) -> None:
        super().__init__(fingerprint)
        self.relay_time: datetime | None = None
        #: (SHA-256 hex, issuer) of the TLS certificate the relay says is its own.
        self.relay_tls: tuple[str, str] | None = None

    def auth_banner_received(self, msg: str, lang: str) -> None:
        if msg.startswith(RELAY_TLS_BANNER):
            fingerprint, _, issuer = msg[len(RELAY_TLS_BANNER) :].strip().partition(" ")
            self.relay_tls = (fingerprint.lower(), issuer)
        elif msg.startswith(RELAY_TIME_BANNER):
            try:
                self.relay_time = datetime.fromisoformat(msg[len(RELAY_TIME_BANNER) :].strip())
            except ValueError:
                self.relay_time = None


@dataclass(frozen=True)
class TransportProbe:
    """What one way to the relay showed (``tether access check``).

    :ivar transport: the way, in words (``tls-proxy via proxy:3128``).
    :ivar error: why it failed, in plain words with what to do; ``None``: it worked.
    :ivar tls_issuer: the issuer of the TLS certificate presented (``""``: no TLS).
    :ivar tls_fingerprint: that certificate's SHA-256 in hex (``""``: no TLS).
    :ivar relay_tls: (SHA-256 hex, issuer) of the certificate the relay itself serves,
        as it said inside the pinned SSH login (``None``: it did not say, or no login).
    """

    transport: str
    kind: TransportKind
    reachable: bool
    host_key_ok: bool
    error: str | None = None
    seen_host_key: str | None = None
    tls_issuer: str = ""
    relay_time: datetime | None = None
    tls_fingerprint: str = ""
    relay_tls: tuple[str, str] | None = None

    @property
    def tls_inspected(self) -> bool:
        """The TLS certificate presented is not the one the relay serves: TLS is inspected."""
        return (
            self.relay_tls is not None
            and bool(self.tls_fingerprint)
            and self.tls_fingerprint != self.relay_tls[0]
        )


def failure_words(exc: BaseException, relay: str) -> str:
    """Why one way to the relay failed, as a person would say it (with the fix)."""
    host, port = parse_address(relay)
    if isinstance(exc, NetworkError):
        return exc.message
    if isinstance(exc, socket.gaierror):
        return (
            f"the relay's name {host} does not resolve (DNS: {exc.strerror}); check the "
            "machine's DNS servers, or reach the relay through the proxy"
        )
    if isinstance(exc, TimeoutError):
        return (
            f"no answer from {relay}: a firewall probably drops outbound port {port}; "
            "allow it, or use a proxy (tls-proxy)"
        )
    return cannot_reach(relay, exc)


async def probe_transport(
    relay: str,
    fingerprint: str,
    machine_key: asyncssh.SSHKey,
    carrier: Carrier,
    *,
    within: float = 10.0,
) -> TransportProbe:
    """Log in once over ``carrier`` (no key registered) and tell what happened."""
    client = _BannerClient(fingerprint)
    name = carrier.describe()
    try:
        conn = await connect_as_agent(relay, client, machine_key, within=within, carrier=carrier)
    except asyncssh.HostKeyNotVerifiable:
        return TransportProbe(
            name,
            carrier.kind,
            True,
            False,
            f"the relay's host key {client.mismatch} is not the one the key pins "
            f"({fingerprint}): something in between impersonates the relay, or the key "
            "names another relay",
            client.mismatch,
            carrier.tls_issuer,
        )
    except (TimeoutError, OSError, asyncssh.Error, NetworkError) as exc:
        words = failure_words(exc, relay)
        if carrier.tls_issuer and not carrier.kind.websocket and not isinstance(exc, NetworkError):
            # TLS was set up, and SSH inside it then failed: what an inspecting proxy or
            # firewall that passes only HTTP inside TLS does.
            words += (
                f"; TLS was set up (a certificate issued by {carrier.tls_issuer}), then SSH "
                "inside it failed: something on the way inspects TLS and passes only web "
                "traffic inside it; the websocket-tls ways carry SSH as web traffic"
            )
        return TransportProbe(
            name,
            carrier.kind,
            False,
            False,
            words,
            tls_issuer=carrier.tls_issuer,
        )
    conn.close()
    await conn.wait_closed()
    return TransportProbe(
        name,
        carrier.kind,
        True,
        True,
        tls_issuer=carrier.tls_issuer,
        relay_time=client.relay_time,
        tls_fingerprint=carrier.tls_fingerprint,
        relay_tls=client.relay_tls,
    )


async def probe_transports(
    relay: str,
    fingerprint: str,
    machine_key: asyncssh.SSHKey,
    network: NetworkSettings,
    *,
    within: float = 10.0,
) -> list[TransportProbe]:
    """Probe every configured way to the relay at once (a dropped port costs one timeout).

    A way through the proxy without a proxy configured is reported, not tried.
    """
    host, _ = parse_address(relay)
    try:
        proxy = resolve_proxy(network, host)
        proxy_error = None
    except ConfigError as exc:
        proxy, proxy_error = None, str(exc)
    jobs = []
    skipped: list[TransportProbe] = []
    for kind in network.transports:
        if kind.via_proxy and proxy is None:
            why = proxy_error or "no proxy is configured ([network] proxy or HTTPS_PROXY)"
            skipped.append(TransportProbe(kind.value, kind, False, False, why))
            continue
        jobs.append(
            probe_transport(relay, fingerprint, machine_key, Carrier(kind, proxy), within=within)
        )
    done = list(await asyncio.gather(*jobs))
    order = {kind: i for i, kind in enumerate(network.transports)}
    return sorted(done + skipped, key=lambda p: order[p.kind])
