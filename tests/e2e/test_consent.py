"""Consent (issue 17): with ``--consent ask`` each support login waits for the customer.

Stock ssh through the relay; the customer answers with ``tether access admit`` /
``refuse`` on the machine, or does not answer and the login is refused by itself.
Each outcome is in the machine's audit log.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from typing import Any

import pytest

from tests.e2e.test_grant_limits import reopen_with
from tether.demo import DemoSystem

pytestmark = pytest.mark.sandbox


class Login:
    """A stock ``ssh`` login running a command, its stderr read as it comes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.stderr = b""

    @classmethod
    async def start(cls, system: DemoSystem, command: str) -> Login:
        assert system.engineer is not None
        proc = await asyncio.create_subprocess_exec(
            *system.engineer.ssh(system.serial, command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        return cls(proc)

    async def expect(self, text: bytes, within: float = 30) -> None:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + within
        while text not in self.stderr:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{text!r} not seen; stderr: {self.stderr!r}")
            chunk = await asyncio.wait_for(self.proc.stderr.read(4096), left)
            if not chunk:
                raise AssertionError(f"{text!r} not seen before the end; stderr: {self.stderr!r}")
            self.stderr += chunk

    async def finish(self) -> tuple[int, bytes, bytes]:
        out, err = await asyncio.wait_for(self.proc.communicate(), 30)
        self.stderr += err
        return self.proc.returncode or 0, out, self.stderr


def audit_rows(system: DemoSystem) -> list[dict[str, Any]]:
    listed = system.access("log", "--json")
    assert listed.returncode == 0, listed.stderr
    rows: list[dict[str, Any]] = json.loads(listed.stdout)["rows"]
    return rows


async def test_admit_refuse_and_auto_refuse(system: DemoSystem) -> None:
    await reopen_with(system, "--consent", "ask", "--consent-timeout", "60s")

    # Admit: the engineer waits, is told so, and gets in once the customer admits.
    login = await Login.start(system, "echo admitted-ok")
    await login.expect(b"waiting for the customer to admit you")
    status = await asyncio.to_thread(system.access, "status")
    assert "Waiting:" in status.stdout, status.stdout
    admitted = await asyncio.to_thread(system.access, "admit")
    assert admitted.returncode == 0, admitted.stderr
    assert "Admitted demo's login" in admitted.stdout
    code, out, err = await login.finish()
    assert (code, out) == (0, b"admitted-ok\n"), err

    # Refuse: the engineer's ssh ends with the customer's refusal and reason.
    login = await Login.start(system, "echo must-not-run")
    await login.expect(b"waiting for the customer to admit you")
    refused = await asyncio.to_thread(system.access, "refuse", "--reason", "not now")
    assert refused.returncode == 0, refused.stderr
    code, out, err = await login.finish()
    assert code == 255
    assert not out
    assert b"session refused: the customer refused it (not now)" in err

    # Nobody answers: refused after the grant's timeout.
    await reopen_with(system, "--consent", "ask", "--consent-timeout", "2s")
    started = time.monotonic()
    login = await Login.start(system, "echo must-not-run")
    code, out, err = await login.finish()
    assert code == 255
    assert not out
    assert b"the customer did not admit this session within 2 s" in err
    assert time.monotonic() - started < 20

    # Who decided, and how long each engineer waited, are in the audit log.
    wanted = (
        "support admitted: by cli;",
        "support refused: by cli;",
        "support refused: by timeout;",
    )
    deadline = time.monotonic() + 20
    while True:
        texts = [r["text"] for r in audit_rows(system) if r["source"] == "agent"]
        found = [next((t for t in texts if t.startswith(w)), None) for w in wanted]
        if all(found) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.3)
    assert all(found), texts[-10:]
    for text in found:
        assert text is not None
        assert "engineer demo;" in text
        assert re.search(r"waited \d+(\.\d+)?(;|$)", text), text
    assert "reason not now" in (found[1] or "")
