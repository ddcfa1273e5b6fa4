"""Support access on the customer's machine, end to end, with real useradd, sudo and sshd.

Each test drives a fresh :class:`tether.demo.DemoSystem`: the agent in a sandboxed
machine creates the support account and the sshd drop-in when access opens and
removes them when it closes; engineers use stock OpenSSH through the relay.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import date, timedelta

import pytest

from tether.agent.machine.service import cron_command
from tether.demo import DemoSystem

pytestmark = pytest.mark.sandbox


async def ssh(
    system: DemoSystem, *args: str, timeout: float = 30
) -> subprocess.CompletedProcess[bytes]:
    assert system.engineer is not None
    proc = await asyncio.create_subprocess_exec(
        *system.engineer.ssh(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return subprocess.CompletedProcess(args, proc.returncode or 0, out, err)


def sshd_files(system: DemoSystem) -> dict[str, str]:
    """Hash of every file under the machine's /etc/ssh (what must come back byte-identical)."""
    assert system.machine is not None
    root = system.machine.host_path("/etc/ssh")
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def effective_config(system: DemoSystem, user: str) -> str:
    assert system.machine is not None
    return system.machine.run(
        ["/usr/sbin/sshd", "-T", "-C", f"user={user},host=localhost,addr=127.0.0.1"]
    ).stdout


def account_exists(system: DemoSystem) -> bool:
    assert system.machine is not None
    return system.machine.run(["getent", "passwd", "tether-support"]).returncode == 0


_SU_ON_A_TTY = r"""
import os, pty, sys, time
password = sys.stdin.readline().rstrip("\n")
pid, fd = pty.fork()
if pid == 0:
    os.execvp("setpriv", ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          "su", "tether-support", "-c", "echo LOGGED-IN-AS-$(id -un)"])
out = b""
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    try:
        chunk = os.read(fd, 1024)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
    if b"assword" in out and password is not None:
        os.write(fd, password.encode() + b"\n")
        password = None
print(out.decode(errors="replace"))
"""


def password_works(system: DemoSystem, password: str) -> bool:
    """Log in with ``su`` through PAM as an unprivileged user would, on a terminal."""
    assert system.machine is not None
    result = system.machine.run([sys.executable, "-c", _SU_ON_A_TTY], input=password + "\n")
    return "LOGGED-IN-AS-tether-support" in result.stdout


async def reopen(system: DemoSystem, *extra: str) -> None:
    key = await system.issue_key()
    result = await asyncio.to_thread(system.access, "enable", "--key", key, *extra)
    assert result.returncode == 0, result.stderr
    await system.wait_for_tether("connected")


async def test_engineer_is_admin_through_certificate_and_sshd_logs_who(system: DemoSystem) -> None:
    result = await ssh(system, system.serial, "id -un; sudo -n true && echo sudo-ok")
    assert result.stdout.decode().split() == ["tether-support", "sudo-ok"], result.stderr
    assert system.machine is not None
    log = system.machine.sshd_log()
    assert "Accepted publickey for tether-support" in log
    assert "ID demo (serial" in log
    listed = await asyncio.to_thread(system.access, "log")
    assert "engineer demo logged in as tether-support" in listed.stdout
    assert "access.opened" in listed.stdout or "opened" in listed.stdout


