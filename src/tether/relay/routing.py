"""Pure routing and admission decisions of the relay (no sockets, no database).

Two questions are answered here, and only here:

* may this machine key hold a tether with this (already signature-checked) key?
  → :func:`admit_tether`
* where does an engineer's ``direct-tcpip`` request to ``(host, port)`` go?
  → :meth:`Registry.route`, and for a machine another relay of the fleet holds
  → :func:`route_to_peer`

Both deny by default: anything not explicitly allowed raises an error whose message
is shown to the agent or to the engineer's ``ssh`` as is.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from tether.errors import BadInput
from tether.keys import TetherKeyClaims, check_serial, parse_address
from tether.protocol import RefusalReason
from tether.store import IssuedKey
from tether.store.records import RelayRecord, TetherRecord

LinkT = TypeVar("LinkT")


class AdmissionRefused(Exception):
    """A tether was refused; ``reason`` travels to the agent."""

    def __init__(self, reason: RefusalReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class RouteRefused(Exception):
    """An engineer's channel was refused; the message is shown by their ``ssh``.

    ``reason`` is a short fixed word for metrics (never the message, which names hosts).
    """

    def __init__(self, message: str, reason: str = "not-a-serial") -> None:
        super().__init__(message)
        self.reason = reason


class NotTetheredHere(RouteRefused):
    """No tether for ``serial`` on this relay; another relay of the fleet may hold it."""

    def __init__(self, serial: str, host: str) -> None:
        super().__init__(
            f"machine {host} is not tethered to this relay (is support access enabled on it?)",
            "not-tethered",
        )
        self.serial = serial


@dataclass(frozen=True)
class PeerRoute:
    """Where a channel for a machine held by another relay goes: that relay's address."""

    relay_id: str
    address: tuple[str, int]
    serial: str
    port: int


def route_to_peer(
    refusal: NotTetheredHere,
    holder: TetherRecord | None,
    relays: Sequence[RelayRecord],
    *,
    own_relay_id: str,
    port: int,
    now: datetime,
    dead_after: float,
) -> PeerRoute:
    """Decide where a channel this relay has no tether for goes, from the shared store.

    ``holder`` is the registry row for ``refusal.serial`` (None: no relay holds it) and
    ``relays`` the fleet's members. The channel goes to the holding relay's member
    address (its ``peer_listen``, else its ``listen``; never ``advertise``, which behind
    a load balancer is the balancer). A row naming this relay (stale: our own registry
    is the truth here), a relay that is gone or silent for ``dead_after`` seconds, or
    one without a reachable address leads nowhere; each refuses with the very message
    of a single relay, so an engineer learns nothing more from a fleet.
    """
    if holder is None or holder.relay_id == own_relay_id:
        raise refusal
    member = next((r for r in relays if r.relay_id == holder.relay_id), None)
    if member is None or now - member.last_seen_at > timedelta(seconds=dead_after):
        raise refusal
    try:
        address = parse_address(member.address, what="relay address")
    except BadInput:
        raise refusal from None
    if is_unspecified(address[0]):  # a wildcard listen names no host to dial
        raise refusal
    return PeerRoute(holder.relay_id, address, refusal.serial, port)


def admit_tether(
    claims: TetherKeyClaims, issued: IssuedKey | None, machine_key: str, now: datetime
) -> None:
    """Decide whether ``machine_key`` may tether with ``claims`` (before binding).

    ``issued`` is the vendor's record of the key (None if the vendor never issued it).
    Raises :class:`AdmissionRefused` naming the first problem.
    """
    if issued is None:
        raise AdmissionRefused(
            RefusalReason.UNKNOWN_KEY, "this key was not issued by this vendor service"
        )
    if issued.serial != claims.serial or issued.expires_at != claims.expires_at:
        raise AdmissionRefused(
            RefusalReason.UNKNOWN_KEY, "this key does not match the vendor's record of it"
        )
    if issued.spent:
        raise AdmissionRefused(
            RefusalReason.REVOKED,
            "this key was already used, and the access it opened was closed on the machine; "
            "each key works once: ask the vendor for a new key",
        )
    if issued.revoked_at is not None:
        raise AdmissionRefused(RefusalReason.REVOKED, "this key was revoked by the vendor")
    if now >= claims.expires_at:
        raise AdmissionRefused(RefusalReason.EXPIRED, "this key has expired")
    check_binding(issued, machine_key)


