"""The relay's TLS certificate: made, described, and named in the demo's relay.toml."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tether.demo_fleet import add_to_relay_toml
from tether.tlscert import ISSUER_MAX, identity_of, issuer_of, write_self_signed


def test_tls_keys_go_with_the_top_level_keys_not_into_a_table(tmp_path: Path) -> None:
    config = tmp_path / "relays" / "relay-1.toml"
    config.parent.mkdir()
    config.write_text('relay_id = "relay-1"\n\n[metrics]\nlisten = "127.0.0.1:9100"\n')
    cert, key = tmp_path / "relay_tls.crt", tmp_path / "relay_tls.key"
    write_self_signed("127.0.0.1", cert, key)
    add_to_relay_toml(config, cert, key)
    parsed = tomllib.loads(config.read_text())
    assert parsed["tls_certificate"] == "../relay_tls.crt"
    assert parsed["tls_key"] == "../relay_tls.key"
    assert parsed["metrics"] == {"listen": "127.0.0.1:9100"}
    assert key.stat().st_mode & 0o077 == 0


def test_identity_names_the_self_signed_issuer_and_a_sha256(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    write_self_signed("relay.example", cert, key)
    fingerprint, issuer = identity_of(cert)
    assert issuer == "CN=relay.example"
    assert len(fingerprint) == 64
    assert int(fingerprint, 16) >= 0


def test_an_issuer_with_terminal_escapes_is_shown_harmless() -> None:
    """A proxy names its CA as it likes; `tether access check` prints it to a terminal."""
    key = ec.generate_private_key(ec.SECP256R1())
    evil = "\x1b]0;pwned\x07\x1b[2J" + "A" * 40
    long = [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "B" * 60) for _ in range(5)]
    name = x509.Name([*long, x509.NameAttribute(NameOID.COMMON_NAME, evil)])  # shown first
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    shown = issuer_of(cert.public_bytes(serialization.Encoding.DER))
    assert "\x1b" not in shown
    assert "\x07" not in shown
    assert shown.startswith("CN=?]0\\;pwned??[2JAAA")  # RFC 4514 escapes the ;
    assert len(shown) == ISSUER_MAX
