"""Shared helpers: keys and certificates, stock ssh inside the sandbox, the driver, hashes."""

from __future__ import annotations

import hashlib
import json
import os
import select
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tether.sandbox import Sandbox

ACCOUNT = "tether-support"
ENGINEER_ID = "engineer-id"
TETHER_SOURCES = ["127.0.0.1", "::1"]
DRIVER = Path(__file__).with_name("driver.py")
#: The trees whose bytes closing must give back exactly.
WATCHED = ("/etc/ssh", "/etc/sudoers.d")


def keygen(path: Path, comment: str) -> Path:
    """Make an ed25519 key pair at ``path`` (and ``path.pub``); return ``path``."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
    )
    return path


def sign(ca: Path, key: Path, principals: str, validity: str = "-1m:+1h") -> Path:
    """Sign ``key.pub`` with ``ca`` like the vendor does; ssh then uses ``key-cert.pub``."""
    argv = ["ssh-keygen", "-q", "-s", str(ca), "-I", ENGINEER_ID, "-n", principals]
    subprocess.run([*argv, "-V", validity, f"{key}.pub"], check=True)
    return key.with_name(key.name + "-cert.pub")


class Keys:
    """A vendor CA and engineer keys with good and bad certificates, in ``directory``."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self.ca = keygen(directory / "vendor_ca", "vendor CA")
        self.engineer = keygen(directory / "engineer", "engineer")
        sign(self.ca, self.engineer, ACCOUNT)
        self.expired = keygen(directory / "expired", "expired")
        sign(self.ca, self.expired, ACCOUNT, "-2h:-1h")
        self.wrong_principal = keygen(directory / "wrong_principal", "wrong principal")
        sign(self.ca, self.wrong_principal, "someone-else")
        #: A plain key (no certificate next to it).
        self.plain = keygen(directory / "plain", "plain")

    @property
    def ca_line(self) -> str:
        return Path(f"{self.ca}.pub").read_text().strip()

    def grant(self, allow_from: list[str] | None = None, **extra: Any) -> dict[str, Any]:
        """A grant for the driver: tether mode, expiring in two hours."""
        expires = datetime.now(UTC) + timedelta(hours=2)
        return {
            "account": ACCOUNT,
            "vendor_ca": self.ca_line,
            "expires_at": expires.isoformat(),
            "allow_from": TETHER_SOURCES if allow_from is None else allow_from,
            **extra,
        }


def ssh_argv(key: Path, user: str, command: str, *options: str) -> list[str]:
    """Stock ``ssh`` with only ``key`` (and its certificate, if any) to 127.0.0.1:22."""
    return [
        "ssh",
        "-F",
        "/dev/null",
        "-i",
        str(key),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        f"UserKnownHostsFile={key.parent / 'known_hosts'}",
        "-o",
        "ConnectTimeout=10",
        *options,
        f"{user}@127.0.0.1",
        command,
    ]


def ssh(box: Sandbox, key: Path, user: str, command: str) -> subprocess.CompletedProcess[str]:
    """Run ``command`` over ssh inside the sandbox."""
    return box.run(ssh_argv(key, user, command), timeout=30)


def refused(result: subprocess.CompletedProcess[str]) -> bool:
    """Whether an ssh login was refused by authentication."""
    return result.returncode == 255 and "Permission denied" in result.stderr


def call(box: Sandbox, op: str, **request: Any) -> dict[str, Any]:
    """Run one SystemMachine call inside the sandbox through the driver."""
    result = box.run(
        [sys.executable, str(DRIVER)], input=json.dumps({"op": op, **request}), timeout=60
    )
    if result.returncode != 0 or not result.stdout:
        raise AssertionError(f"driver failed ({result.returncode}):\n{result.stderr}")
    answer: dict[str, Any] = json.loads(result.stdout)
    answer["log"] = result.stderr
    return answer


def open_ok(box: Sandbox, grant: dict[str, Any], hook: str | None = None) -> dict[str, Any]:
    """open() and insist it worked."""
    answer = call(box, "open", grant=grant, hook=hook)
    assert answer["ok"], answer["message"] + "\n" + answer["log"]
    return answer


def tree(box: Sandbox, *inside: str) -> dict[str, str]:
    """Hash every file (and list every directory) under the given inside paths."""
    result: dict[str, str] = {}
    for top in inside:
        root = box.host_path(top)
        if root.is_file():
            result[top] = hashlib.sha256(root.read_bytes()).hexdigest()
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel = "/" + str(Path(dirpath).relative_to(box.host_path("/etc").parent))
            result[rel] = f"dir {oct(os.stat(dirpath).st_mode)}"
            for name in filenames:
                path = Path(dirpath, name)
                mode = oct(path.stat().st_mode)
                result[f"{rel}/{name}"] = f"{mode} {hashlib.sha256(path.read_bytes()).hexdigest()}"
    return result


def effective(box: Sandbox, user: str = "root", addr: str = "127.0.0.1") -> str:
    """sshd's effective configuration for a connection (``sshd -T -C``)."""
    spec = f"user={user},host=localhost,addr={addr}"
    return box.run(["/usr/sbin/sshd", "-T", "-C", spec], check=True).stdout


def account_line(box: Sandbox, account: str = ACCOUNT) -> str:
    """The account's /etc/passwd line ("" if none), as ``getent`` sees it."""
    return box.run(["getent", "passwd", account]).stdout.strip()


def shadow_fields(box: Sandbox, account: str = ACCOUNT) -> list[str]:
    """The account's /etc/shadow fields."""
    for line in box.host_path("/etc/shadow").read_text().splitlines():
        if line.startswith(account + ":"):
            return line.split(":")
    raise AssertionError(f"{account} is not in /etc/shadow")


def reload_sshd(box: Sandbox) -> None:
    """SIGHUP the sandbox's sshd and wait until it listens again (pid file rewritten)."""
    pid_file = box.host_path("/run/sshd.pid")
    before = pid_file.stat().st_mtime_ns
    box.signal_sshd()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if pid_file.stat().st_mtime_ns != before:
                return
        except FileNotFoundError:
            pass
        time.sleep(0.01)
    raise AssertionError("sshd did not come back after SIGHUP")


def authorize(box: Sandbox, key: Path, user: str) -> None:
    """Put ``key.pub`` in ``user``'s authorized_keys inside the sandbox."""
    home = "/root" if user == "root" else f"/home/{user}"
    box.run(["install", "-d", "-m", "700", "-o", user, "-g", user, f"{home}/.ssh"], check=True)
    box.run(
        [
            "install",
            "-m",
            "600",
            "-o",
            user,
            "-g",
            user,
            f"{key}.pub",
            f"{home}/.ssh/authorized_keys",
        ],
        check=True,
    )


def read_line(process: subprocess.Popen[str], timeout: float = 15) -> str:
    """Read one line of a child's stdout, or fail after ``timeout`` seconds."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    return process.stdout.readline().strip() if ready else ""
