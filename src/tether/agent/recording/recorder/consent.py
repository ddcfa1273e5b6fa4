"""The customer's consent to one support session, as the recorder waits for it (stdlib only).

With ``consent = "ask"`` the recorder, before it runs anything, waits until a decision
file named after the session's recording id appears in the consent directory: root's
(mode 0755), written by ``tether access admit`` / ``refuse``. The support account
can read it and never write it, and the recorder trusts only a file that root owns.
No answer within the timeout refuses the session.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

ADMIT, REFUSE = "admit", "refuse"
#: How often (seconds) the recorder looks for the decision.
POLL = 0.1


class Decision:
    """What became of a waiting login.

    :param admitted: it may run.
    :param by: who decided (``cli``, ``page``, ``timeout``).
    :param waited: seconds the engineer waited.
    :param reason: the customer's words, or the timeout's.
    """

    def __init__(self, admitted: bool, by: str, waited: float, reason: str = "") -> None:
        self.admitted = admitted
        self.by = by
        self.waited = waited
        self.reason = reason

    def to_json(self) -> dict[str, object]:
        return {
            "state": "admitted" if self.admitted else "refused",
            "by": self.by,
            "waited": round(self.waited, 3),
            "reason": self.reason,
        }


def read_decision(path: Path) -> tuple[str, str, str] | None:
    """Return (decision, by, reason) from a root-owned decision file, else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_uid != 0:
            return None  # not the customer's: ignore it
        body = json.loads(os.read(fd, 4096))
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    if not isinstance(body, dict) or body.get("decision") not in (ADMIT, REFUSE):
        return None
    return str(body["decision"]), str(body.get("by", "?"))[:40], str(body.get("reason", ""))[:300]


def wait_for_consent(
    directory: Path,
    recording_id: str,
    timeout: int,
    say: Callable[[str], None],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    *,
    admit_on_timeout: bool = False,
) -> Decision:
    """Wait for the customer's decision on ``recording_id``; tell the engineer each second.

    No decision within ``timeout`` seconds refuses the login, or admits it with
    ``admit_on_timeout`` (the grant's ``--auto-admit-after``).

    ``say`` raising :class:`OSError` (the engineer went away) ends the wait as refused.
    """
    started = clock()
    shown = -1
    while True:
        waited = clock() - started
        found = read_decision(directory / recording_id)
        if found is not None:
            decision, by, reason = found
            return Decision(decision == ADMIT, by, waited, reason)
        if waited >= timeout and admit_on_timeout:
            return Decision(True, "timeout", waited, f"no refusal within {timeout} s")
        if waited >= timeout:
            return Decision(
                False,
                "timeout",
                waited,
                f"the customer did not admit this session within {timeout} s",
            )
        if int(waited) != shown:
            shown = int(waited)
            try:
                say(f"\rtether: waiting for the customer to admit you ({shown} s) ")
            except OSError:
                return Decision(False, "gone", waited, "the engineer went away")
        sleep(POLL)
