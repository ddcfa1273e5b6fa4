"""Opening and closing support access on a real machine (tether mode, sshd drop-in).

Everything is observed the way a customer or an engineer would: stock ``ssh`` logins
with vendor-signed certificates, ``sudo``, sshd's log and effective configuration, and
the bytes of the files under /etc/ssh before and after.
"""

from __future__ import annotations

import subprocess
import tarfile
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from tests.fixtures.sandbox import SandboxFactory
from tests.integration.agent.machine.helpers import (
    ACCOUNT,
    ENGINEER_ID,
    WATCHED,
    Keys,
    account_line,
    authorize,
    call,
    effective,
    open_ok,
    read_line,
    refused,
    shadow_fields,
    ssh,
    ssh_argv,
    tree,
)
from tether.agent.machine.effects import ACCOUNT_COMMENT, BLOCK_BEGIN
from tether.sandbox import Sandbox

pytestmark = pytest.mark.sandbox

FORWARD_PORT = 2222
_PROBE = """
import socket, sys, time
deadline = time.monotonic() + 10
while True:
    try:
        sock = socket.create_connection(("127.0.0.1", {port}), timeout=5)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.05)
sock.settimeout(5)
try:
    print(repr(sock.recv(64)))
except OSError as exc:
    print(repr(exc))
"""


