"""The OpenSSH configuration `tether ssh-config` writes: exact blocks, quoting, Include."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tether.engineer.sshconfig import (
    SshConfigInput,
    include_argument,
    install_include,
    render_ssh_config,
    ssh_path,
    unique_serials,
)
from tether.errors import BadInput

NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)


def _input(root: Path, **changes: object) -> SshConfigInput:
    values: dict[str, object] = {
        "engineer": "alice",
        "relay_host": "relay.example.com",
        "relay_port": 2222,
        "support_account": "tether-support",
        "identity_file": root / "id_ed25519",
        "certificate_file": root / "id_ed25519-cert.pub",
        "known_hosts": root / "known_hosts",
        "known_machines": root / "known_machines",
        "vendor": "https://tether.example.com",
    }
    values.update(changes)
    return SshConfigInput(**values)  # type: ignore[arg-type]


def test_exact_blocks_for_relay_and_machines() -> None:
    root = Path("/home/alice/.config/tether")
    text = render_ssh_config(_input(root), ["ACME-0001", "m-2"])
    assert text == (
        "# Tether: engineer alice, vendor service https://tether.example.com.\n"
        "# Written by `tether ssh-config`; run it again to add machines. Then: ssh SERIAL\n"
        "\n"
        "Host tether-relay\n"
        "    HostName relay.example.com\n"
        "    Port 2222\n"
        "    User alice\n"
        "    UserKnownHostsFile /home/alice/.config/tether/known_hosts\n"
        "    StrictHostKeyChecking yes\n"
        "    IdentityFile /home/alice/.config/tether/id_ed25519\n"
        "    CertificateFile /home/alice/.config/tether/id_ed25519-cert.pub\n"
        "    IdentitiesOnly yes\n"
        "\n"
        "Host ACME-0001 acme-0001\n"
        "    HostName ACME-0001\n"
        "    User tether-support\n"
        "    ProxyJump tether-relay\n"
        "    UserKnownHostsFile /home/alice/.config/tether/known_machines\n"
        "    StrictHostKeyChecking accept-new\n"
        "    IdentityFile /home/alice/.config/tether/id_ed25519\n"
        "    CertificateFile /home/alice/.config/tether/id_ed25519-cert.pub\n"
        "    IdentitiesOnly yes\n"
        "\n"
        "Host m-2\n"
        "    HostName m-2\n"
        "    User tether-support\n"
        "    ProxyJump tether-relay\n"
        "    UserKnownHostsFile /home/alice/.config/tether/known_machines\n"
        "    StrictHostKeyChecking accept-new\n"
        "    IdentityFile /home/alice/.config/tether/id_ed25519\n"
        "    CertificateFile /home/alice/.config/tether/id_ed25519-cert.pub\n"
        "    IdentitiesOnly yes\n"
    )


def test_no_machines_gives_relay_block_only() -> None:
    text = render_ssh_config(_input(Path("/s")), [])
    assert text.count("Host ") == 1
    assert "ProxyJump" not in text


def test_paths_with_spaces_and_specials_are_quoted() -> None:
    root = Path("/Users/Alice Smith/Tether state")
    text = render_ssh_config(_input(root), ["M-1"])
    assert '    IdentityFile "/Users/Alice Smith/Tether state/id_ed25519"\n' in text
    assert '    CertificateFile "/Users/Alice Smith/Tether state/id_ed25519-cert.pub"\n' in text
    assert '    UserKnownHostsFile "/Users/Alice Smith/Tether state/known_hosts"\n' in text
    assert '    UserKnownHostsFile "/Users/Alice Smith/Tether state/known_machines"\n' in text


@pytest.mark.parametrize(
    ("path", "written"),
    [
        ("/plain/path", "/plain/path"),
        ("/with space/k", '"/with space/k"'),
        ('/quote"d', '"/quote\\"d"'),
        ("/back\\slash", '"/back\\\\slash"'),
        ("/hash#mark", '"/hash#mark"'),
        ("/100%/k", "/100%%/k"),
        ("/100% sure/k", '"/100%% sure/k"'),
    ],
)
def test_ssh_path_quoting(path: str, written: str) -> None:
    assert ssh_path(path) == written


def test_control_characters_in_paths_are_refused() -> None:
    with pytest.raises(BadInput, match="control character"):
        ssh_path("/a\nHost evil")


@pytest.mark.parametrize(
    "changes",
    [
        {"engineer": "alice\n    ProxyCommand evil"},
        {"support_account": "root; x"},
        {"relay_host": "relay example"},
        {"relay_port": 0},
    ],
)
def test_values_that_would_inject_lines_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(BadInput):
        render_ssh_config(_input(Path("/s"), **changes), [])


@pytest.mark.parametrize("serial", ["evil\nHost *", "a b", "*", "-x", "x" * 65, ""])
def test_bad_serials_from_the_service_are_refused(serial: str) -> None:
    with pytest.raises(BadInput):
        render_ssh_config(_input(Path("/s")), [serial])


def test_serials_are_unique_case_insensitively_and_sorted() -> None:
    assert unique_serials(["b-2", "A-1", "a-1", "B-2", "c"]) == ["A-1", "b-2", "c"]


# --- ~/.ssh/config ----------------------------------------------------------------


def test_include_argument_uses_tilde_under_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert include_argument(home / ".config/tether/ssh_config", home) == (
        "~/.config/tether/ssh_config"
    )
    assert include_argument(Path("/elsewhere/ssh config"), home) == '"/elsewhere/ssh config"'


def test_install_creates_config_when_missing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    target = home / ".config" / "tether" / "ssh_config"
    result = install_include(target, home=home, now=NOW)
    config = home / ".ssh" / "config"
    assert result.changed
    assert result.backup is None
    assert result.line == "Include ~/.config/tether/ssh_config"
    assert config.read_text().splitlines()[1] == "Include ~/.config/tether/ssh_config"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE((home / ".ssh").stat().st_mode) == 0o700


def test_install_puts_include_first_backs_up_and_is_idempotent(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    config = home / ".ssh" / "config"
    original = "Host work\n    User me\n"
    config.write_text(original)
    config.chmod(0o640)
    target = home / ".config" / "tether" / "ssh_config"

    first = install_include(target, home=home, now=NOW)
    assert first.changed
    assert first.backup == home / ".ssh" / "config.tether-backup-20300601-120000"
    assert first.backup.read_text() == original
    text = config.read_text()
    lines = text.splitlines()
    assert lines.index("Include ~/.config/tether/ssh_config") < lines.index("Host work")
    assert text.endswith(original)
    assert stat.S_IMODE(config.stat().st_mode) == 0o640

    second = install_include(target, home=home, now=NOW)
    assert not second.changed
    assert second.backup is None
    assert config.read_text() == text


def test_install_recognises_an_include_written_by_hand(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    config = home / ".ssh" / "config"
    target = home / ".config" / "tether" / "ssh_config"
    config.write_text(f"include {target}\nHost x\n")
    assert not install_include(target, home=home, now=NOW).changed


def test_install_is_idempotent_for_a_quoted_path_outside_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    target = tmp_path / "state dir" / "100%" / "ssh_config"
    first = install_include(target, home=home, now=NOW)
    assert first.line == f'Include "{target}"'
    assert not install_include(target, home=home, now=NOW).changed
    assert (home / ".ssh" / "config").read_text().count("Include") == 1
