"""`tether vendor relay add|list`: each relay of the fleet gets its own id and file."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tether.config import RelayConfig


def tether(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tether", *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def data(tmp_path: Path) -> Path:
    made = tether(
        "vendor", "init", "--data-dir", str(tmp_path / "v"), "--vendor", "ACME",
        "--relay", "relay.example.com:2222",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    return tmp_path / "v"


def test_relay_add_writes_a_config_with_its_own_id_and_the_fleets_keys(data: Path) -> None:
    added = tether(
        "vendor", "relay", "add", "fra-2", "--data-dir", str(data), "--listen", "0.0.0.0:2222",
        "--peer-listen", "10.0.0.12:2223", "--trusted-proxy", "10.0.0.2/32",
        "--metrics-listen", "10.0.0.12:9102", "--json",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    made = json.loads(added.stdout)
    assert made["peer_key_created"] is True
    config = RelayConfig.load(Path(made["config"]))
    assert config.relay_id == "fra-2"
    assert config.host_key == data / "relay_host_key"  # every relay pins-compatible
    assert config.peer_key == data / "relay_peer_key"
    assert config.peer_listen == ("10.0.0.12", 2223)
    assert config.proxy_protocol
    assert config.trusted_proxies == ("10.0.0.2/32",)
    assert config.metrics_listen == ("10.0.0.12", 9102)
    assert (data / "relay_peer_key").stat().st_mode & 0o077 == 0
    # The second relay reuses the fleet's peer key.
    second = tether(
        "vendor", "relay", "add", "fra-3", "--data-dir", str(data), "--listen", "0.0.0.0:2222",
        "--peer-listen", "10.0.0.13:2223", "--json",
    )  # fmt: skip
    assert json.loads(second.stdout)["peer_key_created"] is False
    # The same id twice is refused and changes nothing.
    before = (data / "relays" / "fra-2.toml").read_text()
    again = tether(
        "vendor", "relay", "add", "fra-2", "--data-dir", str(data), "--listen", "0.0.0.0:2",
        "--peer-listen", "10.0.0.99:2223",
    )  # fmt: skip
    assert again.returncode == 1
    assert "relay fra-2 is already provisioned" in again.stderr
    assert (data / "relays" / "fra-2.toml").read_text() == before


@pytest.mark.parametrize("bad", ["Relay-2", "../x", "a b", "", "x_y", "x" * 64])
def test_bad_relay_ids_are_refused_with_what_is_allowed(data: Path, bad: str) -> None:
    result = tether(
        "vendor", "relay", "add", bad, "--data-dir", str(data), "--listen", "0.0.0.0:2222",
        "--peer-listen", "10.0.0.12:2223",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "lower-case letters, digits and '-'" in result.stderr
    assert not (data / "relays").exists() or not any((data / "relays").iterdir())


def test_a_running_relays_id_cannot_be_provisioned_again_and_list_shows_it(data: Path) -> None:
    with socket.socket() as sock:  # a free port for the relay-to-relay listener
        sock.bind(("127.0.0.1", 0))
        peer_port = sock.getsockname()[1]
    added = tether(
        "vendor", "relay", "add", "relay-2", "--data-dir", str(data), "--listen", "127.0.0.1:2222",
        "--peer-listen", f"127.0.0.1:{peer_port}", "--json",
    )  # fmt: skip
    config = Path(json.loads(added.stdout)["config"])
    relay = subprocess.Popen(
        [sys.executable, "-m", "tether", "relay", "serve", "--config", str(config),
         "--listen", "127.0.0.1:0"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert relay.stderr is not None
        deadline = time.monotonic() + 30
        line = ""
        while "relay listening on" not in line:
            assert time.monotonic() < deadline, "the relay did not start"
            assert relay.poll() is None, line
            line = relay.stderr.readline()
        listed = json.loads(
            tether("vendor", "relay", "list", "--data-dir", str(data), "--json").stdout
        )
        assert [(r["relay_id"], r["alive"], r["tethers"]) for r in listed] == [("relay-2", True, 0)]
        config.unlink()  # the file is gone, but the relay runs: its id is still taken
        again = tether(
            "vendor", "relay", "add", "relay-2", "--data-dir", str(data), "--listen", "127.0.0.1:2222",
            "--peer-listen", "127.0.0.1:2223",
        )  # fmt: skip
        assert again.returncode == 1
        assert (
            f"relay id 'relay-2' is in use by the running relay at 127.0.0.1:{peer_port}"
            in again.stderr
        )
    finally:
        relay.send_signal(signal.SIGTERM)
        relay.communicate(timeout=30)
    assert relay.returncode == 0
    shown = tether("vendor", "relay", "list", "--data-dir", str(data))
    assert "No relay has reported itself" in shown.stdout  # a clean stop leaves the fleet
