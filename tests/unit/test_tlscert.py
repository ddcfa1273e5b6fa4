"""The relay's TLS certificate: made, described, and named in the demo's relay.toml."""

from __future__ import annotations

import tomllib
from pathlib import Path

from tether.demo_fleet import add_to_relay_toml
from tether.tlscert import identity_of, write_self_signed


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
