"""The engineer's state directory: modes, settings round trip, certificate expiry by the clock."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tether.certs import sign_engineer_certificate
from tether.clock import FrozenClock
from tether.engineer.state import (
    CertificateExpired,
    CertificateInfo,
    EngineerState,
    NotLoggedIn,
    Settings,
    check_certificate,
    default_state_dir,
)
from tether.errors import ConfigError
from tether.sshlib import asyncssh

NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)
CA = asyncssh.generate_private_key("ssh-ed25519")
KEY = asyncssh.generate_private_key("ssh-ed25519")
VENDOR = "https://tether.example.com"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _info(valid_before: datetime, valid_after: datetime | None = None) -> CertificateInfo:
    return CertificateInfo(
        valid_after=valid_after or valid_before - timedelta(hours=8),
        valid_before=valid_before,
        principals=("alice", "tether-support"),
        key_id="alice",
    )


def _settings(root: Path) -> Settings:
    return Settings(
        vendor=VENDOR,
        engineer="alice",
        relay_host="relay.example.com",
        relay_port=2222,
        support_account="tether-support",
        key=root / "id_ed25519",
        certificate=root / "id_ed25519-cert.pub",
        token_expires_at=NOW + timedelta(hours=12),
    )


# --- directory and files -----------------------------------------------------------


def test_default_dir_and_override() -> None:
    assert default_state_dir({"TETHER_ENGINEER_DIR": "/tmp/x"}) == Path("/tmp/x")
    assert default_state_dir({"HOME": os.environ.get("HOME", "/")}).parts[-2:] == (
        ".config",
        "tether",
    )


def test_directory_is_0700_and_secrets_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        state = EngineerState(tmp_path / "deep" / "state")
        state.save_token("secret-token")
        state.save_settings(_settings(state.root))
        state.save_known_hosts("relay.example.com", 2222, "ssh-ed25519 AAAAC3 relay")
    finally:
        os.umask(old)
    assert _mode(state.root) == 0o700
    assert _mode(state.token_path) == 0o600
    assert _mode(state.settings_path) == 0o644
    assert state.token_path.read_text() == "secret-token\n"
    assert state.load_token(vendor=VENDOR) == "secret-token"


def test_modes_are_exact_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        state = EngineerState(tmp_path / "s")
        state.save_settings(_settings(state.root))
    finally:
        os.umask(old)
    assert _mode(state.settings_path) == 0o644


def test_existing_loose_directory_is_tightened(tmp_path: Path) -> None:
    root = tmp_path / "s"
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    EngineerState(root).save_token("t")
    assert _mode(root) == 0o700


def test_rewrite_replaces_atomically_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    state = EngineerState(tmp_path / "s")
    state.save_token("one")
    state.save_token("two")
    assert state.load_token(vendor=VENDOR) == "two"
    assert sorted(p.name for p in state.root.iterdir()) == ["token"]


def test_known_hosts_line_format(tmp_path: Path) -> None:
    state = EngineerState(tmp_path / "s")
    state.save_known_hosts("relay.example.com", 2222, "ssh-ed25519 AAAAkey comment here")
    assert state.known_hosts_path.read_text() == "[relay.example.com]:2222 ssh-ed25519 AAAAkey\n"
    state.save_known_hosts("relay.example.com", 22, "ssh-ed25519 AAAAkey")
    assert state.known_hosts_path.read_text() == "relay.example.com ssh-ed25519 AAAAkey\n"


def test_settings_round_trip(tmp_path: Path) -> None:
    state = EngineerState(tmp_path / "s")
    settings = _settings(state.root)
    state.save_settings(settings)
    assert state.load_settings() == settings
    assert "token" not in state.settings_path.read_text().replace("token_expires_at", "")


def test_not_logged_in_says_how(tmp_path: Path) -> None:
    state = EngineerState(tmp_path / "empty")
    with pytest.raises(NotLoggedIn, match="tether login --vendor") as caught:
        state.load_settings()
    assert caught.value.exit_code == 1
    with pytest.raises(NotLoggedIn, match=f"tether login --vendor {VENDOR}"):
        state.load_token(vendor=VENDOR)


@pytest.mark.parametrize(
    "text",
    ["not toml [", 'vendor = "x"\n', 'surprise = "x"\n', "vendor = 3\n"],
)
def test_damaged_settings_are_reported(tmp_path: Path, text: str) -> None:
    state = EngineerState(tmp_path / "s")
    state.ensure_dir()
    state.settings_path.write_text(text)
    with pytest.raises(ConfigError):
        state.load_settings()


# --- certificate expiry ------------------------------------------------------------


def test_valid_certificate_passes() -> None:
    check_certificate(_info(NOW + timedelta(hours=8)), NOW, vendor=VENDOR)
    check_certificate(_info(NOW + timedelta(seconds=61)), NOW, vendor=VENDOR)


def test_expired_certificate_says_when_and_how_to_log_in() -> None:
    end = NOW - timedelta(minutes=5)
    with pytest.raises(CertificateExpired) as caught:
        check_certificate(_info(end), NOW, vendor=VENDOR)
    message = str(caught.value)
    assert message.startswith("your certificate expired at 11:55 UTC (2030-06-01, 5m ago)")
    assert f"run `tether login --vendor {VENDOR}` again" in message
    assert caught.value.exit_code == 1


@pytest.mark.parametrize("left", [timedelta(seconds=60), timedelta(seconds=1), timedelta(0)])
def test_certificate_expiring_within_a_minute_counts_as_expired(left: timedelta) -> None:
    with pytest.raises(CertificateExpired, match="your certificate expire"):
        check_certificate(_info(NOW + left), NOW, vendor=VENDOR)


def test_certificate_from_the_future_points_at_the_clock() -> None:
    info = _info(NOW + timedelta(hours=9), valid_after=NOW + timedelta(hours=1))
    with pytest.raises(CertificateExpired, match="check this computer's clock"):
        check_certificate(info, NOW, vendor=VENDOR)


def test_session_checks_the_stored_certificate_with_the_given_clock(tmp_path: Path) -> None:
    state = EngineerState(tmp_path / "s")
    settings = _settings(state.root)
    cert = sign_engineer_certificate(
        CA, KEY.convert_to_public(), engineer="alice", now=NOW, ttl=timedelta(hours=8)
    )
    state.save_settings(settings)
    state.write(settings.certificate, cert.openssh().encode() + b"\n", 0o644)
    clock = FrozenClock(NOW)
    session = state.session(clock)
    assert session.certificate.valid_before == NOW + timedelta(hours=8)
    assert session.certificate.valid_after == NOW - timedelta(minutes=1)
    assert session.certificate.principals == ("alice", "tether-support")
    clock.advance(timedelta(hours=7, minutes=59))
    with pytest.raises(CertificateExpired, match="expires at 20:00 UTC"):
        state.session(clock)
    clock.advance(timedelta(minutes=2))
    with pytest.raises(CertificateExpired, match="expired at 20:00 UTC"):
        state.session(clock)


def test_a_file_that_is_not_a_certificate_is_reported(tmp_path: Path) -> None:
    state = EngineerState(tmp_path / "s")
    settings = _settings(state.root)
    state.save_settings(settings)
    state.write(settings.certificate, KEY.export_public_key(), 0o644)
    with pytest.raises(ConfigError, match="not an OpenSSH user certificate"):
        state.session(FrozenClock(NOW))
