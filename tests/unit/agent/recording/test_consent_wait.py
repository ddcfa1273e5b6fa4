"""The recorder's wait for the customer's decision (consent = "ask"), without a session."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tether.agent.recording.recorder.consent import read_decision, wait_for_consent


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_no_answer_refuses_after_the_timeout_telling_the_engineer_each_second(
    tmp_path: Path,
) -> None:
    clock, said = Clock(), []
    decision = wait_for_consent(tmp_path, "r1", 3, said.append, clock, clock.sleep)
    assert not decision.admitted
    assert decision.by == "timeout"
    assert "within 3 s" in decision.reason
    assert [s.split("(")[1] for s in said] == ["0 s) ", "1 s) ", "2 s) "]


def test_a_decision_file_admits_or_refuses(tmp_path: Path) -> None:
    (tmp_path / "r1").write_text(json.dumps({"decision": "admit", "by": "cli"}))
    clock = Clock()
    assert wait_for_consent(tmp_path, "r1", 3, lambda _: None, clock, clock.sleep).admitted
    (tmp_path / "r2").write_text(json.dumps({"decision": "refuse", "by": "cli", "reason": "no"}))
    refused = wait_for_consent(tmp_path, "r2", 3, lambda _: None, clock, clock.sleep)
    assert (refused.admitted, refused.reason) == (False, "no")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file to another user")
def test_a_decision_not_owned_by_root_is_ignored(tmp_path: Path) -> None:
    forged = tmp_path / "r1"
    forged.write_text(json.dumps({"decision": "admit", "by": "cli"}))
    os.chown(forged, 65534, 65534)  # as the support account would write it, if it could
    assert read_decision(forged) is None
    # Root's admission of another session, reached through a link, admits nothing.
    real = tmp_path / "r3"
    real.write_text(json.dumps({"decision": "admit", "by": "cli"}))
    assert read_decision(real) is not None
    link = tmp_path / "r2"
    link.symlink_to(real)
    assert read_decision(link) is None


def test_auto_admit_lets_the_login_in_when_nobody_refused(tmp_path: Path) -> None:
    clock = Clock()
    decision = wait_for_consent(
        tmp_path, "r1", 2, lambda _: None, clock, clock.sleep, admit_on_timeout=True
    )
    assert (decision.admitted, decision.by) == (True, "timeout")
    assert decision.waited >= 2
