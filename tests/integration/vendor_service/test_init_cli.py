"""`tether vendor …` and `tether relay serve` as the vendor's admins type them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def tether(
    *args: str, input: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tether", *args],
        capture_output=True,
        text=True,
        input=input,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "vendor"
    result = tether(
        "vendor", "init", "--data-dir", str(path), "--vendor", "ACME", "--relay", "127.0.0.1:2222"
    )
    assert result.returncode == 0, result.stderr
    return path


def test_init_creates_keys_with_private_modes_and_refuses_to_overwrite(data: Path) -> None:
    for name in ("tether_signing_key.pem", "engineer_ca", "relay_host_key"):
        assert (data / name).stat().st_mode & 0o077 == 0, name
    trust = (data / "agent-trust.toml").read_text()
    assert 'vendor_keys = ["k4.public.' in trust
    signing_key_before = (data / "tether_signing_key.pem").read_bytes()
    again = tether(
        "vendor", "init", "--data-dir", str(data), "--vendor", "ACME", "--relay", "127.0.0.1:2222"
    )
    assert again.returncode == 1
    assert "refusing to overwrite" in again.stderr
    assert (data / "tether_signing_key.pem").read_bytes() == signing_key_before


def test_issue_key_prints_only_the_key_on_stdout(data: Path) -> None:
    result = tether(
        "vendor", "issue-key", "--serial", "ACME-1", "--expires", "12w", "--data-dir", str(data)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("v4.public.")
    assert len(result.stdout.strip().splitlines()) == 1
    assert "ports 22,80,443" in result.stderr
    as_json = tether(
        "vendor",
        "issue-key",
        "--serial",
        "ACME-1",
        "--ports",
        "443, 22",
        "--json",
        "--data-dir",
        str(data),
    )
    body = json.loads(as_json.stdout)
    assert body["ports"] == [22, 443]
    assert body["serial"] == "ACME-1"
    listed = json.loads(tether("vendor", "keys", "--json", "--data-dir", str(data)).stdout)
    assert {k["key_id"] for k in listed} >= {body["key_id"]}


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--serial", "S", "--expires", "13w"], "at most 12 weeks"),
        (["--serial", "S", "--expires", "tomorrow"], "cannot read duration"),
        (["--serial", "bad serial"], "invalid serial"),
        (["--serial", "S", "--ports", "22,99999"], "invalid port"),
        (["--serial", "S", "--relay", "nowhere"], "use HOST:PORT"),
    ],
)
def test_issue_key_bad_input_exits_2(data: Path, args: list[str], words: str) -> None:
    result = tether("vendor", "issue-key", *args, "--data-dir", str(data))
    assert result.returncode == 2
    assert words in result.stderr
    assert "Traceback" not in result.stderr
    assert json.loads(tether("vendor", "keys", "--json", "--data-dir", str(data)).stdout) == []


def test_sign_certificate_for_known_engineer_only(data: Path, tmp_path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True
    )
    unknown = tether(
        "vendor",
        "sign",
        "--engineer",
        "alice",
        "--pubkey",
        str(tmp_path / "k.pub"),
        "--data-dir",
        str(data),
    )
    assert unknown.returncode == 1
    assert "no engineer 'alice'" in unknown.stderr
    assert tether("vendor", "engineer", "add", "alice", "--data-dir", str(data)).returncode == 0
    too_long = tether(
        "vendor",
        "sign",
        "--engineer",
        "alice",
        "--pubkey",
        str(tmp_path / "k.pub"),
        "--ttl",
        "8d",
        "--data-dir",
        str(data),
    )
    assert too_long.returncode == 2
    assert "at most 7 days" in too_long.stderr
    private = tether(
        "vendor",
        "sign",
        "--engineer",
        "alice",
        "--pubkey",
        str(tmp_path / "k"),
        "--data-dir",
        str(data),
    )
    assert private.returncode == 2  # a private key file is not what --pubkey wants
    out = tmp_path / "k-cert.pub"
    ok = tether(
        "vendor",
        "sign",
        "--engineer",
        "alice",
        "--pubkey",
        str(tmp_path / "k.pub"),
        "--out",
        str(out),
        "--data-dir",
        str(data),
    )
    assert ok.returncode == 0, ok.stderr
    shown = subprocess.run(
        ["ssh-keygen", "-L", "-f", str(out)], capture_output=True, text=True, check=True
    ).stdout
    assert 'Key ID: "alice"' in shown
    assert "tether-support" in shown
    assert "permit-agent-forwarding" not in shown


@pytest.mark.parametrize("name", ["Root", "a b", "x;rm", "root", "tether-agent"])
def test_engineer_names_are_checked(data: Path, name: str) -> None:
    result = tether("vendor", "engineer", "add", name, "--data-dir", str(data))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_revoke_unknown_key_exits_2(data: Path) -> None:
    result = tether("vendor", "revoke-key", "nope", "--data-dir", str(data))
    assert result.returncode == 2
    assert "nope" in result.stderr


def test_missing_vendor_setup_says_how_to_make_one(tmp_path: Path) -> None:
    result = tether("vendor", "issue-key", "--serial", "S", "--data-dir", str(tmp_path / "none"))
    assert result.returncode == 1
    assert "tether vendor init" in result.stderr


def test_relay_serve_runs_until_sigterm(data: Path) -> None:
    relay = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tether",
            "relay",
            "serve",
            "--config",
            str(data / "relay.toml"),
            "--listen",
            "127.0.0.1:0",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert relay.stderr is not None
        deadline = time.monotonic() + 20
        line = ""
        while time.monotonic() < deadline and "relay listening on" not in line:
            line = relay.stderr.readline()
        port = int(line.rsplit(":", 1)[1])
        probe = subprocess.run(
            ["ssh-keyscan", "-p", str(port), "-t", "ed25519", "127.0.0.1"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        fingerprint = (data / "relay_host_key.pub").read_text().split()[1]
        assert fingerprint in probe.stdout
    finally:
        relay.send_signal(signal.SIGTERM)
        code = relay.wait(10)
        if relay.stderr is not None:
            relay.stderr.close()
    assert code == 0


def test_help_teaches(data: Path) -> None:
    for args in (
        ["--help"],
        ["vendor", "issue-key", "--help"],
        ["access", "enable", "--help"],
        ["demo", "--help"],
        ["relay", "serve", "--help"],
    ):
        result = tether(*args)
        assert result.returncode == 0
        assert "Usage:" in result.stdout
        assert result.stderr == ""  # no third-party warning reaches the user
    assert "at most 12 weeks" in tether("vendor", "issue-key", "--help").stdout
    bad = tether("vendor", "no-such-thing")
    assert bad.returncode == 2
