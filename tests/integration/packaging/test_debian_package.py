"""The Debian package from ``scripts/package``: lintian, systemd's verdict on its units,
and a real install, use, upgrade and removal on a throw-away copy of this machine.

The package is built once per session (``built`` in conftest.py); installs happen in an
:class:`~tests.integration.packaging.overlay.OverlayMachine` (an overlay of ``/`` in
private namespaces, chrooted into), so the host never sees them. No systemd runs there:
each service is started as its installed unit's ``ExecStart=`` (and ``User=``) says, with
the unit's ``EnvironmentFile``, and stopped with SIGTERM as systemd would.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.packaging.conftest import Built
from tests.integration.packaging.overlay import OverlayMachine, unavailable_reason

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(480)]

SERIAL = "ACME-0001"
VENDOR_DIR = "/etc/tether/vendor"
RELAY_PORT = 2222
UNITS = (
    "tether-agent.service",
    "tether-expire.service",
    "tether-expire.timer",
    "tether-relay@.service",
    "tether-vendor.service",
)


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[OverlayMachine]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with OverlayMachine(tmp_path / "overlay", SERIAL) as made:
        yield made


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args[-1]!r}: {result.stdout}\n{result.stderr}"
    return result.stdout


def test_lintian_finds_no_errors(built: Built) -> None:
    result = subprocess.run(
        ["lintian", "--no-tag-display-limit", str(built.deb)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in result.stdout.splitlines() if line.startswith("E:")]
    assert errors == [], result.stdout
    assert result.returncode == 0, result.stdout + result.stderr


def test_wheel_holds_tether_and_its_web_assets(built: Built) -> None:
    names = zipfile.ZipFile(built.wheel).namelist()
    assert "tether/cli/__init__.py" in names
    assert "tether/store/alembic.ini" in names
    assert any(n.startswith("tether/webui/static/") for n in names)
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    assert "Requires-Dist: asyncssh" in zipfile.ZipFile(built.wheel).read(metadata).decode()


def test_units_pass_systemd_analyze_verify(built: Built, machine: OverlayMachine) -> None:
    # Unpacked (no maintainer scripts): verify needs the units' programs in place.
    ok(machine.run(["dpkg", "--unpack", str(built.deb)]))
    units = [u.replace("@.", "@relay-1.") for u in UNITS]
    result = machine.sh(f"cd /lib/systemd/system && systemd-analyze verify {' '.join(units)}")
    # Warnings count too: systemd-analyze prints nothing for units it fully accepts.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def unit_command(machine: OverlayMachine, unit: str, **values: str) -> list[str]:
    """What systemd would run for ``unit``: its ExecStart= as its User=, with its environment."""
    text = machine.read(f"/lib/systemd/system/{unit}").decode()
    fields = dict(
        line.split("=", 1)
        for line in text.splitlines()
        if "=" in line
        and not line.startswith("#")
        and line.split("=", 1)[0] in ("ExecStart", "User", "EnvironmentFile")
    )
    command = fields["ExecStart"]
    for name, value in values.items():  # specifiers such as %i
        command = command.replace(name, value)
    argv = ["/bin/sh", "-c", f"exec {command}"]
    env_file = fields.get("EnvironmentFile", "").lstrip("-")
    if env_file:
        argv = ["/bin/sh", "-c", f"set -a; . {env_file}; set +a; exec {shlex.join(argv)}"]
    if "User" in fields:
        argv = ["runuser", "-u", fields["User"], "--", *argv]
    return argv


def snapshot(machine: OverlayMachine) -> dict[str, str]:
    """sshd's configuration files (their hashes) and the account databases, as text."""
    files = ok(machine.sh("cd /etc/ssh && find . -type f | sort | xargs sha256sum"))
    return {
        "/etc/ssh": files,
        **{
            path: machine.read(path).decode()
            for path in ("/etc/passwd", "/etc/group", "/etc/shadow")
        },
    }


def without_user(text: str, name: str) -> str:
    return "".join(line for line in text.splitlines(True) if not line.startswith(f"{name}:"))


def wait_until(what: str, check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.1)


def engineer_ssh(machine: OverlayMachine, command: str) -> subprocess.CompletedProcess[str]:
    return machine.run(["ssh", "-F", "/root/engineer/ssh_config", SERIAL, command], timeout=30)


def tunnel_state(machine: OverlayMachine) -> str | None:
    result = machine.run(["tether", "access", "status", "--json"])
    if result.returncode != 0:
        return None
    tunnel = json.loads(result.stdout).get("tunnel")
    return tunnel.get("state") if isinstance(tunnel, dict) else None


