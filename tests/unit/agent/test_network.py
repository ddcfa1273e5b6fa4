"""The agent's ``[network]``: transports, the proxy, its credentials (issue 16)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from tests.unit.test_config import agent_toml, relay_toml, write
from tether.agent.network import (
    DEFAULT_TRANSPORTS,
    NetworkSettings,
    TransportKind,
    read_credentials,
    resolve_proxy,
)
from tether.config import AgentConfig, RelayConfig
from tether.errors import ConfigError


def test_network_defaults_try_every_transport_in_the_documented_order(tmp_path: Path) -> None:
    config = AgentConfig.load(write(tmp_path, agent_toml()))
    assert config.tether.network.transports == DEFAULT_TRANSPORTS
    assert [k.value for k in DEFAULT_TRANSPORTS] == [
        "ssh",
        "tls",
        "websocket-tls",
        "tls-proxy",
        "websocket-tls-proxy",
        "websocket-proxy",
    ]


def test_network_table_is_read(tmp_path: Path) -> None:
    text = agent_toml(
        '[network]\ntransports = ["tls-proxy", "ssh"]\nproxy = "http://proxy.lan:8080"\n'
        'proxy_credentials = "proxy.pass"\n'
    )
    network = AgentConfig.load(write(tmp_path, text)).tether.network
    assert network.transports == (TransportKind.TLS_PROXY, TransportKind.SSH)
    assert network.proxy == "http://proxy.lan:8080"
    assert network.proxy_credentials == tmp_path / "etc" / "proxy.pass"


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ('transports = ["carrier-pigeon"]', "unknown transport 'carrier-pigeon'"),
        ('transports = ["ssh", "ssh"]', "at most once"),
        ('proxy = "http://bob:hunter2@proxy:3128"', "must not hold a user or password"),
        ('proxy = "socks5://proxy:1080"', "only http:// proxies"),
    ],
)
def test_bad_network_settings_are_refused_with_the_fix(
    tmp_path: Path, table: str, words: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        AgentConfig.load(write(tmp_path, agent_toml(f"[network]\n{table}\n")))
    assert words in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_credentials_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "proxy.pass"
    secret.write_text("bob:hunter2\n")
    secret.chmod(0o640)
    with pytest.raises(ConfigError) as caught:
        read_credentials(secret)
    assert f"chmod 600 {secret}" in str(caught.value)
    assert "0640" in str(caught.value)
    assert "hunter2" not in str(caught.value)
    secret.chmod(0o600)
    assert read_credentials(secret) == "bob:hunter2"


def test_proxy_from_config_uses_the_credentials_file(tmp_path: Path) -> None:
    secret = tmp_path / "proxy.pass"
    secret.write_text("bob:hunter2\n")
    secret.chmod(0o600)
    settings = NetworkSettings(proxy="http://proxy:3128", proxy_credentials=secret, environ={})
    proxy = resolve_proxy(settings, "relay.example.com")
    assert proxy is not None
    assert proxy.address == "proxy:3128"
    assert proxy.authorization == "Basic " + base64.b64encode(b"bob:hunter2").decode()
    assert "hunter2" not in repr(proxy)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"HTTPS_PROXY": "http://p:3128"}, "p:3128"),
        ({"https_proxy": "p:8080"}, "p:8080"),
        ({"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "example.com"}, None),
        ({"HTTPS_PROXY": "http://p:3128", "NO_PROXY": ".example.com"}, None),
        ({"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "other.com,*"}, None),
        ({"HTTPS_PROXY": "http://p:3128", "no_proxy": "ample.com"}, "p:3128"),
    ],
)
def test_proxy_from_the_environment_honours_no_proxy(
    environ: dict[str, str], expected: str | None
) -> None:
    proxy = resolve_proxy(NetworkSettings(environ=environ), "relay.example.com")
    assert (proxy.address if proxy else None) == expected


def test_no_proxy_matches_relay_addresses_by_network() -> None:
    env = {"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "10.0.0.0/8"}
    assert resolve_proxy(NetworkSettings(environ=env), "10.1.2.3") is None
    assert resolve_proxy(NetworkSettings(environ=env), "192.0.2.1") is not None


def test_relay_tls_certificate_and_key_go_together(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tls_certificate and tls_key go together"):
        RelayConfig.load(write(tmp_path, relay_toml('tls_certificate = "relay.crt"\n')))
    config = RelayConfig.load(
        write(tmp_path, relay_toml('tls_certificate = "relay.crt"\ntls_key = "relay.key"\n'))
    )
    assert config.tls_key == tmp_path / "etc" / "relay.key"
