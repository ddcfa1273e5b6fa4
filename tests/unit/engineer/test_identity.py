"""The engineer's key: generated when missing (0600), or theirs with --key."""

from __future__ import annotations

import stat
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tether.certs import sign_engineer_certificate
from tether.engineer.identity import ensure_key, load_client_identity
from tether.engineer.state import EngineerState
from tether.errors import BadInput, NotReady
from tether.sshlib import asyncssh


def test_key_is_generated_once_with_private_mode(tmp_path: Path) -> None:
    state = EngineerState(tmp_path / "s")
    first = ensure_key(state, None, comment="alice@tether")
    assert first.generated
    assert first.path == state.default_key_path
    assert stat.S_IMODE(first.path.stat().st_mode) == 0o600
    assert first.public_line.startswith("ssh-ed25519 ")
    assert (tmp_path / "s" / "id_ed25519.pub").read_text().strip() == first.public_line
    again = ensure_key(state, None, comment="alice@tether")
    assert not again.generated
    assert again.public_line == first.public_line


def test_own_key_with_passphrase_uses_its_pub_file(tmp_path: Path) -> None:
    path = tmp_path / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret", "-f", str(path)], check=True
    )
    key = ensure_key(EngineerState(tmp_path / "s"), path, comment="x")
    assert key.path == path
    assert key.public_line.split()[:2] == Path(f"{path}.pub").read_text().split()[:2]


def test_own_key_with_passphrase_and_no_pub_file_says_how(tmp_path: Path) -> None:
    path = tmp_path / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret", "-f", str(path)], check=True
    )
    Path(f"{path}.pub").unlink()
    with pytest.raises(BadInput, match="ssh-keygen -y -f"):
        ensure_key(EngineerState(tmp_path / "s"), path, comment="x")


@pytest.mark.parametrize("name", ["missing", "not-a-key"])
def test_bad_own_keys(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    if name == "not-a-key":
        path.write_text("hello\n")
    with pytest.raises(BadInput):
        ensure_key(EngineerState(tmp_path / "s"), path, comment="x")


def test_client_identity_checks_the_certificate_belongs_to_the_key(tmp_path: Path) -> None:
    ca = asyncssh.generate_private_key("ssh-ed25519")
    state = EngineerState(tmp_path / "s")
    key = ensure_key(state, None, comment="x")
    public = asyncssh.import_public_key(key.public_line)
    cert = sign_engineer_certificate(ca, public, engineer="alice", now=datetime.now(UTC))
    cert_path = tmp_path / "s" / "id_ed25519-cert.pub"
    cert_path.write_text(cert.openssh())
    loaded, certificate = load_client_identity(key.path, cert_path)
    assert certificate.key.public_data == loaded.public_data

    other = asyncssh.generate_private_key("ssh-ed25519").convert_to_public()
    cert_path.write_text(
        sign_engineer_certificate(ca, other, engineer="alice", now=datetime.now(UTC)).openssh()
    )
    with pytest.raises(BadInput, match="does not belong to"):
        load_client_identity(key.path, cert_path)
    with pytest.raises(NotReady, match="is missing"):
        load_client_identity(key.path, tmp_path / "nope-cert.pub")
