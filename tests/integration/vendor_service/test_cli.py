"""`tether vendor serve`, `engineer add --password-prompt`, `engineer totp`, `machine rebind`, `cases`."""

from __future__ import annotations

import asyncio
import json
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from argon2 import PasswordHasher
from click.testing import CliRunner

from tether.audit import AuditEntry
from tether.cli import main
from tether.store import ChainReport, Store, sqlite_url

PASSWORD = "a long enough password"


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def tether(*args: str, input: str | None = None) -> Ran:
    """Run ``tether ARGS`` in-process (stdin is not a terminal)."""
    result = CliRunner().invoke(main, list(args), input=input or "", catch_exceptions=False)
    return Ran(result.exit_code, result.stdout, result.stderr)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "vendor"
    result = tether(
        "vendor", "init", "--data-dir", str(path), "--vendor", "ACME", "--relay", "127.0.0.1:2222"
    )
    assert result.returncode == 0, result.stderr
    return path


def _store_call(data: Path, fn: str, *args: object) -> object:
    async def go() -> object:
        async with await Store.open(sqlite_url(data / "tether.db")) as store:
            repo_name, method = fn.split(".")
            return await getattr(getattr(store, repo_name), method)(*args)

    return asyncio.run(go())


def _audit(data: Path) -> list[AuditEntry]:
    async def go() -> ChainReport:
        async with await Store.open(sqlite_url(data / "tether.db")) as store:
            return await store.audit.read("vendor")

    report = asyncio.run(go())
    assert report.verification.ok, report.verification.problems
    return list(report.entries)


def _events(data: Path) -> list[tuple[str, dict[str, object]]]:
    return [(e.event, dict(e.fields)) for e in _audit(data)]


def _audit_text(data: Path) -> str:
    return "\n".join(e.to_json_line() for e in _audit(data))


def test_engineer_add_with_password_from_stdin(data: Path) -> None:
    added = tether(
        "vendor",
        "engineer",
        "add",
        "alice",
        "--admin",
        "--password-prompt",
        "--data-dir",
        str(data),
        input=PASSWORD + "\n",
    )
    assert added.returncode == 0, added.stderr
    assert "Added admin alice" in added.stdout
    assert PASSWORD not in added.stdout + added.stderr
    creds = _store_call(data, "engineers.credentials", "alice")
    assert creds.admin  # type: ignore[attr-defined]
    assert PasswordHasher().verify(creds.password_hash, PASSWORD)  # type: ignore[attr-defined]
    assert ("engineer.added", {"engineer": "alice", "admin": True, "by": "vendor-cli"}) in _events(
        data
    )
    assert PASSWORD not in _audit_text(data)


@pytest.mark.parametrize(
    ("stdin", "words"), [("short\n", "12 to 1024"), ("", "no password on stdin")]
)
def test_engineer_add_refuses_a_bad_password(data: Path, stdin: str, words: str) -> None:
    result = tether(
        "vendor",
        "engineer",
        "add",
        "bob",
        "--password-prompt",
        "--data-dir",
        str(data),
        input=stdin,
    )
    assert result.returncode == 2
    assert words in result.stderr
    assert _store_call(data, "engineers.get", "bob") is None


def test_engineer_add_without_password_and_totp(data: Path) -> None:
    assert tether("vendor", "engineer", "add", "carol", "--data-dir", str(data)).returncode == 0
    totp = tether("vendor", "engineer", "totp", "carol", "--data-dir", str(data))
    assert totp.returncode == 0, totp.stderr
    uri = totp.stdout.strip()
    assert uri.startswith("otpauth://totp/")
    secret = parse_qs(urlparse(uri).query)["secret"][0]
    creds = _store_call(data, "engineers.credentials", "carol")
    assert creds.totp_secret == secret  # type: ignore[attr-defined]
    assert secret not in _audit_text(data)
    off = tether("vendor", "engineer", "totp", "carol", "--off", "--data-dir", str(data))
    assert off.returncode == 0
    creds = _store_call(data, "engineers.credentials", "carol")
    assert creds.totp_secret is None  # type: ignore[attr-defined]
    ghost = tether("vendor", "engineer", "totp", "ghost", "--data-dir", str(data))
    assert ghost.returncode == 2
    assert "no engineer named 'ghost'" in ghost.stderr


