"""The access state persisted on the machine (``access.json`` in the agent's state dir).

Written atomically (temporary file, fsync, rename) so a power loss leaves either the
old or the new state, never half of one. The stored tether key is not a secret the
relay could not know, but the file is still private to root (0600).

``OPENING`` and ``CLOSING`` are intent records: written before the machine is
changed, replaced by ``OPEN`` / ``CLOSED`` after. Finding one at start means a crash
in the middle; the agent then undoes the opening or completes the closing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any

from tether.agent.machine.limits import Limits
from tether.errors import NotReady


class AccessStatus(Enum):
    """Whether support access is open (or, after a crash, was being changed)."""

    CLOSED = "closed"
    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"


class AccessMode(Enum):
    """How engineers reach the machine."""

    TETHER = "tether"
    DIRECT = "direct"


class CloseReason(Enum):
    """Why support access was closed."""

    CUSTOMER = "customer"
    EXPIRED = "expired"
    REVOKED = "revoked"
    REFUSED = "refused"
    CRASH_RECOVERY = "crash-recovery"
    FAILED = "failed"


@dataclass(frozen=True)
class AccessState:
    """What the machine has granted, as last written."""

    status: AccessStatus = AccessStatus.CLOSED
    mode: AccessMode = AccessMode.TETHER
    #: Key id for a tether, a random id for direct access; binds the sealed password.
    grant_id: str | None = None
    account: str | None = None
    allow_from: tuple[str, ...] = ()
    #: The support password sealed to the vendor (None: customer's own, or none).
    sealed_password: str | None = field(default=None, repr=False)
    #: The customer replaced the generated password: the vendor's copy must go.
    password_withdrawn: bool = False
    #: What closing could not do (e.g. sshd not reloaded), in words for the customer.
    close_notes: tuple[str, ...] = ()
    #: The key of a closed tether that the relay was not yet told is spent (the agent
    #: was not running when access closed); the agent tells it, then forgets the key.
    unreported_key: str | None = field(default=None, repr=False)
    key: str | None = field(default=None, repr=False)
    key_id: str | None = None
    serial: str | None = None
    relay: str | None = None
    ports: tuple[int, ...] = ()
    expires_at: datetime | None = None
    opened_at: datetime | None = None
    opened_by: str | None = None
    closed_at: datetime | None = None
    close_reason: CloseReason | None = None
    close_detail: str | None = None
    #: What the grant allows (shell, file transfer, sudo, session length).
    limits: Limits = field(default_factory=Limits)

    @property
    def is_open(self) -> bool:
        return self.status == AccessStatus.OPEN

    @property
    def in_transition(self) -> bool:
        """An intent record: a crash happened while the machine was being changed."""
        return self.status in (AccessStatus.OPENING, AccessStatus.CLOSING)

    def closing(self, reason: CloseReason, now: datetime, detail: str | None = None) -> AccessState:
        """The intent to close, recorded before the machine is changed."""
        return replace(
            self,
            status=AccessStatus.CLOSING,
            closed_at=now,
            close_reason=reason,
            close_detail=detail,
            close_notes=(),
        )

    def closed(self, notes: tuple[str, ...] = ()) -> AccessState:
        """Access closed: the key and sealed password are no longer kept.

        :param notes: what closing could not do, kept for `status` to say.
        """
        return replace(
            self, status=AccessStatus.CLOSED, key=None, sealed_password=None, close_notes=notes
        )

    def to_json(self, *, with_key: bool) -> dict[str, Any]:
        def iso(dt: datetime | None) -> str | None:
            return dt.isoformat() if dt else None

        body: dict[str, Any] = {
            "status": self.status.value,
            "mode": self.mode.value,
            "grant_id": self.grant_id,
            "account": self.account,
            "allow_from": list(self.allow_from),
            "key_id": self.key_id,
            "serial": self.serial,
            "relay": self.relay,
            "ports": list(self.ports),
            "expires_at": iso(self.expires_at),
            "opened_at": iso(self.opened_at),
            "opened_by": self.opened_by,
            "closed_at": iso(self.closed_at),
            "close_reason": self.close_reason.value if self.close_reason else None,
            "close_detail": self.close_detail,
            "password_withdrawn": self.password_withdrawn,
            "close_notes": list(self.close_notes),
            "limits": self.limits.to_json(),
        }
        if with_key:
            body["key"] = self.key
            body["sealed_password"] = self.sealed_password
            body["unreported_key"] = self.unreported_key
        return body

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> AccessState:
        def dt(name: str) -> datetime | None:
            value = body.get(name)
            return datetime.fromisoformat(value) if value else None

        reason = body.get("close_reason")
        return cls(
            status=AccessStatus(body["status"]),
            mode=AccessMode(body.get("mode", AccessMode.TETHER.value)),
            grant_id=body.get("grant_id"),
            account=body.get("account"),
            allow_from=tuple(str(a) for a in body.get("allow_from", ())),
            sealed_password=body.get("sealed_password"),
            key=body.get("key"),
            key_id=body.get("key_id"),
            serial=body.get("serial"),
            relay=body.get("relay"),
            ports=tuple(int(p) for p in body.get("ports", ())),
            expires_at=dt("expires_at"),
            opened_at=dt("opened_at"),
            opened_by=body.get("opened_by"),
            closed_at=dt("closed_at"),
            close_reason=CloseReason(reason) if reason else None,
            close_detail=body.get("close_detail"),
            password_withdrawn=body.get("password_withdrawn") is True,
            close_notes=tuple(str(n) for n in body.get("close_notes") or ()),
            unreported_key=body.get("unreported_key"),
            limits=Limits.from_json(body.get("limits")),
        )


class StateFile:
    """Reads and atomically replaces ``access.json``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> AccessState:
        try:
            body = json.loads(self.path.read_text(encoding="utf-8"))
            return AccessState.from_json(body)
        except FileNotFoundError:
            return AccessState()
        except (ValueError, KeyError, TypeError) as exc:
            raise NotReady(
                f"the access state file {self.path} is damaged ({exc}); "
                "run `tether access disable` to close access and reset it"
            ) from None

    def save(self, state: AccessState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        data = json.dumps(state.to_json(with_key=True), indent=2).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
