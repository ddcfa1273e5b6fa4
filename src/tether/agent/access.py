"""Opening and closing support access: the operations behind ``tether access …``.

These run in the CLI process as well as in the daemon, always under the state lock,
so they work when the daemon and the web page are down. After a change the daemon
(if running) is told to reconcile, which starts or stops the tether at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from tether import log
from tether.agent.locks import state_lock
from tether.agent.state import AccessState, AccessStatus, CloseReason, StateFile
from tether.clock import SYSTEM_CLOCK, Clock
from tether.config import AgentConfig
from tether.errors import BadInput, Refused
from tether.keys import TetherKeyClaims, parse_key

logger = logging.getLogger("tether.agent")


@dataclass(frozen=True)
class Offer:
    """What a verified key will open on this machine."""

    claims: TetherKeyClaims
    ports: tuple[int, ...]
    refused_ports: tuple[int, ...]


class AccessManager:
    """The access state machine as seen from the machine (file state, no network)."""

    def __init__(self, config: AgentConfig, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.config = config
        self.clock = clock
        self.state_file = StateFile(config.state_dir / "access.json")
        self._lock_path = config.state_dir / "state.lock"

    def check_key(self, key_text: str) -> Offer:
        """Verify a pasted key offline against this machine; raise a clear error if bad."""
        claims = parse_key(
            key_text, self.config.vendor_keys, now=self.clock.now(), serial=self.config.serial
        )
        allowed = set(self.config.allowed_ports)
        ports = tuple(p for p in claims.ports if p in allowed)
        refused = tuple(p for p in claims.ports if p not in allowed)
        if not ports:
            raise BadInput(
                f"this key only opens ports {', '.join(map(str, claims.ports))}, none of which this "
                f"machine allows ({', '.join(map(str, sorted(allowed)))}); see extra_ports in "
                f"{self.config.path}"
            )
        return Offer(claims, ports, refused)

    def state(self) -> AccessState:
        return self.state_file.load()

    def enable_with_key(self, key_text: str, *, by: str) -> tuple[AccessState, Offer]:
        """Open access with a pasted tether key (verified first; nothing changes if bad)."""
        offer = self.check_key(key_text)
        with state_lock(self._lock_path):
            current = self.state_file.load()
            if current.is_open and current.key_id != offer.claims.key_id:
                raise Refused(
                    f"support access is already open (key {current.key_id}, until "
                    f"{current.expires_at:%Y-%m-%d %H:%M} UTC); disable it first"
                )
            claims = offer.claims
            state = AccessState(
                status=AccessStatus.OPEN,
                key="".join(key_text.split()),
                key_id=claims.key_id,
                serial=claims.serial,
                relay=claims.relay,
                ports=offer.ports,
                expires_at=claims.expires_at,
                opened_at=self.clock.now(),
                opened_by=by,
            )
            self.state_file.save(state)
        log.event(
            logger,
            "access.opened",
            by=by,
            key=claims.key_id,
            relay=claims.relay,
            ports=offer.ports,
            expires=claims.expires_at,
        )
        return state, offer

    def close(self, reason: CloseReason, *, by: str, detail: str | None = None) -> AccessState:
        """Close access (idempotent: closing a closed access changes nothing)."""
        with state_lock(self._lock_path):
            current = self.state_file.load()
            if not current.is_open:
                return current
            state = current.closed(reason, self.clock.now(), detail)
            self.state_file.save(state)
        log.event(
            logger, "access.closed", by=by, reason=reason.value, detail=detail, key=current.key_id
        )
        return state

    def expire_if_due(self, now: datetime | None = None) -> AccessState | None:
        """Close access whose expiry has passed; return the new state if it closed."""
        state = self.state_file.load()
        moment = now or self.clock.now()
        if state.is_open and state.expires_at is not None and moment >= state.expires_at:
            return self.close(CloseReason.EXPIRED, by="expiry")
        return None