def test_machine_rebind_and_cases(data: Path) -> None:
    unknown = tether(
        "vendor", "machine", "rebind", "ACME-1", "--reason", "x", "--data-dir", str(data)
    )
    assert unknown.returncode == 2
    assert "no machine is bound to serial 'ACME-1'" in unknown.stderr
    lookalike = tether(
        "vendor", "machine", "rebind", "ACME-1.", "--reason", "x", "--data-dir", str(data)
    )
    assert lookalike.returncode == 2
    assert "invalid serial 'ACME-1.'" in lookalike.stderr
    now = datetime.now(UTC)
    _store_call(data, "machines.bind_first_use", "ACME-1", "SHA256:old", now)
    rebound = tether(
        "vendor",
        "machine",
        "rebind",
        "acme-1",
        "--reason",
        "new mainboard",
        "--data-dir",
        str(data),
    )
    assert rebound.returncode == 0, rebound.stderr
    machine = _store_call(data, "machines.get", "ACME-1")
    assert machine.machine_key is None  # type: ignore[attr-defined]
    assert (
        "machine.rebound",
        {"serial": "ACME-1", "by": "vendor-cli", "reason": "new mainboard"},
    ) in _events(data)

    async def open_case() -> None:
        async with await Store.open(sqlite_url(data / "tether.db")) as store:
            await store.cases.open(
                serial="ACME-1", machine_key="SHA256:m", description="fan\nnoise", now=now
            )

    asyncio.run(open_case())
    listed = tether("vendor", "cases", "--json", "--data-dir", str(data))
    assert listed.returncode == 0, listed.stderr
    (case,) = json.loads(listed.stdout)
    assert (case["serial"], case["machine_key"], case["status"], case["description"]) == (
        "ACME-1",
        "SHA256:m",
        "pending",
        "fan\nnoise",
    )
    text = tether("vendor", "cases", "--status", "pending", "--data-dir", str(data))
    assert "pending  ACME-1  machine SHA256:m" in text.stdout
    assert "fan" in text.stdout
    none = tether("vendor", "cases", "--status", "issued", "--data-dir", str(data))
    assert none.stdout.strip() == "No cases."


def _first_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if selector.select(timeout=0.1):
            return proc.stdout.readline()
        if proc.poll() is not None:
            break
    raise AssertionError(f"no output from `tether vendor serve` (exit {proc.poll()})")