def set_up_vendor(machine: OverlayMachine, logs: Path) -> None:
    """The vendor side from the package: data directory, relay relay-1 and the vendor
    service (not waited for), run as the package's ``tether`` user as their units run them."""
    as_tether = ["runuser", "-u", "tether", "--", "tether", "vendor"]
    database = "sqlite+aiosqlite:////var/lib/tether/vendor/tether.db"
    ok(
        machine.run(
            [
                *as_tether,
                "init",
                "--data-dir",
                VENDOR_DIR,
                "--vendor",
                "ACME",
                "--relay",
                f"127.0.0.1:{RELAY_PORT}",
                "--database",
                database,
            ]
        )
    )
    ok(
        machine.run(
            [
                *as_tether,
                "relay",
                "add",
                "relay-1",
                "--data-dir",
                VENDOR_DIR,
                "--listen",
                f"127.0.0.1:{RELAY_PORT}",
                "--peer-listen",
                "127.0.0.1:2223",
            ]
        )
    )
    start(
        machine, "relay", unit_command(machine, "tether-relay@.service", **{"%i": "relay-1"}), logs
    )
    start(machine, "vendor", unit_command(machine, "tether-vendor.service"), logs)
    # An engineer with a certificate from the vendor's CA, and stock ssh configured.
    ok(machine.run([*as_tether, "engineer", "add", "alice", "--data-dir", VENDOR_DIR]))
    ok(
        machine.sh(
            "mkdir -p -m 700 /root/engineer && ssh-keygen -q -t ed25519 -N '' -f /root/engineer/id"
        )
    )
    ok(machine.sh("install -o tether -m 644 /root/engineer/id.pub /tmp/alice.pub"))
    ok(
        machine.run(
            [
                *as_tether,
                "sign",
                "--data-dir",
                VENDOR_DIR,
                "--engineer",
                "alice",
                "--pubkey",
                "/tmp/alice.pub",
                "--out",
                "/tmp/alice-cert.pub",
            ]
        )
    )
    ok(machine.sh("cp /tmp/alice-cert.pub /root/engineer/id-cert.pub"))
    host_key = machine.read(f"{VENDOR_DIR}/relay_host_key.pub").decode().split()
    config = (
        f"Host tether-relay\n    HostName 127.0.0.1\n    Port {RELAY_PORT}\n    User alice\n"
        "    UserKnownHostsFile /root/engineer/known_hosts\n    StrictHostKeyChecking yes\n"
        f"Host {SERIAL}\n    User tether-support\n    ProxyJump tether-relay\n"
        "    UserKnownHostsFile /root/engineer/known_machines\n    StrictHostKeyChecking accept-new\n"
        "Host *\n    IdentityFile /root/engineer/id\n    CertificateFile /root/engineer/id-cert.pub\n"
        "    IdentitiesOnly yes\n    BatchMode yes\n    ConnectTimeout 10\n"
    )
    ok(machine.run(["tee", "/root/engineer/ssh_config"], input=config))
    ok(
        machine.run(
            ["tee", "/root/engineer/known_hosts"],
            input=f"[127.0.0.1]:{RELAY_PORT} {host_key[0]} {host_key[1]}\n",
        )
    )


def start(machine: OverlayMachine, name: str, argv: list[str], logs: Path) -> None:
    machine.start_service(name, argv, logs / f"{name}.log")


