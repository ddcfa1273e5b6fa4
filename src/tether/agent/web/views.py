"""What the page shows, computed from the agent's state (no HTTP here).

The words are the CLI's: :func:`tether.agent.status.describe_access` for access and
:meth:`~tether.agent.status.TunnelStatus.describe` for the tether, so ``tether access
status`` and the page never disagree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tether.agent.access import AccessManager
from tether.agent.logins import describe_entry
from tether.agent.state import AccessMode
from tether.agent.status import TunnelState, describe_access
from tether.durations import format_duration

if TYPE_CHECKING:
    from tether.agent.web.host import AgentHost
    from tether.agent.web.oneclick import OneClick

#: Audit entries shown on the page (newest first).
AUDIT_SHOWN = 50


def status_view(host: AgentHost, one_click: OneClick) -> dict[str, Any]:
    """The access panel: one headline state, the CLI's lines, and the live countdowns."""
    state = host.access.state()
    now = host.access.clock.now()
    tunnel = host.tunnel_status
    access_line = describe_access(state, host.config.serial, now)
    tether_line = None
    kind, headline = "closed", "closed"
    if state.is_open:
        kind = "open"
        if state.expires_at is None:
            headline = "open without end"
        else:
            headline = f"open until {state.expires_at:%Y-%m-%d %H:%M} UTC"
        if state.mode == AccessMode.TETHER:
            tether_line = tunnel.describe(now) if tunnel is not None else "not connected"
            if tunnel is not None and tunnel.state == TunnelState.CONNECTED:
                headline = tether_line
            elif tunnel is not None and tunnel.state == TunnelState.RECONNECTING:
                kind, headline = "waiting", tether_line
    elif state.in_transition:
        kind, headline = "waiting", f"{state.status.value} was interrupted"
    if one_click.pending:
        kind = "waiting"
        headline = one_click.status or "contacting the vendor"
    return {
        "state": state,
        "kind": kind,
        "headline": headline,
        "access_line": access_line,
        "tether_line": tether_line,
        "expires_at": state.expires_at.isoformat() if state.is_open and state.expires_at else None,
        "retry_at": tunnel.retry_at.isoformat()
        if tunnel is not None and tunnel.state == TunnelState.RECONNECTING and tunnel.retry_at
        else None,
        "request_pending": one_click.pending,
        "request_waited": format_duration(one_click.waited) if one_click.pending else None,
        "request_error": one_click.error,
        "is_tether": state.is_open and state.mode == AccessMode.TETHER,
    }


def audit_view(access: AccessManager) -> dict[str, Any]:
    """The newest audit entries in words, and the result of the hash-chain check."""
    check = access.audit.verify()
    entries = access.audit.entries(skip_damaged=True)
    rows = [
        {
            "seq": e.seq,
            "at": f"{e.at:%Y-%m-%d %H:%M:%S}",
            "event": e.event,
            "what": describe_entry(e),
        }
        for e in reversed(entries[-AUDIT_SHOWN:])
    ]
    if check.ok:
        verdict = f"chain intact: {check.entries} entries, none changed or missing"
    else:
        verdict = "CHAIN BROKEN: " + "; ".join(p.message for p in check.problems[:5])
    return {
        "audit": rows,
        "audit_ok": check.ok,
        "audit_verdict": verdict,
        "audit_total": len(entries),
    }
