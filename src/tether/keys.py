"""Tether keys: signed, single-machine, expiring grants of support access (pure, no I/O).

A tether key is a standard PASETO ``v4.public`` token (Ed25519) issued by the vendor
for one machine serial. Its claims name the key id, the serial, the validity window,
the ports engineers may reach, the relay to connect to and the SHA-256 fingerprint of
that relay's SSH host key (so the agent pins the relay without any other trust).
The footer names the signer by its PASERK ``k4.pid`` so that a key from an unknown
vendor is told apart from a tampered one.

Nothing secret travels in a key: the relay could compute every claim itself.

Parsing is forgiving about what e-mail does to a key (spaces, line breaks, tabs) and
strict about everything else: each way a key can be wrong raises its own
:class:`TetherKeyError` subclass with a message that says what to do.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
import re
import secrets
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tether.durations import format_duration
from tether.errors import BadInput

#: The longest a tether key may be valid (SPEC: at most 12 weeks).
MAX_KEY_LIFETIME = timedelta(weeks=12)
#: Clock skew tolerated on a key's not-before time.
NOT_BEFORE_LEEWAY = timedelta(seconds=60)
#: At most this many ports in one key.
MAX_PORTS = 16

_HEADER = "v4.public."
_SIG_LEN = 64
_PID_HEADER = "k4.pid."
_PUBLIC_HEADER = "k4.public."
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")
#: What a serial looks like (any case; :func:`check_serial` returns it upper-cased).
#: Letters and digits at both ends: a trailing ``.`` names the same host to DNS and
#: OpenSSH, so ``ACME-1.`` would otherwise be a second serial for the same machine.
SERIAL_PATTERN = r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9])?$"
_SERIAL = re.compile(SERIAL_PATTERN)
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$|^\[[0-9A-Fa-f:.]+\]$")
_FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")


class KeyKind(Enum):
    """How a key came to be: pasted by the customer, or requested by the machine."""

    MANUAL = "manual"
    REQUEST = "request"


# --- errors -------------------------------------------------------------------------


class TetherKeyError(BadInput):
    """A tether key was refused. Subclasses say why; all exit with code 2 in the CLI."""

    reason = "invalid"


class KeyGarbledError(TetherKeyError):
    """The text is not a tether key at all."""

    reason = "garbled"


class KeyTruncatedError(TetherKeyError):
    """The text starts like a tether key but part of it is missing."""

    reason = "truncated"


class KeyTamperedError(TetherKeyError):
    """The signature does not match the contents: the key was altered."""

    reason = "tampered"


class UnknownSignerError(TetherKeyError):
    """The key is signed by a key this side does not trust."""

    reason = "unknown-signer"


class KeyExpiredError(TetherKeyError):
    """The key's validity has ended."""

    reason = "expired"


class KeyNotYetValidError(TetherKeyError):
    """The key's validity has not started yet (or this machine's clock is behind)."""

    reason = "not-yet-valid"


class WrongSerialError(TetherKeyError):
    """The key was issued for another machine."""

    reason = "wrong-serial"


# --- validation helpers shared with config and CLI ----------------------------------


def check_serial(serial: str) -> str:
    """Return the canonical form of a machine serial, or raise :class:`BadInput`.

    This is the one normalisation of serials: every entry point (tether keys, agent
    config, one-click requests, relay routing, the vendor's API, console and CLI, the
    engineer's CLI) and every store lookup goes through it, so a serial is stored,
    compared and shown in one form only. Serials are used as SSH host names
    (``ssh SERIAL``), which OpenSSH lower-cases and DNS compares without case, so
    ``acme-1`` and ``ACME-1`` are one machine: the canonical form is upper case.
    Anything that could be a second spelling of the same name is refused rather than
    guessed at: a trailing ``.`` (the same host to DNS), leading or trailing
    separators, spaces, and non-ASCII look-alikes. A serial is 1-64 letters, digits,
    ``.``, ``_`` and ``-``, starting and ending with a letter or digit.
    """
    if not isinstance(serial, str) or not _SERIAL.fullmatch(serial):
        raise BadInput(
            f"invalid serial {serial!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit"
        )
    return serial.upper()


