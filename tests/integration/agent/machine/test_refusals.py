"""What open() refuses, and how it leaves the machine when it does: exactly as it was.

The rollback cases need a configuration that sshd rejects or that would change other
users' settings. Tether itself never writes one, so the driver's hooks play a buggy
release of Tether (an unknown keyword; a global line before the Match blocks; a
sudoers line with a syntax error).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.sandbox import SandboxFactory
from tests.integration.agent.machine.helpers import (
    ACCOUNT,
    WATCHED,
    Keys,
    account_line,
    authorize,
    call,
    effective,
    open_ok,
    refused,
    reload_sshd,
    ssh,
    tree,
)
from tether.agent.machine.recorder_setup import library_for, recorder_command
from tether.sandbox import Sandbox

pytestmark = pytest.mark.sandbox

#: Everything open() could touch.
EVERYTHING = (*WATCHED, "/etc/passwd", "/etc/shadow", "/etc/group", "/home", "/var/lib/tether")


def _refused_unchanged(
    box: Sandbox, request: dict[str, object], expect: str, error: str = "MachineError"
) -> str:
    """Call open(); insist it was refused mentioning ``expect`` and changed nothing."""
    before = tree(box, *EVERYTHING)
    answer = call(box, "open", **request)
    assert not answer["ok"], answer
    assert answer["error"] == error
    assert expect in answer["message"], answer["message"]
    assert tree(box, *EVERYTHING) == before
    message: str = answer["message"]
    return message


def test_rollback_when_sshd_rejects_or_other_users_would_change(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    keys = Keys(tmp_path / "keys")
    authorize(sandbox, keys.plain, "root")
    assert ssh(sandbox, keys.plain, "root", "true").returncode == 0
    root_before = effective(sandbox)

    message = _refused_unchanged(
        sandbox, {"grant": keys.grant(), "hook": "bad-keyword"}, "sshd -t refused"
    )
    assert "Bad configuration option: NoSuchKeyword" in message
    assert "undone" in message
    assert account_line(sandbox) == ""

    message = _refused_unchanged(
        sandbox, {"grant": keys.grant(), "hook": "global-setting"}, "settings for root"
    )
    assert "+permitrootlogin no" in message

    message = _refused_unchanged(
        sandbox, {"grant": keys.grant(), "hook": "bad-sudoers"}, "visudo refused"
    )
    assert "syntax error" in message

    # The same with a managed block in an sshd_config that has no Include.
    config = sandbox.host_path("/etc/ssh/sshd_config")
    original = config.read_bytes()
    config.write_bytes(original.replace(b"Include /etc/ssh/sshd_config.d/*.conf\n", b""))
    reload_sshd(sandbox)
    without_include = config.read_bytes()
    _refused_unchanged(sandbox, {"grant": keys.grant(), "hook": "bad-keyword"}, "NoSuchKeyword")
    assert config.read_bytes() == without_include
    config.write_bytes(original)
    reload_sshd(sandbox)

    # sshd never stopped serving the customer, and root's settings never changed.
    assert ssh(sandbox, keys.plain, "root", "true").returncode == 0
    assert refused(ssh(sandbox, keys.engineer, ACCOUNT, "true"))
    assert effective(sandbox) == root_before

    # The customer's own configuration is already broken: refuse before any change.
    broken = sandbox.host_path("/etc/ssh/sshd_config.d/00-local.conf")
    broken.write_text("NoSuchThing yes\n")
    _refused_unchanged(sandbox, {"grant": keys.grant()}, "fix it first")
    facts = call(sandbox, "facts", account=ACCOUNT)["result"]
    assert facts["sshd_config_valid"] is False
    assert "NoSuchThing" in facts["sshd_error"]
    broken.unlink()


def test_foreign_account_and_bad_input_are_refused(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    box = sandbox_factory()
    keys = Keys(tmp_path / "keys")
    facts = call(box, "facts", account=ACCOUNT)["result"]
    assert facts == {
        "sshd_present": True,
        "sshd_config_valid": True,
        "sshd_error": None,
        "drop_in_included": True,
        "can_add_block": True,
        "systemd": False,
        "cron": facts["cron"],
        "account_conflict": None,
    }

    bad: list[tuple[dict[str, Any], str]] = [
        ({"account": "Root!"}, "not a valid account name"),
        ({"vendor_ca": "ssh-ed25519 AAAAnot-a-key"}, "not an OpenSSH public key"),
        ({"vendor_ca": keys.ca_line + "\n" + keys.ca_line}, "exactly one"),
        ({"vendor_ca": Path(keys.ca).read_text()}, "PRIVATE key"),
        ({"allow_from": ["not-an-address"]}, "'not-an-address' is not an IP address"),
    ]
    for change, expect in bad:
        _refused_unchanged(box, {"grant": {**keys.grant(), **change}}, expect, "MachineBadInput")

    box.run(["useradd", "--create-home", "--shell", "/bin/bash", ACCOUNT], check=True)
    own = account_line(box)
    message = _refused_unchanged(box, {"grant": keys.grant()}, "is not Tether's", "MachineBadInput")
    assert "choose another support_account in agent.toml" in message
    facts = call(box, "facts", account=ACCOUNT)["result"]
    assert "is not Tether's" in facts["account_conflict"]
    assert call(box, "kill", account=ACCOUNT)["result"] == 0
    closed = call(box, "close", account=ACCOUNT)
    assert closed["ok"], closed
    assert not closed["result"]["account_removed"], closed
    assert account_line(box) == own
    assert box.host_path(f"/home/{ACCOUNT}").is_dir()


def test_a_recorder_that_cannot_run_refuses_access_and_changes_nothing(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Fail closed at the door: if the support account could not start the recorder,
    every session would be refused, so opening access is refused instead."""
    keys = Keys(tmp_path / "keys")
    directory = "/var/lib/tether/recordings"
    # Where the account imports Tether from: in place, or a copy if this checkout is private.
    library = library_for(Path("/var/lib/tether"))
    good = recorder_command(
        python=Path("/usr/bin/python3"),
        directory=Path(directory),
        serial="SN-1",
        fail_open=False,
        max_bytes=1 << 20,
        root=library,
    )
    spec = {"command": good, "directory": directory, "library": str(library or "")}
    missing = good.replace("/usr/bin/python3", "/opt/none/python3")
    message = _refused_unchanged(
        sandbox,
        {"grant": keys.grant(recorder={"command": missing, "directory": directory})},
        "the session recorder cannot run as tether-support",
    )
    assert "/opt/none/python3" in message
    # The same with a Python the account can run: access opens, the directory is a drop box.
    open_ok(sandbox, keys.grant(recorder=spec))
    info = sandbox.host_path(directory).stat()
    assert (info.st_uid, oct(info.st_mode & 0o7777)) == (0, "0o1730")
    assert info.st_gid == int(account_line(sandbox).split(":")[3])
    drop_in = sandbox.host_path("/etc/ssh/sshd_config.d/tether.conf").read_text()
    assert f"    ForceCommand {good}\n" in drop_in
