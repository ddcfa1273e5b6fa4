"""The tether's live state in the words the CLI and the web page both show (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from tether.durations import format_duration


class TunnelState(Enum):
    """What the tether is doing now; the CLI and the web page use the same words."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    REFUSED = "refused"
    STOPPED = "stopped"


@dataclass(frozen=True)
class TunnelStatus:
    """A snapshot of the tunnel for ``tether access status``."""

    state: TunnelState
    relay: str
    since: datetime
    retry_at: datetime | None = None
    reason: str | None = None
    ports: tuple[int, ...] = ()

    def describe(self, now: datetime) -> str:
        """One line in the words the CLI and the web page show."""
        match self.state:
            case TunnelState.CONNECTED:
                return f"connected to relay {self.relay} since {self.since:%Y-%m-%d %H:%M:%S} UTC"
            case TunnelState.CONNECTING:
                return f"connecting to relay {self.relay}"
            case TunnelState.RECONNECTING:
                wait = format_duration(self.retry_at - now) if self.retry_at else "a moment"
                return f"reconnecting in {wait} ({self.reason})"
            case TunnelState.REFUSED:
                return f"refused by relay {self.relay}: {self.reason}"
            case TunnelState.STOPPED:
                return "not connected"

    def to_json(self) -> dict[str, object]:
        return {
            "state": self.state.value,
            "relay": self.relay,
            "since": self.since.isoformat(),
            "retry_at": self.retry_at.isoformat() if self.retry_at else None,
            "reason": self.reason,
            "ports": list(self.ports),
        }

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> TunnelStatus:
        def dt(name: str) -> datetime | None:
            value = body.get(name)
            return datetime.fromisoformat(value) if isinstance(value, str) and value else None

        since = dt("since")
        if since is None:
            raise ValueError("status without 'since'")
        return cls(
            state=TunnelState(body["state"]),
            relay=str(body["relay"]),
            since=since,
            retry_at=dt("retry_at"),
            reason=str(body["reason"]) if body.get("reason") else None,
            ports=tuple(int(p) for p in body.get("ports", ())),
        )
