"""The layers that close support access on time, and which of them are armed now.

Access ends at its expiry even if the agent is dead, because several layers each
close it on their own (SPEC: "the certificate's validity, the relay's key expiry, the
account expiry date and a timer"). They differ in precision, and the customer is told
so: the agent's timer and the expiry timer act at the time (within a minute for the
latter); the OS keeps an account's expiry as a *date* (``chage`` counts days), so that
layer locks the account from 00:00 UTC of the day after access ends, a backstop, while
the engineer's certificate and the relay's key expiry carry the exact time.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from tether.agent.state import AccessMode, AccessState
from tether.config import AgentConfig

#: What the account-expiry layer can do, in the words both `check` and `status` show.
ACCOUNT_PRECISION = (
    "the OS keeps account expiry in whole days (chage), so the account is locked from "
    "00:00 UTC of the day after access ends; the timers, the certificate and the relay "
    "carry the exact time"
)


@dataclass(frozen=True)
class Layer:
    """One way access closes on time: whether it is armed now, and how precise it is."""

    name: str
    armed: bool
    detail: str

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "armed": self.armed, "detail": self.detail}


def account_expiry(account: str) -> date | None:
    """The support account's expiry date in the shadow file (None: none, or no account)."""
    try:
        result = subprocess.run(
            ["getent", "shadow", account], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    fields = result.stdout.strip().split(":")
    if result.returncode != 0 or len(fields) < 8 or not fields[7].isdigit():
        return None
    return date(1970, 1, 1) + timedelta(days=int(fields[7]))


def layers(
    state: AccessState,
    *,
    daemon_running: bool,
    timer: str | None,
    account_expires: date | None,
) -> list[Layer]:
    """The closing layers for ``state`` (pure: the facts are passed in).

    :param timer: the installed expiry timer ("cron", "systemd timer") or None.
    :param account_expires: the support account's expiry date, as the OS keeps it.
    """
    at = f" ({_utc(state.expires_at)})" if state.expires_at else ""
    result = [
        Layer(
            "agent timer",
            daemon_running,
            f"closes access at its expiry to the second{at}"
            if daemon_running
            else "the agent is not running",
        ),
        Layer(
            "expiry timer",
            timer is not None,
            f"{timer} runs `tether access expire`: closes access within a minute of its expiry"
            if timer
            else "not installed: run `tether agent install`",
        ),
        Layer(
            "account expiry date",
            account_expires is not None,
            f"{account_expires.isoformat()}: {ACCOUNT_PRECISION}"
            if account_expires
            else f"none set yet ({ACCOUNT_PRECISION})",
        ),
        Layer(
            "engineer certificate",
            True,
            "every engineer's certificate expires by itself (8 h by default, never over 7 days)",
        ),
    ]
    if state.mode == AccessMode.TETHER:
        result.append(
            Layer(
                "relay key expiry",
                True,
                "the relay drops the tether when the key expires, to the second",
            )
        )
    return result


def _utc(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def armed_layers(config: AgentConfig, state: AccessState, *, daemon_running: bool) -> list[Layer]:
    """The closing layers of this machine now (reads the installed timer and the shadow)."""
    from tether.agent.machine.service import installed_closer

    account = state.account or config.support_account
    return layers(
        state,
        daemon_running=daemon_running,
        timer=installed_closer(config),
        account_expires=account_expiry(account) if state.is_open else None,
    )


def summary(found: list[Layer]) -> str:
    """One line: the armed layers, then those that are not."""
    armed = ", ".join(layer.name for layer in found if layer.armed) or "none"
    idle = ", ".join(f"{layer.name} ({layer.detail})" for layer in found if not layer.armed)
    line = f"armed: {armed}" + (f"; not armed: {idle}" if idle else "")
    if not any(layer.name == "account expiry date" and not layer.armed for layer in found):
        line += f" (account expiry date: {ACCOUNT_PRECISION})"
    return line