def test_serve_prints_its_url_and_stops_cleanly_on_sigterm(data: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tether",
            "vendor",
            "serve",
            "--data-dir",
            str(data),
            "--listen",
            "127.0.0.1:0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = _first_line(proc, timeout=30)
        assert line.startswith("Vendor service on http://127.0.0.1:"), line
        url = line.split()[3]
        assert "one-click policy: hold" in line
        response = httpx.get(f"{url}/openapi.json", timeout=10)
        assert response.status_code == 200
        assert response.json()["info"]["title"] == "Tether vendor service (ACME)"
        proc.send_signal(signal.SIGTERM)
        out, errors = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, errors
    assert "stopped" in out
    assert "Traceback" not in errors


def test_serve_refuses_a_bad_listen_address(data: Path) -> None:
    result = tether("vendor", "serve", "--data-dir", str(data), "--listen", "nowhere")
    assert result.returncode == 2
    assert "invalid listen address" in result.stderr


def test_serve_on_a_busy_port_says_only_that(data: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "tether", "vendor", "serve", "--data-dir", str(data),
             "--listen", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use; stop what uses it "
        "or choose another --listen"
    ]
    assert result.stdout == ""


def test_serve_help_states_the_real_default_policy(data: Path) -> None:
    shown = tether("vendor", "serve", "--help")
    words = " ".join(shown.stdout.split())
    assert '"hold" (the default) waits for an engineer' in words
    assert '"auto" (default)' not in words
    config = (data / "vendor.toml").read_text()
    assert '"hold" (default)' in config  # what vendor init writes says the same


def _open_cases(data: Path, *serials: str) -> list[int]:
    async def go() -> list[int]:
        async with await Store.open(sqlite_url(data / "tether.db")) as store:
            opened = []
            for serial in serials:
                case = await store.cases.open(
                    serial=serial,
                    machine_key=f"SHA256:{serial}",
                    description=f"{serial} is down",
                    now=datetime.now(UTC),
                )
                opened.append(case.id)
            return opened

    return asyncio.run(go())


def test_cases_approve_and_deny_decide_as_the_console_does(data: Path) -> None:
    first, second, third = _open_cases(data, "ACME-1", "ACME-2", "ACME-3")
    where = ("--data-dir", str(data))

    approved = tether("vendor", "cases", "approve", str(first), "--json", *where)
    denied = tether(
        "vendor", "cases", "deny", str(second), "--reason", "no support contract", *where
    )
    before_group = tether("vendor", "cases", *where, "approve", str(third))
    again = tether("vendor", "cases", "deny", str(first), *where)
    unknown = tether("vendor", "cases", "approve", "99", *where)
    bad_reason = tether("vendor", "cases", "deny", str(first), "--reason", "x\x00y", *where)

    assert approved.returncode == 0, approved.stderr
    case = json.loads(approved.stdout)
    assert (case["id"], case["status"], case["decided_by"]) == (first, "issued", "vendor-cli")
    keys = json.loads(tether("vendor", "keys", "--serial", "ACME-1", "--json", *where).stdout)
    assert [k["key_id"] for k in keys] == [case["key_id"]]
    assert denied.returncode == 0, denied.stderr
    assert f"Case #{second} denied; ACME-2 is told: no support contract" in denied.stdout
    assert before_group.returncode == 0, before_group.stderr
    assert f"Case #{third} approved: key " in before_group.stdout
    assert again.returncode == 1
    assert f"case {first} is already issued" in again.stderr
    assert unknown.returncode == 2
    assert "no case 99" in unknown.stderr
    assert bad_reason.returncode == 2
    listed = {c["id"]: c for c in json.loads(tether("vendor", "cases", "--json", *where).stdout)}
    assert listed[second]["deny_reason"] == "no support contract"
    events = [(e, f.get("case_id"), f.get("by")) for e, f in _events(data) if e.startswith("case.")]
    assert events == [
        ("case.approved", first, "vendor-cli"),
        ("case.denied", second, "vendor-cli"),
        ("case.approved", third, "vendor-cli"),
    ]


def test_engineer_and_machine_commands_answer_in_json(data: Path) -> None:
    where = ("--data-dir", str(data))
    added = tether("vendor", "engineer", "add", "ann", "--admin", "--json", *where)
    totp = tether("vendor", "engineer", "totp", "ann", "--json", *where)
    off = tether("vendor", "engineer", "totp", "ann", "--off", "--json", *where)
    removed = tether("vendor", "engineer", "remove", "ann", "--json", *where)
    _store_call(data, "machines.bind_first_use", "ACME-9", "SHA256:old", datetime.now(UTC))
    rebound = tether(
        "vendor", "machine", "rebind", "ACME-9", "--reason", "new board", "--json", *where
    )

    assert json.loads(added.stdout) == {"engineer": "ann", "admin": True, "password_set": False}
    enabled = json.loads(totp.stdout)
    assert enabled["totp"] is True
    assert enabled["otpauth_uri"].startswith("otpauth://totp/")
    assert json.loads(off.stdout) == {"engineer": "ann", "totp": False, "otpauth_uri": None}
    assert json.loads(removed.stdout) == {"engineer": "ann", "removed": True}
    assert json.loads(rebound.stdout) == {
        "serial": "ACME-9",
        "rebound": True,
        "by": "vendor-cli",
        "reason": "new board",
    }
