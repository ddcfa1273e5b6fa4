"""Recording failures, as the real recorder leaves them (no sshd), counted for monitoring:
``tether access status --json`` (``facts``) and node_exporter's textfile."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tether.agent.metrics import read_facts, write_textfile
from tether.agent.recording.catalog import list_recordings
from tether.agent.state import AccessState
from tether.config import AgentConfig, RecordingSettings

SRC = str(Path(__file__).resolve().parents[4] / "src")


def run_session(directory: Path, command: str, *options: str) -> subprocess.CompletedProcess[bytes]:
    """One session as sshd's ForceCommand would run it, with ``command`` asked for."""
    env = {**os.environ, "PYTHONPATH": SRC, "SSH_ORIGINAL_COMMAND": command}
    env.pop("SSH_USER_AUTH", None)
    argv = [sys.executable, "-m", "tether.agent.recording.recorder", "--dir", str(directory)]
    return subprocess.run(
        [*argv, "--serial", "S-1", *options],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
        check=False,
    )


def test_sessions_that_failed_to_run_are_counted_as_recording_failures(tmp_path: Path) -> None:
    directory = tmp_path / "recordings"
    directory.mkdir()
    config = AgentConfig(
        path=tmp_path / "agent.toml",
        serial="S-1",
        vendor_keys=(),
        state_dir=tmp_path,
        recording=RecordingSettings(directory=directory),
    )
    now = datetime.now(UTC)
    assert read_facts(config, AccessState(), False, now).recording_failures == 0

    assert run_session(directory, "echo fine").returncode == 0
    # A command that fails is the engineer's business, not a recording failure.
    assert run_session(directory, "exit 3").returncode == 3
    # An SFTP session whose sftp-server cannot be run: recorded, and failed.
    broken = run_session(directory, "internal-sftp", "--sftp-server", str(tmp_path / "no-such"))
    assert broken.returncode == 127
    assert b"cannot run the session" in broken.stderr

    recordings = list_recordings(directory)
    assert len(recordings) == 3
    failed = [r for r in recordings if r.failed]
    assert [r.kind for r in failed] == ["sftp"]
    assert "session failed" in (failed[0].error or "")

    facts = read_facts(config, AccessState(), False, now)
    assert facts.recording_failures == 1
    assert facts.to_json()["recording_failures"] == 1
    path = tmp_path / "tether.prom"
    write_textfile(path, facts)
    samples = {
        s.name: s.value
        for family in text_string_to_metric_families(path.read_text())
        for s in family.samples
    }
    assert samples["tether_agent_recording_failures"] == 1.0


def test_an_unreadable_recordings_directory_is_unknown_not_zero(tmp_path: Path) -> None:
    config = AgentConfig(
        path=tmp_path / "agent.toml",
        serial="S-1",
        vendor_keys=(),
        state_dir=tmp_path,
        recording=RecordingSettings(directory=tmp_path / "a-file"),
    )
    (tmp_path / "a-file").write_text("not a directory")
    facts = read_facts(config, AccessState(), False, datetime.now(UTC))
    assert facts.recording_failures is None