def check_binding(issued: IssuedKey, machine_key: str) -> None:
    """Refuse a key already bound to a different machine key."""
    if issued.bound_machine_key is not None and issued.bound_machine_key != machine_key:
        raise AdmissionRefused(
            RefusalReason.OTHER_MACHINE,
            "this key was already used by another machine; a key works for one machine only",
        )


@dataclass
class TetherEntry(Generic[LinkT]):
    """A live tether held by this relay process."""

    serial: str
    key_id: str
    machine_key: str
    expires_at: datetime
    key_ports: frozenset[int]
    connected_at: datetime
    link: LinkT
    #: Ports the agent has offered (tcpip-forward requests the relay accepted).
    offered_ports: set[int] = field(default_factory=set)

    def may_offer(self, port: int) -> bool:
        return port in self.key_ports


def is_unspecified(host: str) -> bool:
    """Whether ``host`` is a wildcard address (0.0.0.0, ::), which names no host to dial."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _serial_key(serial: str) -> str:
    """The registry's key for ``serial``: its canonical form (an invalid one matches nothing)."""
    try:
        return check_serial(serial)
    except BadInput:
        return "\0" + serial


class Registry(Generic[LinkT]):
    """Live tethers by canonical serial (:func:`~tether.keys.check_serial`).

    OpenSSH lower-cases the host names engineers type, so ``acme-1`` reaches ``ACME-1``;
    a look-alike that is not a valid serial (``ACME-1.``) reaches nothing.
    """

    def __init__(self) -> None:
        self._by_serial: dict[str, TetherEntry[LinkT]] = {}

    def __len__(self) -> int:
        return len(self._by_serial)

    def __iter__(self) -> Iterator[TetherEntry[LinkT]]:
        return iter(list(self._by_serial.values()))

    def get(self, serial: str) -> TetherEntry[LinkT] | None:
        return self._by_serial.get(_serial_key(serial))

    def add(self, entry: TetherEntry[LinkT]) -> TetherEntry[LinkT] | None:
        """Register ``entry``; return the entry it replaced (same serial), if any."""
        key = _serial_key(entry.serial)
        previous = self._by_serial.get(key)
        self._by_serial[key] = entry
        return previous if previous is not entry else None

    def remove(self, entry: TetherEntry[LinkT]) -> bool:
        """Remove ``entry`` if it is still the current one for its serial."""
        key = _serial_key(entry.serial)
        if self._by_serial.get(key) is entry:
            del self._by_serial[key]
            return True
        return False

    def with_key(self, key_id: str) -> list[TetherEntry[LinkT]]:
        return [e for e in self._by_serial.values() if e.key_id == key_id]

    def route(self, host: str, port: int) -> TetherEntry[LinkT]:
        """Return the tether an engineer's request for ``host:port`` goes to.

        ``host`` must be the serial of a machine tethered here and ``port`` one the
        machine offered; anything else raises :class:`RouteRefused` (a valid serial
        with no tether here: :class:`NotTetheredHere`).
        """
        try:
            serial = check_serial(host)
        except BadInput:
            raise RouteRefused(
                f"this relay only reaches tethered machines by serial; {host[:80]!r} is not a serial"
            ) from None
        entry = self.get(serial)
        if entry is None:
            raise NotTetheredHere(serial, host)
        if port not in entry.offered_ports:
            allowed = ", ".join(str(p) for p in sorted(entry.offered_ports)) or "none"
            raise RouteRefused(
                f"port {port} is not open on machine {entry.serial} (open: {allowed})",
                "port-closed",
            )
        return entry
