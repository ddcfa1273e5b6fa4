"""The customer admits or refuses a waiting support login (``consent = "ask"``).

The recorder of a grant that asks for consent holds each login and marks its
recording ``{"consent": {"state": "waiting"}}``; it runs the session only once a
decision file named after the recording id appears in the consent directory
(:attr:`~tether.agent.machine.effects.MachinePaths.consent_dir`, root's). Writing
that file is all admitting or refusing takes, so the CLI does it without the daemon;
each decision goes into the audit log with who took it and how long the engineer
had waited by then.
"""

from __future__ import annotations

import json

from tether.agent.machine.files import write_atomic
from tether.agent.recording.catalog import (
    RecordingInfo,
    RecordingNotFound,
    check_id,
    list_recordings,
)
from tether.audit_log import AuditLog
from tether.clock import SYSTEM_CLOCK, Clock
from tether.config import AgentConfig
from tether.errors import BadInput, NotReady


def waiting_logins(config: AgentConfig) -> list[RecordingInfo]:
    """The live sessions whose recorder waits for the customer's decision, oldest first."""
    return [
        info
        for info in list_recordings(config.recordings_dir)
        if info.live and (info.consent or {}).get("state") == "waiting"
    ]


def _pick(config: AgentConfig, session: str | None) -> RecordingInfo:
    waiting = waiting_logins(config)
    if session is None:
        if len(waiting) == 1:
            return waiting[0]
        if not waiting:
            raise NotReady("no support login is waiting for you to admit or refuse it")
        names = ", ".join(f"{i.id} ({i.engineer})" for i in waiting)
        raise BadInput(f"several logins are waiting; name one: {names}")
    check_id(session)
    found = next((i for i in waiting if i.id == session), None)
    if found is None:
        raise RecordingNotFound(
            f"no waiting login {session}: it was decided already, timed out, or ended "
            "(tether access recordings lists the sessions)"
        )
    return found


def decide(
    config: AgentConfig,
    session: str | None,
    *,
    admit: bool,
    by: str,
    reason: str = "",
    clock: Clock = SYSTEM_CLOCK,
) -> tuple[RecordingInfo, float]:
    """Admit or refuse the waiting login ``session`` (the only one, if None).

    Returns the login and the seconds its engineer had waited. Raises
    :class:`~tether.errors.BadInput` / :class:`NotReady` / ``RecordingNotFound``
    when there is no such waiting login.
    """
    if any(c in reason for c in "\r\n\0") or len(reason) > 300:
        raise BadInput("the reason must be one line of at most 300 characters")
    info = _pick(config, session)
    now = clock.now()
    waited = max(0.0, (now - info.started).total_seconds())
    body = {"decision": "admit" if admit else "refuse", "by": by, "reason": reason}
    write_atomic(
        config.paths.consent_dir / info.id,
        json.dumps(body).encode() + b"\n",
        0o644,
        owner=(0, 0),
    )
    AuditLog(config.state_dir / "audit.log", clock=clock).append(
        "support.admitted" if admit else "support.refused",
        by=by,
        session=info.id,
        engineer=info.engineer,
        kind=info.kind,
        waited=round(waited, 3),
        reason=reason or None,
    )
    return info, waited