def _local_forward(box: Sandbox, key: Path, user: str) -> tuple[str, str]:
    """``ssh -N -L 2222:127.0.0.1:22`` as ``user``.

    Returns what a client of port 2222 received, and ssh's stderr.
    """
    argv = ssh_argv(key, user, "", "-N", "-L", f"127.0.0.1:{FORWARD_PORT}:127.0.0.1:22")
    forward = box.popen(
        [a for a in argv if a], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        probe = box.run(["python3", "-c", _PROBE.format(port=FORWARD_PORT)], timeout=30)
        assert probe.returncode == 0, probe.stderr
    finally:
        forward.terminate()
        _, stderr = forward.communicate(timeout=10)
    return probe.stdout.strip(), stderr


def test_tether_mode_certificate_login_sudo_and_refusals(sandbox: Sandbox, tmp_path: Path) -> None:
    keys = Keys(tmp_path / "keys")
    authorize(sandbox, keys.plain, "root")
    files_before = tree(sandbox, *WATCHED)
    root_before = effective(sandbox)
    grant = keys.grant()

    answer = open_ok(sandbox, grant)
    assert "machine.sshd.drop_in_written" in answer["log"]
    drop_in = sandbox.host_path("/etc/ssh/sshd_config.d/tether.conf").read_text()
    assert f"Match User {ACCOUNT} Address 127.0.0.1,::1\n" in drop_in
    assert BLOCK_BEGIN not in sandbox.host_path("/etc/ssh/sshd_config").read_text()
    sudoers = sandbox.host_path("/etc/sudoers.d/tether-support")
    assert sudoers.stat().st_mode & 0o777 == 0o440
    assert f"{ACCOUNT} ALL=(ALL:ALL) NOPASSWD: ALL" in sudoers.read_text()
    assert ACCOUNT_COMMENT in account_line(sandbox)
    shadow = shadow_fields(sandbox)
    assert shadow[1] == "*"  # no usable password, and not a '!' lock
    expiry = datetime.fromisoformat(grant["expires_at"]).astimezone(UTC).date() + timedelta(days=1)
    assert int(shadow[7]) == (expiry - date(1970, 1, 1)).days

    login = ssh(sandbox, keys.engineer, ACCOUNT, "id -un; sudo -n true && echo sudo-ok")
    assert login.returncode == 0, login.stderr + sandbox.sshd_log()
    assert login.stdout.split() == [ACCOUNT, "sudo-ok"]
    assert f"Accepted publickey for {ACCOUNT}" in sandbox.sshd_log()
    assert f"ID {ENGINEER_ID} (serial" in sandbox.sshd_log()

    authorize(sandbox, keys.plain, ACCOUNT)
    assert refused(ssh(sandbox, keys.plain, ACCOUNT, "true"))
    assert refused(ssh(sandbox, keys.expired, ACCOUNT, "true"))
    assert "expired" in sandbox.sshd_log()
    assert refused(ssh(sandbox, keys.wrong_principal, ACCOUNT, "true"))
    assert "does not contain an authorized principal" in sandbox.sshd_log()

    assert effective(sandbox) == root_before
    got, said = _local_forward(sandbox, keys.engineer, ACCOUNT)
    assert got == "b''", got  # the channel was refused: nothing came back
    assert "administratively prohibited" in said
    got, _ = _local_forward(sandbox, keys.plain, "root")  # the same forward works for root
    assert got.startswith("b'SSH-2.0-"), got

    # Opening again changes nothing harmful and access keeps working.
    files_open = tree(sandbox, *WATCHED)
    open_ok(sandbox, grant)
    assert tree(sandbox, *WATCHED) == files_open
    assert ssh(sandbox, keys.engineer, ACCOUNT, "true").returncode == 0

    closed = call(sandbox, "close", account=ACCOUNT)
    assert closed["ok"], closed
    report = closed["result"]
    assert report["account_removed"], report
    assert report["sshd_reloaded"], report
    assert report["notes"] == []
    assert account_line(sandbox) == ""
    assert tree(sandbox, *WATCHED) == files_before
    assert effective(sandbox) == root_before
    assert refused(ssh(sandbox, keys.engineer, ACCOUNT, "true"))
    assert ssh(sandbox, keys.plain, "root", "true").returncode == 0
    archive = sandbox.host_path(report["home_archive"])
    assert archive.stat().st_mode & 0o777 == 0o600
    with tarfile.open(archive) as tar:
        assert f"{ACCOUNT}/.ssh/authorized_keys" in tar.getnames()
    assert not sandbox.host_path("/var/lib/tether/backup").exists()

    again = call(sandbox, "close", account=ACCOUNT)
    assert again["ok"], again
    assert again["result"] == {
        "sessions_killed": 0,
        "account_removed": False,
        "home_archive": None,
        "sshd_reloaded": False,
        "notes": [],
    }
    assert tree(sandbox, *WATCHED) == files_before


def test_close_ends_a_live_session_within_a_second(sandbox: Sandbox, tmp_path: Path) -> None:
    keys = Keys(tmp_path / "keys")
    files_before = tree(sandbox, *WATCHED)
    open_ok(sandbox, keys.grant())
    command = "echo ready; sudo -n sleep 60 & sleep 60"
    session = sandbox.popen(
        ssh_argv(keys.engineer, ACCOUNT, command),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ended: list[float] = []

    def wait_for_end() -> None:
        session.wait()
        ended.append(time.monotonic())

    watcher = threading.Thread(target=wait_for_end)
    try:
        assert read_line(session) == "ready", sandbox.sshd_log()
        time.sleep(0.2)  # let the backgrounded `sudo sleep` start as well
        watcher.start()
        closed = call(sandbox, "close", account=ACCOUNT)
        watcher.join(10)
    finally:
        if session.poll() is None:
            session.kill()
        session.communicate(timeout=10)
    assert closed["ok"], closed
    assert ended, "the ssh session outlived close()"
    assert ended[0] - closed["started"] <= 1.0, ended[0] - closed["started"]
    report = closed["result"]
    # One session (connection) ended, though it had several processes: sshd (user
    # side), bash, sleep, sudo and root's `sleep` under sudo, all gone (see below).
    assert report["sessions_killed"] == 1, report
    assert report["account_removed"], report
    assert account_line(sandbox) == ""
    assert sandbox.run(["pgrep", "-f", "sleep 60"]).stdout == ""
    assert tree(sandbox, *WATCHED) == files_before


def test_close_cleans_up_half_applied_state(sandbox_factory: SandboxFactory) -> None:
    box = sandbox_factory()
    files_before = tree(box, *WATCHED)
    box.run(["useradd", "--create-home", "--comment", ACCOUNT_COMMENT, ACCOUNT], check=True)
    box.run(["touch", "/etc/sudoers.d/tether-support"], check=True)
    closed = call(box, "close", account=ACCOUNT)
    assert closed["ok"], closed
    assert closed["result"]["account_removed"], closed
    assert closed["result"]["home_archive"] is not None
    assert account_line(box) == ""
    assert tree(box, *WATCHED) == files_before
    assert call(box, "kill", account=ACCOUNT)["result"] == 0
