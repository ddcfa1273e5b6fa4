"""Direct mode's source addresses, sshd without PAM, and sshd_config without Include."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.fixtures.sandbox import SandboxFactory
from tests.integration.agent.machine.helpers import (
    ACCOUNT,
    WATCHED,
    Keys,
    call,
    effective,
    open_ok,
    read_line,
    refused,
    reload_sshd,
    shadow_fields,
    ssh,
    ssh_argv,
    tree,
)
from tether.agent.machine.effects import BLOCK_BEGIN, BLOCK_END
from tether.sandbox import Sandbox

pytestmark = pytest.mark.sandbox

#: A customer's sshd_config without a drop-in directory, ending in its own Match block
#: and without a final newline (the restored file must still be byte-identical).
NO_INCLUDE_CONFIG = """\
# A customer's own sshd_config: no Include of sshd_config.d
ListenAddress 127.0.0.1
Port 22
PidFile /run/sshd.pid
LogLevel VERBOSE
KbdInteractiveAuthentication no
UsePAM yes
X11Forwarding yes
Subsystem sftp /usr/lib/openssh/sftp-server

Match User nobody
    X11Forwarding no"""


def test_direct_mode_sources_and_password(sandbox: Sandbox, tmp_path: Path) -> None:
    keys = Keys(tmp_path / "keys")
    files_before = tree(sandbox, *WATCHED)
    root_before = effective(sandbox)

    open_ok(sandbox, keys.grant(["192.0.2.0/24"]))
    drop_in = sandbox.host_path("/etc/ssh/sshd_config.d/tether.conf").read_text()
    assert f"Match User {ACCOUNT} Address 192.0.2.0/24\n" in drop_in
    assert refused(ssh(sandbox, keys.engineer, ACCOUNT, "true"))
    assert effective(sandbox) == root_before

    secret = "correct horse battery staple"
    answer = open_ok(sandbox, keys.grant([], password=secret))
    assert secret not in answer["log"]
    assert shadow_fields(sandbox)[1].startswith("$")  # a real hash, set through chpasswd
    assert (
        f"Match User {ACCOUNT}\n    TrustedUserCAKeys"
        in sandbox.host_path("/etc/ssh/sshd_config.d/tether.conf").read_text()
    )
    login = ssh(sandbox, keys.engineer, ACCOUNT, "id -un")
    assert login.returncode == 0, login.stderr + sandbox.sshd_log()
    assert effective(sandbox) == root_before

    open_ok(sandbox, keys.grant([]))
    assert shadow_fields(sandbox)[1] == "*"

    closed = call(sandbox, "close", account=ACCOUNT)
    assert closed["ok"], closed
    assert closed["result"]["account_removed"], closed
    assert tree(sandbox, *WATCHED) == files_before


def test_managed_block_without_include(sandbox: Sandbox, tmp_path: Path) -> None:
    keys = Keys(tmp_path / "keys")
    config = sandbox.host_path("/etc/ssh/sshd_config")
    config.write_text(NO_INCLUDE_CONFIG)
    reload_sshd(sandbox)
    facts = call(sandbox, "facts", account=ACCOUNT)["result"]
    assert facts["drop_in_included"] is False, facts
    assert facts["can_add_block"] is True, facts
    files_before = tree(sandbox, *WATCHED)
    root_before = effective(sandbox)
    nobody_before = effective(sandbox, "nobody")
    assert "x11forwarding no" in nobody_before  # the customer's own Match block

    answer = open_ok(sandbox, keys.grant())
    assert "machine.sshd.block_written" in answer["log"]
    assert not sandbox.host_path("/etc/ssh/sshd_config.d/tether.conf").exists()
    text = config.read_text()
    assert text.startswith(NO_INCLUDE_CONFIG + "\n" + BLOCK_BEGIN + "\n")
    assert text.endswith(BLOCK_END + "\n")
    login = ssh(sandbox, keys.engineer, ACCOUNT, "sudo -n true && echo sudo-ok")
    assert login.stdout.strip() == "sudo-ok", login.stderr + sandbox.sshd_log()
    assert effective(sandbox) == root_before
    assert effective(sandbox, "nobody") == nobody_before

    open_ok(sandbox, keys.grant())  # again: still exactly one block
    assert config.read_text() == text

    closed = call(sandbox, "close", account=ACCOUNT)
    assert closed["ok"], closed
    assert closed["result"]["sshd_reloaded"], closed
    assert closed["result"]["notes"] == []
    assert config.read_bytes() == NO_INCLUDE_CONFIG.encode()
    assert tree(sandbox, *WATCHED) == files_before
    assert refused(ssh(sandbox, keys.engineer, ACCOUNT, "true"))

    # An admin edits sshd_config while access is open: closing removes only the block.
    open_ok(sandbox, keys.grant())
    config.write_text("# added by the admin\n" + config.read_text())
    closed = call(sandbox, "close", account=ACCOUNT)
    assert closed["ok"], closed
    assert any("edited" in note for note in closed["result"]["notes"]), closed
    assert config.read_text() == "# added by the admin\n" + NO_INCLUDE_CONFIG + "\n"
    assert not sandbox.host_path("/var/lib/tether/backup").exists()


def test_certificate_login_with_use_pam_no(sandbox_factory: SandboxFactory, tmp_path: Path) -> None:
    # (sandbox_factory only makes this test skip where sandboxes cannot run.)
    keys = Keys(tmp_path / "keys")
    with Sandbox(tmp_path / "no-pam", use_pam=False) as box:
        assert "usepam no" in effective(box)
        open_ok(box, keys.grant())
        # '*' is no usable password but, unlike a '!' lock, sshd without PAM accepts it.
        # Without PAM there is no login uid: what runs under sudo is found by session.
        command = "sudo -n true && echo sudo-ok; sudo -n sleep 61 & sleep 61"
        session = box.popen(
            ssh_argv(keys.engineer, ACCOUNT, command),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert read_line(session) == "sudo-ok", box.sshd_log()
            time.sleep(0.2)
            closed = call(box, "close", account=ACCOUNT)
            session.wait(5)
        finally:
            if session.poll() is None:
                session.kill()
            session.communicate(timeout=10)
        assert closed["ok"], closed
        assert closed["result"]["account_removed"], closed
        assert box.run(["pgrep", "-f", "sleep 61"]).stdout == ""
        assert refused(ssh(box, keys.engineer, ACCOUNT, "true"))
