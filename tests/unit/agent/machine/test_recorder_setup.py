"""Setting recording up: the [recording] and [notify] tables, the recorder's command line,
which Python it runs under, and the sshd lines that force it."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from tests.unit.test_config import agent_toml, write
from tether.agent.machine.effects import MachineError
from tether.agent.machine.recorder_setup import choose_python, others_can_use, recorder_command
from tether.agent.machine.sshd import check_own_settings, render_match_config
from tether.config import AgentConfig, FailMode
from tether.errors import ConfigError


def test_recording_defaults_live_under_the_state_dir(tmp_path: Path) -> None:
    config = AgentConfig.load(write(tmp_path, agent_toml('state_dir = "state"\n')))
    assert config.recording.enabled
    assert config.recording.fail == FailMode.CLOSED
    assert config.recordings_dir == config.path.parent / "state" / "recordings"
    assert config.recording.max_age == timedelta(days=90)
    assert config.recording.max_total == 1 << 30
    assert config.notify.webhook_url is None
    assert config.notify.command == ()


def test_recording_and_notify_tables_are_read(tmp_path: Path) -> None:
    text = agent_toml(
        '[recording]\ndir = "rec"\nfail = "open"\nmax_age = "14d"\nmax_total = "200MB"\n'
        'max_session = 1048576\npython = "/usr/bin/python3"\n'
        '[notify]\nwebhook_url = "https://hooks.example/x?token=t"\n'
        'command = ["/usr/local/bin/page-admin", "--quiet"]\nattempts = 3\n'
    )
    config = AgentConfig.load(write(tmp_path, text))
    assert config.recordings_dir == config.path.parent / "rec"
    assert config.recording.fail == FailMode.OPEN
    assert config.recording.max_age == timedelta(days=14)
    assert config.recording.max_total == 200_000_000
    assert config.recording.max_session == 1 << 20
    assert config.recording.python == Path("/usr/bin/python3")
    assert config.notify.command == ("/usr/local/bin/page-admin", "--quiet")
    assert config.notify.attempts == 3


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ('[recording]\nfail = "maybe"\n', "recording.fail"),
        ('[recording]\nmax_total = "lots"\n', "recording.max_total"),
        ('[recording]\nmax_age = "forever"\n', "recording.max_age"),
        ("[recording]\nenabled = 1\n", "enabled"),
        ("[recording]\nretain = 3\n", "retain"),
        ('[notify]\nwebhook_url = "ftp://x"\n', "notify.webhook_url"),
        ('[notify]\ncommand = ["notify-send"]\n', "notify.command"),
    ],
)
def test_bad_recording_settings_name_the_key(tmp_path: Path, extra: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        AgentConfig.load(write(tmp_path, agent_toml(extra)))


def test_the_recorder_command_is_plain_words(tmp_path: Path) -> None:
    command = recorder_command(
        python=Path("/usr/bin/python3"),
        directory=Path("/var/lib/tether/recordings"),
        serial="SN-1",
        fail_open=False,
        max_bytes=1000,
        root=Path("/opt/tether/lib"),
    )
    assert command == (
        "/usr/bin/env PYTHONSAFEPATH=1 PYTHONPATH=/opt/tether/lib /usr/bin/python3 -s -m "
        "tether.agent.recording.recorder --dir /var/lib/tether/recordings --serial SN-1 --fail closed "
        "--max-bytes 1000"
    )
    for bad in (Path("/var/lib/my recordings"), Path("/x;rm -rf"), Path("/x$(id)")):
        with pytest.raises(MachineError, match="cannot be run from"):
            recorder_command(
                python=Path("/usr/bin/python3"),
                directory=bad,
                serial="SN-1",
                fail_open=True,
                max_bytes=1,
            )


def test_python_is_one_the_support_account_can_run(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    hidden = private / "python"
    hidden.write_text("")
    hidden.chmod(0o755)
    assert not others_can_use(hidden)
    assert others_can_use(Path("/bin/sh"))
    assert not others_can_use(tmp_path / "missing")
    assert choose_python(Path("/opt/py")) == Path("/opt/py")
    chosen = choose_python(None, candidates=(hidden, Path("/usr/bin/python3")))
    assert chosen is not None
    assert chosen != hidden


def test_sshd_forces_the_recorder_for_the_account_from_anywhere() -> None:
    text = render_match_config(
        "tether-support", Path("/ca"), Path("/p"), ["127.0.0.1"], "/usr/bin/env rec"
    )
    blocks = text.split("Match ")
    assert "ForceCommand" not in blocks[1]  # the Address-limited trust block
    assert blocks[2].startswith("User tether-support\n")
    assert "    ExposeAuthInfo yes\n" in blocks[2]
    assert text.endswith("    ForceCommand /usr/bin/env rec\n")
    effective = "trustedusercakeys /ca\nauthorizedprincipalsfile /p\nauthorizedkeysfile none\n"
    wrong, _ = check_own_settings(effective, Path("/ca"), Path("/p"), "/usr/bin/env rec")
    assert wrong == ["forcecommand is None"]
    fine = effective + "forcecommand /usr/bin/env rec\n"
    assert check_own_settings(fine, Path("/ca"), Path("/p"), "/usr/bin/env rec")[0] == []
