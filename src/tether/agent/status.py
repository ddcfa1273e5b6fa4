"""Access and the tether in the words the CLI and the web page both show (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from tether.agent.state import AccessMode, AccessState
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
    #: How the tether reaches the relay (``tls-proxy via proxy:3128``...), once connected.
    transport: str | None = None

    def describe(self, now: datetime) -> str:
        """One line in the words the CLI and the web page show."""
        match self.state:
            case TunnelState.CONNECTED:
                over = f" over {self.transport}" if self.transport else ""
                return (
                    f"connected to relay {self.relay}{over} "
                    f"since {self.since:%Y-%m-%d %H:%M:%S} UTC"
                )
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
            "transport": self.transport,
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
            transport=str(body["transport"]) if body.get("transport") else None,
        )


#: Who closes access past its expiry when the agent runs (the page is the agent).
AGENT_CLOSES = "the agent closes it at once"


def describe_closer(daemon_running: bool, timer: str | None) -> str | None:
    """Who closes access on time now: the agent, else an installed timer, else nobody (None)."""
    if daemon_running:
        return AGENT_CLOSES
    if timer is not None:
        return f"the expiry timer ({timer}) closes it within a minute"
    return None


def describe_access(
    state: AccessState, serial: str, now: datetime, closer: str | None = AGENT_CLOSES
) -> str:
    """One line on access at ``now``, in the words of ``tether access status`` and the page.

    :param closer: who closes access past its expiry (see :func:`describe_closer`);
        None: nothing runs that would, and the line says so.
    """
    head = f"Support access on {serial}"
    if state.in_transition:
        return f"{head}: {state.status.value} was interrupted; the agent repairs it when it starts"
    if not state.is_open:
        line = f"{head}: closed"
        if state.closed_at is not None and state.close_reason is not None:
            line += f" ({state.close_reason.value} at {state.closed_at:%Y-%m-%d %H:%M} UTC"
            line += f": {state.close_detail})" if state.close_detail else ")"
        return line
    how = "through the relay" if state.mode == AccessMode.TETHER else "direct"
    if state.mode == AccessMode.DIRECT:
        how += f" from {', '.join(state.allow_from)}" if state.allow_from else " from anywhere"
    if state.expires_at is None:
        return f"{head}: OPEN WITHOUT END ({how}) — nothing closes it but `tether access disable`"
    if state.expires_at <= now:
        past = f"{head}: past its expiry ({state.expires_at:%Y-%m-%d %H:%M} UTC); "
        if closer is None:
            return past + (
                "NOTHING closes it: the agent is not running and no expiry timer is "
                "installed; run `tether access disable` (or start the agent)"
            )
        return past + closer
    ports = f", ports {', '.join(map(str, state.ports))}" if state.ports else ""
    return (
        f"{head}: open until {state.expires_at:%Y-%m-%d %H:%M} UTC "
        f"({format_duration(state.expires_at - now)} left), {how}{ports}"
    )


def describe_tunnel(daemon_running: bool, tunnel: object, now: datetime) -> str:
    """One line on the tether, from the daemon's status reply (``tunnel``) if it runs."""
    if not daemon_running:
        return "agent not running (start it: systemctl start tether-agent, or `tether agent serve`)"
    if not isinstance(tunnel, dict):
        return "not connected"
    try:
        tunnel_status = TunnelStatus.from_json(tunnel)
    except (ValueError, KeyError, TypeError):
        return "agent sent an unreadable status"
    return tunnel_status.describe(now)


def describe_agent(daemon_running: bool, closer: str | None) -> str:
    """One line on the agent in direct mode (no tether): running, and who closes on time."""
    if daemon_running:
        return "running (it closes access at its expiry)"
    if closer is None:
        return (
            "NOT running, and no expiry timer is installed: nothing closes access on time "
            "(start it: systemctl start tether-agent, or `tether agent serve`; "
            "`tether agent install` adds the timer)"
        )
    return f"not running; {closer.replace(' it ', ' access ', 1)} of its expiry"