def check_ports(ports: Iterable[int]) -> tuple[int, ...]:
    """Return the ports sorted and de-duplicated; each must be 1-65535, at most 16."""
    result = tuple(sorted(set(ports)))
    if not result:
        raise BadInput("at least one port is needed, e.g. 22,443")
    if len(result) > MAX_PORTS:
        raise BadInput(f"at most {MAX_PORTS} ports may be allowed, got {len(result)}")
    for port in result:
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise BadInput(f"invalid port {port!r}: ports are numbers from 1 to 65535")
    return result


def parse_ports(text: str) -> tuple[int, ...]:
    """Parse ``"22,80,443"`` (spaces allowed) into a checked port tuple."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise BadInput(
            f"invalid port list {text!r}: use numbers separated by commas, e.g. 22,443"
        ) from None
    return check_ports(numbers)


def parse_address(text: str, *, what: str = "address", any_port: bool = False) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[v6]:PORT`` for IPv6) into ``(host, port)``.

    ``any_port`` allows port 0 (let the OS pick), for addresses to listen on.
    """
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise BadInput(f"invalid {what} {text!r}: use HOST:PORT, e.g. relay.example.com:2222")
    port = int(port_text)
    if not (0 if any_port else 1) <= port <= 65535 or not _HOST.fullmatch(host):
        raise BadInput(f"invalid {what} {text!r}: use HOST:PORT, e.g. relay.example.com:2222")
    return host.strip("[]"), port


def format_address(host: str, port: int) -> str:
    """Inverse of :func:`parse_address`."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_ip_address(host: str) -> bool:
    """Whether ``host`` (as :func:`parse_address` returns it) is an IP address, not a name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# --- signing and verification keys --------------------------------------------------


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class _Incomplete(ValueError):
    """Base64url text of a length no encoder produces: something was cut off."""


def _b64d(text: str) -> bytes:
    """Strict base64url (no padding): refuse other characters and non-canonical text."""
    if not _B64URL.fullmatch(text):
        raise ValueError("not base64url")
    if len(text) % 4 == 1:
        raise _Incomplete("impossible length")
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64e(raw) != text:
        raise ValueError("non-canonical base64url")
    return raw


@dataclass(frozen=True)
class VerifyKey:
    """A vendor's public key for tether keys, written as a PASERK ``k4.public.…`` string."""

    public_key: Ed25519PublicKey

    @classmethod
    def from_paserk(cls, text: str) -> VerifyKey:
        """Read a ``k4.public.<base64url>`` string (as found in agent and relay config)."""
        text = "".join(text.split())
        if not text.startswith(_PUBLIC_HEADER):
            raise BadInput(
                f"vendor public key must start with {_PUBLIC_HEADER!r} (a PASERK v4 public key)"
            )
        try:
            raw = _b64d(text[len(_PUBLIC_HEADER) :])
            if len(raw) != 32:
                raise ValueError("wrong length")
            return cls(Ed25519PublicKey.from_public_bytes(raw))
        except ValueError:
            raise BadInput(
                "vendor public key is damaged: copy the whole k4.public.… line"
            ) from None

    def raw(self) -> bytes:
        return self.public_key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def to_paserk(self) -> str:
        return _PUBLIC_HEADER + _b64e(self.raw())

    @property
    def key_id(self) -> str:
        """PASERK ``k4.pid`` of this key: names the signer in every token's footer."""
        digest = hashlib.blake2b((_PID_HEADER + self.to_paserk()).encode(), digest_size=33).digest()
        return _PID_HEADER + _b64e(digest)


