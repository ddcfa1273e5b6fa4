"""The agent↔relay control protocol: JSON lines on the ``tether-control@tether`` subsystem.

Sans-IO: this module only encodes and decodes messages. The agent opens the control
channel right after logging in with its machine key and sends ``register``; the relay
answers ``registered`` or ``refused`` and, later, may send ``closing`` just before it
drops the tether (revoked, expired). ``refused``/``closing`` carry a
:class:`RefusalReason`; reasons in :data:`PERMANENT_REASONS` mean "do not reconnect".

Once registered, the agent reports its audit log's head (``audit-head``: seq and hash of
its last entry). To check that the log still holds what it reported before, the relay
may ask for the hash of one earlier entry (``audit-query``), which the agent answers
(``audit-entry``, hash ``null`` if the log no longer has that entry). When the machine
closes the access a key opened, the agent says so (``access-closed``) before it hangs
up: the key is spent.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

_HEX64 = re.compile(r"[0-9a-f]{64}")
#: Largest entry number an audit message may carry (the log's own limit).
MAX_SEQ = 2**63 - 1

#: A control line longer than this is a protocol violation (a key is well under 2 KiB).
MAX_LINE = 16 * 1024


class RefusalReason(Enum):
    """Why a relay refused or dropped a tether."""

    GARBLED = "garbled"
    TRUNCATED = "truncated"
    TAMPERED = "tampered"
    UNKNOWN_SIGNER = "unknown-signer"
    EXPIRED = "expired"
    NOT_YET_VALID = "not-yet-valid"
    WRONG_SERIAL = "wrong-serial"
    UNKNOWN_KEY = "unknown-key"
    REVOKED = "revoked"
    OTHER_MACHINE = "other-machine"
    REPLACED = "replaced"
    PROTOCOL = "protocol"
    SHUTDOWN = "shutdown"
    INTERNAL = "internal"
    #: The relay cannot reach the vendor's database now: retry later (an agent that
    #: predates this reason reads it as a protocol error, which it retries too).
    UNAVAILABLE = "unavailable"


#: Refusals after which retrying with the same key can never succeed.
PERMANENT_REASONS = frozenset(
    {
        RefusalReason.GARBLED,
        RefusalReason.TRUNCATED,
        RefusalReason.TAMPERED,
        RefusalReason.UNKNOWN_SIGNER,
        RefusalReason.EXPIRED,
        RefusalReason.WRONG_SERIAL,
        RefusalReason.UNKNOWN_KEY,
        RefusalReason.REVOKED,
        RefusalReason.OTHER_MACHINE,
    }
)


class ProtocolError(Exception):
    """A control line that does not follow the protocol."""


@dataclass(frozen=True)
class Register:
    key: str
    version: int


@dataclass(frozen=True)
class Registered:
    serial: str
    expires_at: str
    ports: tuple[int, ...]
    #: The relay checks audit heads: the agent reports them only then, so a relay that
    #: predates them never sees an operation it would refuse.
    audit_heads: bool = False
    #: The relay keeps the grant's limits for the vendor console (``grant-limits``).
    grant_limits: bool = False


@dataclass(frozen=True)
class Refused:
    reason: RefusalReason
    message: str


@dataclass(frozen=True)
class Closing:
    reason: RefusalReason
    message: str
    #: Seconds over which to spread the reconnect (0: the agent's own backoff). A relay
    #: going down with many tethers asks for this so they do not all return at once.
    retry_within: float = 0.0


@dataclass(frozen=True)
class SealedPassword:
    """Agent → relay: the support password, sealed to the vendor (opaque to the relay)."""

    key_id: str
    sealed: str


@dataclass(frozen=True)
class PasswordWithdrawn:
    """Agent → relay: the customer replaced the sealed password of ``key_id``; forget it."""

    key_id: str


@dataclass(frozen=True)
class AccessClosed:
    """Agent → relay: the machine closed the access this key opened; the key is spent.

    Sent just before the agent hangs up after a disable or an expiry, so that a copy
    of the machine's state cannot open the key again, and so that the vendor console
    stops showing a sealed password that no longer works.
    """

    key_id: str
    reason: str


#: Most limits one ``grant-limits`` message may list, and the longest of them.
MAX_LIMITS, MAX_LIMIT_TEXT = 10, 300


@dataclass(frozen=True)
class GrantLimits:
    """Agent → relay: what the customer's grant for ``key_id`` allows, in words.

    For the vendor console, so the engineer knows before connecting (whether each
    login waits for the customer, no sudo, ...). Empty: nothing is limited. The
    machine enforces the limits itself; this is only what it says about them.
    """

    key_id: str
    limits: tuple[str, ...]


@dataclass(frozen=True)
class Request:
    """Agent → relay: one-click support request (no key yet): ask the vendor for one.

    ``limits``: what the customer's grant will allow, in words, shown with the case
    (a relay that predates them ignores the field).
    """

    serial: str
    description: str
    version: int
    limits: tuple[str, ...] = ()


@dataclass(frozen=True)
class Cancel:
    """Agent → relay: the customer gave up waiting for the vendor."""

    case_id: int


@dataclass(frozen=True)
class CaseUpdate:
    """Relay → agent: where the request stands; ``key`` is set once it was issued."""

    case_id: int
    status: str
    message: str
    key: str | None = None


@dataclass(frozen=True)
class ChainHead:
    """Agent → relay: the last entry of the agent's audit log (``seq`` 0: empty log)."""

    seq: int
    hash: str