def test_install_open_access_upgrade_and_remove(
    built: Built, machine: OverlayMachine, tmp_path: Path
) -> None:
    """apt-get install → vendor and relay from the package → agent configured with the
    vendor's trust file → access opened with the vendor's key → stock ssh in → upgrade to
    a higher revision while access is open → remove → sshd and accounts as before.

    Without systemd in the chroot, the agent, relay and vendor service are started as
    their units' ExecStart= would start them (and restarted after the upgrade, as the
    package's postinst asks systemd to).
    """
    logs = tmp_path / "logs"
    logs.mkdir()
    ok(machine.sh("/usr/sbin/sshd -E /var/log/sshd.log"))
    wait_until("sshd listens", lambda: machine.exists("/run/sshd.pid"))
    before = snapshot(machine)

    ok(machine.run(["apt-get", "install", "-y", "--no-install-recommends", str(built.deb)]))
    assert ok(machine.run(["dpkg-query", "-W", "-f", "${Version}", "tether"])) == built.version
    # `tether` on the PATH is the package's own, on Debian's python3.
    where = ok(machine.run(["tether", "--version"]))
    assert where.strip().endswith(built.version.rsplit("-", 1)[0])
    assert (
        ok(machine.run(["readlink", "-f", "/usr/bin/tether"])).strip() == "/opt/tether/bin/tether"
    )
    assert machine.read("/opt/tether/pyvenv.cfg").decode().startswith("home = /usr/bin")
    assert ok(machine.run(["getent", "passwd", "tether"])).split(":")[5] == "/var/lib/tether/vendor"
    # Enabled without a running systemd (deb-systemd-helper), started by nobody.
    assert machine.exists("/etc/systemd/system/multi-user.target.wants/tether-agent.service")
    assert machine.exists("/etc/systemd/system/timers.target.wants/tether-expire.timer")

    set_up_vendor(machine, logs)

    # The customer: serial plus the vendor's trust file make agent.toml.
    trust = machine.read(f"{VENDOR_DIR}/agent-trust.toml").decode()
    agent_toml = (
        f'serial = "{SERIAL}"\n{trust}sshd_log = "/var/log/sshd.log"\n'
        "[tether]\nbackoff_initial = 0.2\nbackoff_cap = 1.0\nreconnect_spread = 0.2\n"
    )
    ok(machine.run(["tee", "/etc/tether/agent.toml"], input=agent_toml))
    start(machine, "agent", unit_command(machine, "tether-agent.service"), logs)
    issued = json.loads(
        ok(
            machine.run(
                [
                    "runuser",
                    "-u",
                    "tether",
                    "--",
                    "tether",
                    "vendor",
                    "issue-key",
                    "--data-dir",
                    VENDOR_DIR,
                    "--serial",
                    SERIAL,
                    "--json",
                ]
            )
        )
    )
    ok(machine.run(["tether", "access", "enable", "--key", issued["key"]], timeout=60))
    result = engineer_ssh(machine, "id -un; sudo -n true && echo sudo-ok")
    assert result.stdout.split() == ["tether-support", "sudo-ok"], result.stderr
    # The vendor service from the package serves its API (started with the relay).
    probe = "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/openapi.json', timeout=2)"
    wait_until(
        "the vendor service answers",
        lambda: machine.run(["python3", "-c", probe]).returncode == 0,
    )

    # Upgrade while access is open; a setting changed in the conffile survives it.
    ok(machine.sh("echo TETHER_TEST_MARK=kept >> /etc/tether/tether.env"))
    upgraded = ok(
        machine.run(["apt-get", "install", "-y", "--no-install-recommends", str(built.upgrade)])
    )
    assert "Database schema already current" in upgraded  # postinst's `tether vendor migrate`
    assert (
        ok(machine.run(["dpkg-query", "-W", "-f", "${Version}", "tether"])) == built.upgrade_version
    )
    assert "TETHER_TEST_MARK=kept" in machine.read("/etc/tether/tether.env").decode()
    assert (
        json.loads(ok(machine.run(["tether", "access", "status", "--json"])))["access"]["status"]
        == "open"
    )
    # What `deb-systemd-invoke try-restart` does where systemd runs.
    for name, unit, values in (
        ("relay", "tether-relay@.service", {"%i": "relay-1"}),
        ("agent", "tether-agent.service", {}),
    ):
        machine.stop_service(name)
        start(machine, name, unit_command(machine, unit, **values), logs)
    wait_until("the tether is back after the upgrade", lambda: tunnel_state(machine) == "connected")
    result = engineer_ssh(machine, "id -un")
    assert result.stdout.split() == ["tether-support"], result.stderr

    ok(machine.run(["apt-get", "remove", "-y", "tether"]))
    # prerm closed access first: the account and sshd's drop-in are gone with it.
    assert engineer_ssh(machine, "id -un").returncode != 0
    assert not machine.exists("/opt/tether/bin/tether")
    for name in ("agent", "relay", "vendor"):  # what prerm's `deb-systemd-invoke stop` does
        machine.stop_service(name)
    assert machine.run(["pgrep", "-u", "tether"]).returncode == 1  # nothing of it runs
    after = snapshot(machine)
    assert after["/etc/ssh"] == before["/etc/ssh"]
    # The package's system user stays until purge (Debian's practice); nothing else moved.
    for path in ("/etc/passwd", "/etc/group", "/etc/shadow"):
        assert without_user(after[path], "tether") == before[path], path

    ok(machine.run(["apt-get", "purge", "-y", "tether"]))
    assert not machine.exists("/var/lib/tether")  # the agent's state and recordings
    assert not machine.exists("/opt/tether")
    # The vendor's keys and CA are kept (purge is no way to lose a CA), and with them
    # the user that owns them; the rest of the accounts are exactly as before install.
    assert machine.exists(f"{VENDOR_DIR}/engineer_ca")
    purged = snapshot(machine)
    assert purged["/etc/ssh"] == before["/etc/ssh"]
    for path in ("/etc/passwd", "/etc/group", "/etc/shadow"):
        assert without_user(purged[path], "tether") == before[path], path