@dataclass(frozen=True)
class SigningKey:
    """The vendor's private key for issuing tether keys."""

    private_key: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, pem: bytes) -> SigningKey:
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError):
            raise BadInput("the tether-key signing key file is not a PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise BadInput("the tether-key signing key must be an Ed25519 key")
        return cls(key)

    def to_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def verify_key(self) -> VerifyKey:
        return VerifyKey(self.private_key.public_key())


# --- PASETO v4.public ---------------------------------------------------------------


def _pae(*pieces: bytes) -> bytes:
    """PASETO pre-authentication encoding."""
    out = struct.pack("<Q", len(pieces))
    for piece in pieces:
        out += struct.pack("<Q", len(piece)) + piece
    return out


def _sign(key: SigningKey, message: bytes, footer: bytes) -> str:
    signature = key.private_key.sign(_pae(_HEADER.encode(), message, footer, b""))
    token = _HEADER + _b64e(message + signature)
    return token + "." + _b64e(footer) if footer else token


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _from_iso(text: Any) -> datetime:
    if not isinstance(text, str):
        raise ValueError("time claim is not a string")
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError("time claim has no timezone")
    return value.astimezone(UTC)


# --- claims -------------------------------------------------------------------------


@dataclass(frozen=True)
class TetherKeyClaims:
    """What a verified tether key grants."""

    key_id: str
    serial: str
    issued_at: datetime
    not_before: datetime
    expires_at: datetime
    ports: tuple[int, ...]
    relay: str
    relay_host_key: str
    vendor: str
    kind: KeyKind

    def time_left(self, now: datetime) -> timedelta:
        return max(timedelta(0), self.expires_at - now)

    def to_json(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "serial": self.serial,
            "issued_at": _iso(self.issued_at),
            "not_before": _iso(self.not_before),
            "expires_at": _iso(self.expires_at),
            "ports": list(self.ports),
            "relay": self.relay,
            "relay_host_key": self.relay_host_key,
            "vendor": self.vendor,
            "kind": self.kind.value,
        }


def new_key_id() -> str:
    """A fresh random key id (128 bits, URL-safe)."""
    return _b64e(secrets.token_bytes(16))


def issue_key(
    signing_key: SigningKey,
    *,
    serial: str,
    now: datetime,
    lifetime: timedelta,
    relay: str,
    relay_host_key: str,
    ports: Sequence[int],
    vendor: str,
    kind: KeyKind = KeyKind.MANUAL,
    key_id: str | None = None,
) -> tuple[str, TetherKeyClaims]:
    """Sign a new tether key for ``serial``; return the token text and its claims.

    Raises :class:`BadInput` for a lifetime that is not positive or exceeds
    :data:`MAX_KEY_LIFETIME`, a bad serial, port list, relay address or fingerprint.
    """
    serial = check_serial(serial)
    if lifetime <= timedelta(0):
        raise BadInput("a key's lifetime must be longer than zero")
    if lifetime > MAX_KEY_LIFETIME:
        raise BadInput(
            f"a tether key may be valid for at most 12 weeks (84d); {format_duration(lifetime)} was asked"
        )
    host, port = parse_address(relay, what="relay address")
    if not _FINGERPRINT.fullmatch(relay_host_key):
        raise BadInput("relay host key fingerprint must look like SHA256:<43 base64 chars>")
    issued = now.astimezone(UTC).replace(microsecond=0)
    claims = TetherKeyClaims(
        key_id=key_id or new_key_id(),
        serial=serial,
        issued_at=issued,
        not_before=issued,
        expires_at=issued + lifetime,
        ports=check_ports(ports),
        relay=format_address(host, port),
        relay_host_key=relay_host_key,
        vendor=vendor,
        kind=kind,
    )
    body = {
        "jti": claims.key_id,
        "sub": claims.serial,
        "iss": claims.vendor,
        "iat": _iso(claims.issued_at),
        "nbf": _iso(claims.not_before),
        "exp": _iso(claims.expires_at),
        "ports": list(claims.ports),
        "relay": claims.relay,
        "relay_hk": claims.relay_host_key,
        "kind": claims.kind.value,
    }
    message = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    footer = json.dumps({"kid": signing_key.verify_key().key_id}, separators=(",", ":")).encode()
    return _sign(signing_key, message, footer), claims


def normalize_key_text(text: str) -> str:
    """Remove what e-mail and terminals add to a pasted key: all whitespace, wrapping quotes."""
    compact = "".join(text.split())
    return compact.strip("\"'<>")


def parse_key(
    text: str,
    trusted: Sequence[VerifyKey],
    *,
    now: datetime,
    serial: str | None = None,
) -> TetherKeyClaims:
    """Verify a pasted tether key and return its claims.

    Checks, in order: shape, signer, signature, claims, validity window, serial
    (when ``serial`` is given). Raises the :class:`TetherKeyError` subclass that
    names the first problem found; nothing is changed by a refused key.
    """
    token = normalize_key_text(text)
    if not token:
        raise KeyGarbledError(
            "no key given: paste the whole tether key (it starts with v4.public.)"
        )
    if not token.startswith(_HEADER):
        if _HEADER.startswith(token) or token.startswith("v4.public"):
            raise KeyTruncatedError(
                "this tether key is incomplete: copy all of it, from v4.public. to the end"
            )
        raise KeyGarbledError(
            "this is not a tether key: a key starts with 'v4.public.' and holds only letters, "
            "digits, '-', '_' and '.'. Copy it again from the vendor's message."
        )
    incomplete = KeyTruncatedError(
        "this tether key is incomplete or damaged: copy all of it again, from v4.public. "
        "to the end of its last line"
    )
    body_text, _, footer_text = token[len(_HEADER) :].partition(".")
    try:
        payload = _b64d(body_text)
    except _Incomplete:
        raise incomplete from None
    except (ValueError, binascii.Error):
        raise KeyGarbledError(
            "this tether key is damaged (it holds characters a key cannot contain): copy it again"
        ) from None
    if len(payload) <= _SIG_LEN:
        raise incomplete
    message, signature = payload[:-_SIG_LEN], payload[-_SIG_LEN:]
    try:
        body = json.loads(message)
        if not isinstance(body, dict):
            raise ValueError("claims are not an object")
    except (ValueError, RecursionError):
        raise incomplete from None
    # Every key we issue names its signer in a footer, so a missing one means the
    # key was cut off at its end, not that the signer is unknown.
    if not footer_text:
        raise incomplete
    try:
        footer_bytes = _b64d(footer_text)
        footer = json.loads(footer_bytes)
        kid = footer["kid"] if isinstance(footer, dict) else None
    except (ValueError, binascii.Error, KeyError, RecursionError):
        raise incomplete from None
    signer = next((k for k in trusted if k.key_id == kid), None)
    if signer is None:
        raise UnknownSignerError(
            "this key was signed by a vendor key this side does not trust "
            f"(signer {str(kid)[:24]}…): is it for another product, or is the vendor key in the "
            "configuration out of date?"
        )
    try:
        signer.public_key.verify(signature, _pae(_HEADER.encode(), message, footer_bytes, b""))
    except InvalidSignature:
        raise KeyTamperedError(
            "this tether key has been altered (its signature does not match): ask the vendor for a new one"
        ) from None
    claims = _claims_from(body)
    if now < claims.not_before - NOT_BEFORE_LEEWAY:
        raise KeyNotYetValidError(
            f"this key is valid only from {_iso(claims.not_before)}; the clock here says "
            f"{_iso(now)}. Check the clock (timedatectl) or wait."
        )
    if now >= claims.expires_at:
        raise KeyExpiredError(
            f"this key expired at {_iso(claims.expires_at)}: ask the vendor for a new one"
        )
    if serial is not None and claims.serial != check_serial(serial):
        raise WrongSerialError(
            f"this key is for machine {claims.serial!r}, but this machine is {serial!r}: "
            "ask the vendor for a key issued for this machine's serial"
        )
    return claims


def _claims_from(body: dict[str, Any]) -> TetherKeyClaims:
    try:
        ports = body["ports"]
        if not isinstance(ports, list):
            raise ValueError("ports")
        kind = KeyKind(body.get("kind", KeyKind.MANUAL.value))
        fields = (body["jti"], body["sub"], body["relay"], body["relay_hk"], body["iss"])
        if not all(isinstance(f, str) for f in fields):
            raise ValueError("text claim")
        claims = TetherKeyClaims(
            key_id=body["jti"],
            serial=check_serial(body["sub"]),
            issued_at=_from_iso(body["iat"]),
            not_before=_from_iso(body["nbf"]),
            expires_at=_from_iso(body["exp"]),
            ports=check_ports(ports),
            relay=body["relay"],
            relay_host_key=body["relay_hk"],
            vendor=body["iss"],
            kind=kind,
        )
        parse_address(claims.relay)
    except (KeyError, ValueError, TypeError, BadInput):
        raise KeyGarbledError(
            "this key is signed but its contents are not a valid tether key (wrong product version?)"
        ) from None
    if claims.expires_at - claims.not_before > MAX_KEY_LIFETIME + timedelta(minutes=1):
        raise KeyGarbledError("this key claims a validity longer than 12 weeks and is refused")
    return claims