@dataclass(frozen=True)
class HeadQuery:
    """Relay → agent: what is the hash of entry ``seq`` of your audit log now?"""

    seq: int


@dataclass(frozen=True)
class HeadAnswer:
    """Agent → relay: the hash of entry ``seq``, or ``None`` if the log has no such entry."""

    seq: int
    hash: str | None


#: Case states a relay reports; all but "pending" end the request.
CASE_STATES = frozenset({"pending", "issued", "denied", "cancelled"})

Message = (
    Register
    | Registered
    | Refused
    | Closing
    | SealedPassword
    | PasswordWithdrawn
    | AccessClosed
    | GrantLimits
    | Request
    | Cancel
    | CaseUpdate
    | ChainHead
    | HeadQuery
    | HeadAnswer
)


def encode(message: Message) -> bytes:
    """One message as a JSON line."""
    body: dict[str, Any]
    match message:
        case Register(key, version):
            body = {"op": "register", "key": key, "version": version}
        case Registered(serial, expires_at, ports, audit_heads):
            body = {
                "op": "registered",
                "serial": serial,
                "expires_at": expires_at,
                "ports": list(ports),
            }
            if audit_heads:
                body["audit_heads"] = True
            if message.grant_limits:
                body["grant_limits"] = True
        case Refused(reason, text):
            body = {"op": "refused", "reason": reason.value, "message": text}
        case Closing(reason, text, retry_within):
            body = {"op": "closing", "reason": reason.value, "message": text}
            if retry_within:
                body["retry_within"] = retry_within
        case SealedPassword(key_id, sealed):
            body = {"op": "sealed-password", "key_id": key_id, "sealed": sealed}
        case PasswordWithdrawn(key_id):
            body = {"op": "password-withdrawn", "key_id": key_id}
        case AccessClosed(key_id, reason):
            body = {"op": "access-closed", "key_id": key_id, "reason": reason}
        case GrantLimits(key_id, limits):
            body = {"op": "grant-limits", "key_id": key_id, "limits": list(limits)}
        case Request(serial, description, version, limits):
            body = {
                "op": "request",
                "serial": serial,
                "description": description,
                "version": version,
            }
            if limits:
                body["limits"] = list(limits)
        case Cancel(case_id):
            body = {"op": "cancel", "case_id": case_id}
        case CaseUpdate(case_id, status, text, key):
            body = {"op": "case", "case_id": case_id, "status": status, "message": text, "key": key}
        case ChainHead(seq, digest):
            body = {"op": "audit-head", "seq": seq, "hash": digest}
        case HeadQuery(seq):
            body = {"op": "audit-query", "seq": seq}
        case HeadAnswer(seq, digest):
            body = {"op": "audit-entry", "seq": seq, "hash": digest}
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def _text(body: dict[str, Any], name: str) -> str:
    value = body[name]
    if not isinstance(value, str):
        raise TypeError(f"{name} must be text")
    return value


