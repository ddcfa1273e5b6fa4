"""A grant's limits: what the recorder is told, what sshd is given, what a session may do.

The sessions themselves run in tests/e2e/test_grant_limits.py; here the pure decisions.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from tether.agent.machine.limits import FileTransfer, Limits
from tether.agent.machine.sshd import check_own_settings, render_match_config
from tether.agent.recording.recorder.context import apply_limits, plan_session
from tether.agent.recording.recorder.session import parse_args
from tether.errors import BadInput

SFTP = "/usr/lib/openssh/sftp-server"


def test_limits_reach_the_recorder_as_options_it_reads_back() -> None:
    limits = Limits(
        shell=False, files=FileTransfer.DOWNLOAD, sudo=False, max_session=timedelta(hours=1)
    )
    options = parse_args(["--dir", "/r", *limits.recorder_args()])
    assert (options.shell, options.files, options.sudo, options.max_time) == (
        False,
        "download",
        False,
        3600,
    )
    assert Limits().recorder_args() == []
    assert not Limits().restricted
    assert limits.restricted


def test_limits_survive_the_state_file_and_damage_fails_closed() -> None:
    limits = Limits(files=FileTransfer.UPLOAD, sudo=False, max_session=timedelta(minutes=5))
    assert Limits.from_json(limits.to_json()) == limits
    assert Limits.from_json(None) == Limits()  # a state file from before limits
    asking = Limits(consent=True, consent_timeout=timedelta(minutes=2), auto_admit=True)
    assert Limits.from_json(asking.to_json()) == asking
    options = parse_args(["--dir", "/r", *asking.recorder_args(Path("/var/lib/tether/consent"))])
    assert (options.consent_dir, options.consent_timeout, options.consent_on_timeout) == (
        Path("/var/lib/tether/consent"),
        120,
        "admit",
    )
    assert not Limits.from_json({"shell": "yes", "sudo": 1}).shell  # not True: no shell
    assert not Limits.from_json({"shell": "yes", "sudo": 1}).sudo


def test_a_grant_allowing_nothing_is_refused() -> None:
    with pytest.raises(BadInput, match="allow nothing"):
        Limits(shell=False, files=FileTransfer.OFF)
    with pytest.raises(BadInput, match="max-session"):
        Limits(max_session=timedelta(0))


def test_sshd_refuses_a_terminal_and_shows_the_banner_for_a_limited_grant() -> None:
    text = render_match_config(
        "tether-support",
        Path("/etc/ssh/tether/ca"),
        Path("/etc/ssh/tether/p"),
        ("127.0.0.1",),
        "/rec",
        tty=False,
        banner=Path("/etc/ssh/tether/banner"),
    )
    assert "    PermitTTY no" in text.splitlines()
    assert "    Banner /etc/ssh/tether/banner" in text.splitlines()
    effective = "trustedusercakeys /etc/ssh/tether/ca\nauthorizedprincipalsfile /etc/ssh/tether/p\n"
    effective += "authorizedkeysfile none\nforcecommand /rec\npermittty yes\n"
    wrong, _ = check_own_settings(
        effective,
        Path("/etc/ssh/tether/ca"),
        Path("/etc/ssh/tether/p"),
        "/rec",
        {"permittty": "no"},
    )
    assert wrong == ["permittty is 'yes'"]


def _plan(command: str | None) -> object:
    return plan_session("/bin/bash", command, SFTP)


def test_no_shell_refuses_shells_and_commands_and_runs_scp_without_a_shell() -> None:
    for command in (None, "id", "bash -i"):
        plan, why = apply_limits(
            plan_session("/bin/bash", command, SFTP), allow_shell=False, files="both"
        )
        assert plan is None
        assert why is not None
        assert "no shell" in why
    plan, why = apply_limits(
        plan_session("/bin/bash", "scp -t up.bin", SFTP), allow_shell=False, files="both"
    )
    assert plan is not None, why
    assert plan.argv == ["/usr/bin/scp", "-t", "up.bin"]
    # No shell reads scp's command line: "$(sh)" is only a file name.
    plan, why = apply_limits(
        plan_session("/bin/bash", "scp -t '$(sh)'", SFTP), allow_shell=False, files="both"
    )
    assert plan is not None, why
    assert plan.argv == ["/usr/bin/scp", "-t", "$(sh)"]
    # Anything but a plain scp -t / -f is refused, not run.
    for sneaky in ("scp -t x; bash -i", "scp -t x -o y", "scp -S /bin/sh -t x", "scp -f -t x"):
        plan, why = apply_limits(
            plan_session("/bin/bash", sneaky, SFTP), allow_shell=False, files="both"
        )
        assert plan is None, sneaky


def test_file_transfer_limits_per_protocol() -> None:
    sftp = plan_session("/bin/bash", "internal-sftp", SFTP)
    assert apply_limits(sftp, allow_shell=True, files="off")[0] is None
    down, _ = apply_limits(sftp, allow_shell=True, files="download")
    assert down is not None
    assert down.argv == [SFTP, "-R"]
    up, _ = apply_limits(sftp, allow_shell=True, files="upload")
    assert up is not None
    assert up.argv == [SFTP, "-P", "read,readdir,copy-data"]
    upload = plan_session("/bin/bash", "scp -t x", SFTP)
    download = plan_session("/bin/bash", "scp -f x", SFTP)
    assert apply_limits(upload, allow_shell=True, files="download")[0] is None
    assert apply_limits(download, allow_shell=True, files="download")[0] is not None
    assert apply_limits(download, allow_shell=True, files="upload")[0] is None
    assert apply_limits(upload, allow_shell=True, files="off")[0] is None
    # Commands are the shell's business, not a transfer protocol.
    assert apply_limits(plan_session("/bin/bash", "id", SFTP), allow_shell=True, files="off")[0]


def test_an_sftp_server_the_engineer_brings_is_not_run(tmp_path: Path) -> None:
    fake = tmp_path / "sftp-server"
    fake.write_text("#!/bin/sh\nexec bash -i\n")
    os.chmod(fake, 0o755)  # noqa: S103 - a program, as an engineer would upload it
    plan = plan_session("/bin/bash", str(fake), SFTP)
    assert plan.kind == "sftp"
    assert plan.argv == [SFTP]
