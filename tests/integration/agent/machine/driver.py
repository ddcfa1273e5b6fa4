"""Run one SystemMachine call inside a sandbox: JSON request on stdin, JSON answer on stdout.

Run as ``python tests/integration/agent/machine/driver.py`` through ``Sandbox.run`` (by path, so
the ``tests`` package need not be importable inside). Request::

    {"op": "open" | "close" | "kill" | "facts",
     "grant": {"account": ..., "vendor_ca": ..., "expires_at": ISO | null,
               "allow_from": [...], "password": ... | null},   # for "open"
     "account": "tether-support",                               # for the others
     "hook": null | "bad-keyword" | "global-setting" | "bad-sudoers"}

Answer: ``{"ok": true, "result": ..., "started": T}`` or ``{"ok": false, "error": class
name, "message": ..., "started": T}``, where T is ``time.monotonic()`` just before the
call (CLOCK_MONOTONIC is shared by the host and the sandbox). The machine's log goes to
stderr. The hooks stand in for a Tether bug: they change what ``open`` writes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tether.agent.machine.effects import MachineError, RecorderSpec, SupportGrant
from tether.agent.machine.limits import Limits
from tether.agent.machine.system import SystemMachine


class BadKeywordMachine(SystemMachine):
    """Writes a directive sshd does not know (as a buggy release of Tether might)."""

    def render_sshd_config(
        self,
        account: str,
        sources: tuple[str, ...],
        force_command: str | None = None,
        limits: Limits | None = None,
    ) -> str:
        body = super().render_sshd_config(account, sources, force_command, limits)
        return body + "    NoSuchKeyword yes\n"


class GlobalSettingMachine(SystemMachine):
    """Writes a global directive before its Match blocks: valid, but it changes root's."""

    def render_sshd_config(
        self,
        account: str,
        sources: tuple[str, ...],
        force_command: str | None = None,
        limits: Limits | None = None,
    ) -> str:
        body = super().render_sshd_config(account, sources, force_command, limits)
        return "PermitRootLogin no\n" + body


class BadSudoersMachine(SystemMachine):
    """Writes a sudoers line with a syntax error (no ':' after NOPASSWD)."""

    sudoers_template = "{account} ALL=(ALL:ALL) NOPASSWD ALL\n"


HOOKS: dict[str | None, type[SystemMachine]] = {
    None: SystemMachine,
    "bad-keyword": BadKeywordMachine,
    "global-setting": GlobalSettingMachine,
    "bad-sudoers": BadSudoersMachine,
}


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def main() -> int:
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(levelname)s %(message)s")
    request = json.load(sys.stdin)
    machine = HOOKS[request.get("hook")]()
    op = request["op"]
    started = time.monotonic()
    try:
        if op == "open":
            g = request["grant"]
            expires = g.get("expires_at")
            machine.open(
                SupportGrant(
                    account=g["account"],
                    vendor_ca=g["vendor_ca"],
                    expires_at=None if expires is None else datetime.fromisoformat(expires),
                    allow_from=tuple(g.get("allow_from", ())),
                    password=g.get("password"),
                    recorder=None
                    if g.get("recorder") is None
                    else RecorderSpec(
                        g["recorder"]["command"],
                        Path(g["recorder"]["directory"]),
                        g["recorder"].get("fail_open", False),
                        Path(g["recorder"]["library"]) if g["recorder"].get("library") else None,
                    ),
                )
            )
            result: Any = None
        elif op == "close":
            result = _jsonable(machine.close(request["account"]))
        elif op == "kill":
            result = machine.kill_sessions(request["account"])
        elif op == "facts":
            result = _jsonable(machine.facts(request["account"]))
        else:
            raise SystemExit(f"unknown op {op!r}")
    except MachineError as exc:
        answer = {"ok": False, "error": type(exc).__name__, "message": str(exc)}
    else:
        answer = {"ok": True, "result": result}
    answer["started"] = started
    json.dump(answer, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