def _int(body: dict[str, Any], name: str) -> int:
    value = body[name]
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be a whole number")
    return value


#: Longest reconnect spread a relay may ask for.
MAX_RETRY_WITHIN = 3600.0


def _seconds(value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError("retry_within must be a number of seconds")
    if not 0.0 <= value <= MAX_RETRY_WITHIN:  # also refuses NaN
        raise ValueError(f"retry_within must be 0 to {MAX_RETRY_WITHIN:g} seconds")
    return float(value)


def _seq(body: dict[str, Any], *, lowest: int) -> int:
    value = _int(body, "seq")
    if not lowest <= value <= MAX_SEQ:
        raise ValueError(f"seq must be {lowest} to {MAX_SEQ}")
    return value


def _digest(body: dict[str, Any]) -> str:
    value = body["hash"]
    if not (isinstance(value, str) and _HEX64.fullmatch(value)):
        raise ValueError("hash must be 64 lower-case hex digits")
    return value


def _limit_lines(limits: object) -> tuple[str, ...]:
    if (
        not isinstance(limits, list)
        or len(limits) > MAX_LIMITS
        or not all(
            isinstance(t, str) and 0 < len(t) <= MAX_LIMIT_TEXT and t.isprintable() for t in limits
        )
    ):
        raise TypeError("limits must be a short list of short lines of text")
    return tuple(limits)


def decode(line: bytes) -> Message:
    """Parse one JSON line; raise :class:`ProtocolError` for anything unexpected.

    Types are checked, never converted: a peer that sends ``"ports": "443"`` is
    broken or hostile, and either way gets a protocol error.
    """
    if len(line) > MAX_LINE:
        raise ProtocolError("control line too long")
    try:
        body = json.loads(line)
        if not isinstance(body, dict):
            raise TypeError("not an object")
        op = body["op"]
        if op == "register":
            return Register(_text(body, "key"), _int(body, "version"))
        if op == "registered":
            ports = body["ports"]
            if not isinstance(ports, list) or not all(
                isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in ports
            ):
                raise TypeError("ports must be a list of port numbers")
            return Registered(
                _text(body, "serial"),
                _text(body, "expires_at"),
                tuple(ports),
                body.get("audit_heads") is True,
                body.get("grant_limits") is True,
            )
        if op == "request":
            return Request(
                _text(body, "serial"),
                _text(body, "description"),
                _int(body, "version"),
                _limit_lines(body.get("limits", [])),
            )
        if op == "cancel":
            return Cancel(_int(body, "case_id"))
        if op == "case":
            status = _text(body, "status")
            if status not in CASE_STATES:
                raise ValueError(f"unknown case status {status[:20]!r}")
            key = body.get("key")
            if key is not None and not isinstance(key, str):
                raise TypeError("key must be text")
            return CaseUpdate(_int(body, "case_id"), status, _text(body, "message"), key)
        if op == "audit-head":
            return ChainHead(_seq(body, lowest=0), _digest(body))
        if op == "audit-query":
            return HeadQuery(_seq(body, lowest=1))
        if op == "audit-entry":
            digest = None if body["hash"] is None else _digest(body)
            return HeadAnswer(_seq(body, lowest=1), digest)
        if op == "sealed-password":
            return SealedPassword(_text(body, "key_id"), _text(body, "sealed"))
        if op == "password-withdrawn":
            return PasswordWithdrawn(_text(body, "key_id"))
        if op == "access-closed":
            return AccessClosed(_text(body, "key_id"), _text(body, "reason"))
        if op == "grant-limits":
            return GrantLimits(_text(body, "key_id"), _limit_lines(body["limits"]))
        if op in ("refused", "closing"):
            reason = RefusalReason(_text(body, "reason"))
            text = _text(body, "message")
            if op == "refused":
                return Refused(reason, text)
            return Closing(reason, text, _seconds(body.get("retry_within", 0.0)))
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise ProtocolError(f"bad control message: {exc}") from None
    raise ProtocolError(f"unknown control operation {str(op)[:40]!r}")


class LineBuffer:
    """Splits a byte stream into lines, refusing lines over :data:`MAX_LINE`."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        if len(self._buf) > MAX_LINE:
            raise ProtocolError("control line too long")
        return [line for line in lines if line.strip()]
