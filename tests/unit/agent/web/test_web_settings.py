"""The ``[web]`` table of agent.toml and ``tether agent web-password``."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.unit.agent.web.test_app import make_config
from tether.agent.web.auth import AdminPassword
from tether.cli import main
from tether.config import WebSettings
from tether.errors import ConfigError


def test_defaults_serve_on_loopback_for_anyone_who_can_reach_it(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    assert config.web == WebSettings()
    assert config.web.listen == ("127.0.0.1", 8700)
    assert config.web_password_path == tmp_path / "state" / "web-admin.argon2"


def test_settings_are_read(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        '[web]\nlisten = "[::1]:0"\nallowed_clients = ["192.0.2.0/24", "::1"]\n'
        'admin_password_file = "pw.hash"\nenabled = false\n',
    )
    assert config.web.listen == ("::1", 0)
    assert config.web.allowed_clients == ("192.0.2.0/24", "::1")
    assert config.web_password_path == tmp_path / "pw.hash"
    assert not config.web.enabled


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ('allowed_clients = ["not-an-address"]', "[web]"),
        ('listen = "127.0.0.1"', "listen"),
        ("lisen = 1", "unknown setting(s) lisen in [web]"),
        ('enabled = "yes"', "wrong type"),
    ],
)
def test_bad_settings_name_the_file_and_key(tmp_path: Path, table: str, words: str) -> None:
    with pytest.raises(ConfigError) as error:
        make_config(tmp_path, f"[web]\n{table}\n")
    assert words in str(error.value)
    assert "agent.toml" in str(error.value)


def test_web_password_is_read_from_stdin_never_argv(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    args = ["agent", "web-password", "--config", str(config.path)]
    short = CliRunner().invoke(main, args, input="short\n")
    assert short.exit_code == 2
    assert "at least 12 characters" in short.output
    assert not config.web_password_path.exists()
    done = CliRunner().invoke(main, args, input="a long admin password\n")
    assert done.exit_code == 0, done.output
    assert "a long admin password" not in done.output
    assert AdminPassword(config.web_password_path).verify("a long admin password")
    assert not AdminPassword(config.web_password_path).verify("a long admin passwor")
