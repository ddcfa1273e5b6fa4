"""The agent's facts for monitoring, and the node_exporter textfile they become."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tether.agent.metrics import AgentFacts, facts_of, render, write_textfile
from tether.agent.state import AccessState, AccessStatus

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def values(text: bytes) -> dict[str, float]:
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_open_access_counts_down_to_its_expiry() -> None:
    state = replace(AccessState(), status=AccessStatus.OPEN, expires_at=NOW + timedelta(minutes=90))
    facts = facts_of(state, tether_connected=True, live_sessions=2, now=NOW)
    assert facts == AgentFacts(True, 5400.0, True, 2)
    assert values(render(facts)) == {
        "tether_agent_access_open": 1.0,
        "tether_agent_access_expires_in_seconds": 5400.0,
        "tether_agent_tether_connected": 1.0,
        "tether_agent_support_sessions": 2.0,
    }


def test_closed_access_has_no_expiry_and_no_tether() -> None:
    facts = facts_of(AccessState(), tether_connected=True, live_sessions=0, now=NOW)
    assert facts.to_json() == {
        "access_open": False,
        "expires_in_seconds": None,
        "tether_connected": False,
        "live_sessions": 0,
        "recording_failures": None,
    }
    shown = values(render(facts))
    assert "tether_agent_access_expires_in_seconds" not in shown  # absent, never a fake 0
    assert shown["tether_agent_access_open"] == 0.0


def test_unknown_sessions_are_left_out_not_reported_as_zero() -> None:
    state = replace(AccessState(), status=AccessStatus.OPEN, expires_at=None)
    shown = values(render(facts_of(state, tether_connected=False, live_sessions=None, now=NOW)))
    assert "tether_agent_support_sessions" not in shown
    assert "tether_agent_access_expires_in_seconds" not in shown  # open without expiry
    assert "tether_agent_recording_failures" not in shown  # not read: unknown


def test_recording_failures_are_shown_closed_or_open() -> None:
    facts = facts_of(AccessState(), tether_connected=False, live_sessions=0, now=NOW,
                     recording_failures=2)  # fmt: skip
    assert facts.to_json()["recording_failures"] == 2
    assert values(render(facts))["tether_agent_recording_failures"] == 2.0


def test_the_textfile_is_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "tether.prom"
    write_textfile(path, AgentFacts(True, 60.0, True, 1))
    write_textfile(path, AgentFacts(False, None, False, 0))
    assert values(path.read_bytes())["tether_agent_access_open"] == 0.0
    assert [p.name for p in tmp_path.iterdir()] == ["tether.prom"]  # no temporary left