async def test_disable_removes_everything_and_other_users_are_unaffected(
    system: DemoSystem,
) -> None:
    # Close once so the machine is as it was before any access, then measure.
    await asyncio.to_thread(system.access, "disable")
    before_files = sshd_files(system)
    before_root = effective_config(system, "root")
    assert not account_exists(system)
    await reopen(system)
    assert account_exists(system)
    assert effective_config(system, "root") == before_root
    session = await asyncio.create_subprocess_exec(
        *system.engineer.ssh(system.serial, "echo started; sleep 120") if system.engineer else [],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert session.stdout is not None
    assert await asyncio.wait_for(session.stdout.readline(), 30) == b"started\n"
    started = time.monotonic()
    closed = await asyncio.to_thread(system.access, "disable")
    assert closed.returncode == 0, closed.stderr
    await asyncio.wait_for(session.wait(), 5)
    assert time.monotonic() - started <= 1.0 + 0.5  # disable's own start-up included
    assert not account_exists(system)
    assert sshd_files(system) == before_files
    assert effective_config(system, "root") == before_root
    assert system.machine is not None
    archives = list(
        (system.machine.host_path("/var/lib/tether") / "archive").glob("tether-support-*.tar.gz")
    )
    assert archives, "the support home is archived, not silently deleted"
    sudoers = system.machine.host_path("/etc") / "sudoers.d" / "tether-support"
    assert not sudoers.exists()


async def test_customer_password_is_set_without_appearing_anywhere(system: DemoSystem) -> None:
    await asyncio.to_thread(system.access, "disable")
    assert system.machine is not None
    key = await system.issue_key()
    secret = "correct horse battery staple 42"
    proc = await asyncio.create_subprocess_exec(
        *system.machine.command(
            [
                sys.executable,
                "-m",
                "tether",
                "access",
                "enable",
                "--key",
                key,
                "--password-prompt",
                "--config",
                "/etc/tether/agent.toml",
            ]
        ),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(secret.encode() + b"\n"), 30)
    assert proc.returncode == 0, err
    assert password_works(system, secret)
    assert not password_works(system, secret + "x")
    shadow = (system.machine.host_path("/etc") / "shadow").read_text()
    line = next(x for x in shadow.splitlines() if x.startswith("tether-support:"))
    assert line.split(":")[1].startswith("$")  # a real hash was set
    for place in (
        system.machine.host_path("/var/lib/tether"),
        system.machine.host_path("/var/log"),
        system.workdir,
    ):
        for path in place.rglob("*"):
            if path.is_file() and path.stat().st_size < 5_000_000:
                assert secret.encode() not in path.read_bytes(), path


async def test_generated_password_reaches_the_vendor_sealed(system: DemoSystem) -> None:
    from tether.seal import SealPrivateKey, unseal

    assert system.store is not None
    assert system.authority is not None
    assert system.key_id is not None
    for _ in range(50):
        stored = await system.store.passwords.get(system.key_id)
        if stored is not None:
            break
        await asyncio.sleep(0.1)
    assert stored is not None
    assert stored.sealed.startswith("hpke1.")
    private = SealPrivateKey.from_pem(
        (system.authority.config.data_dir / "password_seal_key.pem").read_bytes()
    )
    password = unseal(stored.sealed, private, serial=system.serial, grant_id=system.key_id)
    assert system.machine is not None
    assert password_works(system, password)


async def test_expiry_with_agent_dead_is_closed_by_the_expiry_timer(system: DemoSystem) -> None:
    assert system.machine is not None
    assert system.agent is not None
    installed = await asyncio.to_thread(
        system.machine.run,
        [sys.executable, "-m", "tether", "agent", "install", "--config", "/etc/tether/agent.toml"],
    )
    assert installed.returncode == 0, installed.stderr
    assert "cron" in installed.stdout  # the sandbox has no systemd
    await asyncio.to_thread(system.access, "disable")
    await reopen(system, "--duration", "3s")
    system.agent.send_signal(signal.SIGKILL)
    await asyncio.to_thread(system.agent.wait, 5)
    await asyncio.sleep(3.5)
    assert account_exists(system)  # nothing closed it yet: the agent is dead
    command = cron_command(system.machine.host_path("/etc") / "cron.d" / "tether")
    ran = await asyncio.to_thread(system.machine.run, command)  # what cron runs every minute
    assert ran.returncode == 0, ran.stderr
    assert not account_exists(system)
    status = json.loads((await asyncio.to_thread(system.access, "status", "--json")).stdout)
    assert status["access"]["status"] == "closed"
    assert status["access"]["close_reason"] == "expired"


@pytest.mark.parametrize("phase", ["opening", "closing"])
async def test_crash_in_the_middle_is_repaired_at_next_start(
    system: DemoSystem, phase: str
) -> None:
    assert system.machine is not None
    assert system.agent is not None
    await asyncio.to_thread(system.access, "disable")
    before_files = sshd_files(system)
    system.agent.terminate()
    await asyncio.to_thread(system.agent.wait, 5)
    if phase == "closing":
        await reopen_without_agent(system)
    key = await system.issue_key()
    args = ["enable", "--key", key] if phase == "opening" else ["disable"]
    proc = await asyncio.create_subprocess_exec(
        *system.machine.command(
            [sys.executable, "-m", "tether", "access", *args, "--config", "/etc/tether/agent.toml"]
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state_file = system.machine.host_path("/var/lib/tether") / "access.json"
    deadline = time.monotonic() + 20
    caught = False
    while time.monotonic() < deadline and proc.returncode is None:
        try:
            if json.loads(state_file.read_text())["status"] == phase:
                os.kill(
                    proc.pid, signal.SIGKILL
                )  # nsenter → setpriv → python: kill the group below
                subprocess.run(["pkill", "-KILL", "-f", "tether access"], check=False)
                caught = True
                break
        except (OSError, ValueError, KeyError):
            pass
        await asyncio.sleep(0.002)
    await asyncio.wait_for(proc.wait(), 10)
    assert caught, "the change finished before it could be interrupted"
    assert json.loads(state_file.read_text())["status"] == phase
    system.start_agent("agent2.log")  # only what the restarted daemon says
    for _ in range(100):
        status = json.loads((await asyncio.to_thread(system.access, "status", "--json")).stdout)
        if status["daemon_running"]:
            break
        await asyncio.sleep(0.1)
    assert status["access"]["status"] == "closed"
    assert not account_exists(system)
    assert sshd_files(system) == before_files
    text = (system.workdir / "agent2.log").read_text()
    assert "did not shut down cleanly" in text or "interrupted" in text


async def reopen_without_agent(system: DemoSystem) -> None:
    key = await system.issue_key()
    result = await asyncio.to_thread(system.access, "enable", "--key", key)
    assert result.returncode == 0, result.stderr


async def test_direct_mode_and_source_limits(system: DemoSystem) -> None:
    assert system.machine is not None
    assert system.engineer is not None
    await asyncio.to_thread(system.access, "disable")
    direct = await asyncio.to_thread(system.access, "enable", "--direct", "--from", "192.0.2.0/24")
    assert direct.returncode == 0, direct.stderr
    assert "direct from 192.0.2.0/24" in direct.stdout
    # An engineer on the machine's own network: key and certificate on the machine (its
    # /tmp is its own, so the demo's files on this host are not in view there).
    keys = system.machine.host_path("/tmp") / "engineer"
    keys.mkdir(mode=0o700)
    shutil.copyfile(system.engineer.key, keys / "id_ed25519")
    (keys / "id_ed25519").chmod(0o600)
    shutil.copyfile(system.engineer.certificate, keys / "id_ed25519-cert.pub")
    inside = [
        "ssh",
        "-F",
        "/dev/null",
        "-i",
        "/tmp/engineer/id_ed25519",
        "-o",
        "CertificateFile=/tmp/engineer/id_ed25519-cert.pub",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "tether-support@127.0.0.1",
        "sudo -n true && echo ok",
    ]
    refused = system.machine.run(inside)
    assert refused.returncode == 255  # 127.0.0.1 is not in 192.0.2.0/24
    assert "Permission denied" in refused.stderr
    await asyncio.to_thread(system.access, "disable")
    anywhere = await asyncio.to_thread(system.access, "enable", "--direct", "--duration", "1h")
    assert anywhere.returncode == 0, anywhere.stderr
    allowed = system.machine.run(inside)
    assert allowed.stdout.strip() == "ok", allowed.stderr
    status = await asyncio.to_thread(system.access, "status")
    assert "direct from anywhere" in status.stdout


async def test_no_expire_warns_loudly_and_only_for_direct(system: DemoSystem) -> None:
    await asyncio.to_thread(system.access, "disable")
    assert system.key is not None
    with_key = await asyncio.to_thread(system.access, "enable", "--key", system.key, "--no-expire")
    assert with_key.returncode == 2
    forever = await asyncio.to_thread(system.access, "enable", "--direct", "--no-expire")
    assert forever.returncode == 0, forever.stderr
    assert "WARNING" in forever.stderr
    assert "nothing will close support access by itself" in forever.stderr
    status = await asyncio.to_thread(system.access, "status")
    assert "OPEN WITHOUT END" in status.stdout


async def test_check_reports_prerequisites(system: DemoSystem) -> None:
    assert system.key is not None
    result = await asyncio.to_thread(system.access, "check", "--key", system.key, "--json")
    body = json.loads(result.stdout)
    names = {c["name"]: c for c in body["checks"]}
    for name in (
        "sshd installed",
        "sshd configuration valid",
        "sshd drop-in directory",
        "relay reachable",
        "relay host key",
        "clock",
    ):
        assert names[name]["ok"], names[name]
    # The demo's relay serves TLS too: the certificate seen is the one it names as its own.
    over_tls = str(names["relay over tls"]["detail"])
    assert over_tls.startswith("works (tls); TLS certificate issued by CN=127.0.0.1"), over_tls
    assert "inspects" not in over_tls
    # The sandbox has neither systemd nor a cron daemon: check says so and how to fix it.
    assert result.returncode in (0, 1)


async def test_audit_log_verifies_and_detects_an_edit(system: DemoSystem) -> None:
    await asyncio.to_thread(system.access, "disable")
    ok = await asyncio.to_thread(system.access, "log", "--verify")
    assert ok.returncode == 0, ok.stderr
    assert "Audit log intact" in ok.stdout
    assert system.machine is not None
    path = system.machine.host_path("/var/lib/tether") / "audit.log"
    lines = path.read_text().splitlines()
    edited = next(i for i, line in enumerate(lines) if '"cli"' in line)  # the opening
    lines[edited] = lines[edited].replace('"cli"', '"someone else"')
    path.write_text("\n".join(lines) + "\n")
    bad = await asyncio.to_thread(system.access, "log", "--verify")
    assert bad.returncode == 1
    assert "TAMPERED" in bad.stdout
    assert f"entry {edited + 1}" in bad.stdout


async def test_account_expiry_date_is_a_layer_that_works_alone(system: DemoSystem) -> None:
    """The OS account carries the expiry too: past it, sshd refuses even with all else open."""
    assert system.machine is not None
    status = json.loads((await asyncio.to_thread(system.access, "status", "--json")).stdout)
    expires = status["access"]["expires_at"][:10]
    shown = system.machine.run(["chage", "-l", "tether-support"], env={"LC_ALL": "C"}).stdout
    line = next(x for x in shown.splitlines() if x.startswith("Account expires"))
    expected = date.fromisoformat(expires) + timedelta(days=1)
    assert line.endswith(expected.strftime("%b %d, %Y")), line
    assert (await ssh(system, system.serial, "true")).returncode == 0
    # Now pretend the agent, the timer and the relay all failed: only the account date is left.
    system.machine.run(["usermod", "-e", "1", "tether-support"], check=True)
    refused = await ssh(system, system.serial, "true")
    assert refused.returncode == 255


async def test_access_log_tells_the_agents_story_and_sshds_with_times_in_order(
    system: DemoSystem,
) -> None:
    """Issue 11: agent start, unclean shutdown, reconcile, reset, sshd lines with times."""
    assert system.agent is not None
    result = await ssh(system, system.serial, "true")
    assert result.returncode == 0, result.stderr
    reset = await asyncio.to_thread(system.access, "reset")
    assert reset.returncode == 0, reset.stderr
    await system.wait_for_tether("connected")
    assert system.machine is not None
    # The agent itself dies without shutting down (inside the machine, not its wrapper).
    system.machine.run(["pkill", "-KILL", "-f", "tether agent serve"])
    await asyncio.to_thread(system.agent.wait, 5)
    system.start_agent("agent2.log")
    for _ in range(100):
        status = json.loads((await asyncio.to_thread(system.access, "status", "--json")).stdout)
        if status["daemon_running"]:
            break
        await asyncio.sleep(0.1)
    listed = json.loads((await asyncio.to_thread(system.access, "log", "--json")).stdout)
    rows = listed["rows"]
    texts = [row["text"] for row in rows]
    assert "agent started" in " ".join(texts)
    assert "tether reset by the customer" in texts
    assert "the agent's last run did not shut down cleanly" in texts
    assert any(t.startswith("agent reconciled access with the machine") for t in texts)
    logins = [row for row in rows if row["source"] == "sshd"]
    assert logins
    assert all(row["at"] is not None for row in logins), logins  # with their time
    times = [row["at"] for row in rows]
    assert times == sorted(times)  # one story, in time order
    human = (await asyncio.to_thread(system.access, "log")).stdout
    login_line = next(line for line in human.splitlines() if "engineer demo logged in" in line)
    assert login_line[:4].isdigit()  # a date, not a blank column
