"""The sandboxed machine, as a test or ``tether demo`` relies on it.

Each test looks at what a user would notice: ssh logins and sudo inside, the host's
files untouched, no way in from the host, uplinks out to the host, and a clean stop.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import socketserver
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.sandbox import SandboxFactory
from tether.sandbox import Sandbox

pytestmark = pytest.mark.sandbox

HOST_FILES = (
    "/etc/passwd",
    "/etc/shadow",
    "/etc/group",
    "/etc/gshadow",
    "/etc/subuid",
    "/etc/subgid",
)
HOST_TREES = ("/etc/ssh", "/etc/sudoers.d", "/root/.ssh")


def _host_fingerprint() -> dict[str, str]:
    """Hash the host files a sandbox must never change; list /home."""
    result: dict[str, str] = {}
    for path in HOST_FILES:
        if os.path.exists(path):
            result[path] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    for tree in HOST_TREES:
        for dirpath, dirnames, filenames in os.walk(tree):
            dirnames.sort()
            result[dirpath] = "dir"
            for name in filenames:
                path = os.path.join(dirpath, name)
                result[path] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    result["/home"] = " ".join(sorted(os.listdir("/home")))
    return result


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in state


def _ssh(box: Sandbox, key: Path, user: str, command: str) -> subprocess.CompletedProcess[str]:
    """Run stock ``ssh`` inside the machine against its own sshd."""
    return box.run(
        [
            "ssh",
            "-i",
            str(key),
            "-F",
            "/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            f"UserKnownHostsFile={key.parent / 'known_hosts'}",
            f"{user}@127.0.0.1",
            command,
        ],
        timeout=30,
    )


def _add_user_with_key(box: Sandbox, tmp_path: Path, user: str) -> Path:
    """``useradd -m`` a user inside and authorize a fresh ed25519 key; return the key."""
    key = tmp_path / f"{user}_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", user, "-f", str(key)], check=True
    )
    box.run(["useradd", "-m", "-s", "/bin/bash", user], check=True)
    box.run(
        ["install", "-d", "-m", "700", "-o", user, "-g", user, f"/home/{user}/.ssh"], check=True
    )
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
            f"/home/{user}/.ssh/authorized_keys",
        ],
        check=True,
    )
    return key


def test_ssh_login_useradd_and_sudo_inside_leave_host_untouched(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    before = _host_fingerprint()
    box = sandbox_factory(hostname="m1")

    key = _add_user_with_key(box, tmp_path, "alice")
    assert box.host_path("/home/alice/.ssh/authorized_keys").read_text().startswith("ssh-ed25519")
    assert "alice:" in box.host_path("/etc/passwd").read_text()

    drop_in = box.run(
        [
            "sh",
            "-c",
            "echo 'alice ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/alice"
            " && chmod 440 /etc/sudoers.d/alice && visudo -c",
        ]
    )
    assert drop_in.returncode == 0, drop_in.stderr
    assert "/etc/sudoers.d/alice: parsed OK" in drop_in.stdout

    login = _ssh(box, key, "alice", "hostname; id -un; sudo -n true && echo sudo-ok")
    assert login.returncode == 0, login.stderr + box.sshd_log()
    assert login.stdout.split() == ["m1", "alice", "sudo-ok"]
    assert "Accepted publickey for alice" in box.sshd_log()

    # sshd's per-session process for alice can outlive the client by a moment; userdel
    # refuses (exit 8) until it has gone.
    deadline = time.monotonic() + 10
    while (gone := box.run(["userdel", "-r", "alice"])).returncode == 8:
        assert time.monotonic() < deadline, gone.stderr
        time.sleep(0.1)
    assert gone.returncode == 0, gone.stderr
    assert not box.host_path("/home/alice").exists()
    assert "alice:" not in box.host_path("/etc/passwd").read_text()

    box.stop()
    assert _host_fingerprint() == before
    assert "alice" not in Path("/etc/passwd").read_text()


def test_host_cannot_connect_into_the_machine(sandbox: Sandbox) -> None:
    interfaces = sandbox.run(
        [sys.executable, "-c", "import socket; print([n for _, n in socket.if_nameindex()])"],
        check=True,
    )
    assert interfaces.stdout.strip() == "['lo']"
    server = sandbox.popen(
        [sys.executable, "-u", "-m", "http.server", "--bind", "127.0.0.1", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd="/etc",
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()  # "Serving HTTP on 127.0.0.1 port N (...)"
        port = int(line.split(" port ")[1].split()[0])
        inside = sandbox.run(
            [
                sys.executable,
                "-c",
                f"import urllib.request as u; print(u.urlopen('http://127.0.0.1:{port}/hostname').read().decode())",
            ],
            check=True,
        )
        assert inside.stdout.strip() == "machine"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        server.terminate()
        server.wait(10)
        if server.stdout is not None:
            server.stdout.close()


class _Echo(socketserver.BaseRequestHandler):
    """Echo everything back as it arrives; on EOF, shut down the sending side."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        while data := sock.recv(1 << 16):
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    request_queue_size = 128  # the default 5 makes the kernel reset bursts of connects


@pytest.fixture
def host_echo() -> Iterator[int]:
    """A TCP echo server on the host's loopback, on a port the OS picked."""
    server = _EchoServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


ECHO_CLIENT = textwrap.dedent(
    """
    import hashlib, os, socket, sys, threading
    port, size, count = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])

    def one(i, results):
        payload = hashlib.sha256(str(i).encode()).digest() * (size // 32)
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        def send():
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)  # half-close: we still read the reply
        sender = threading.Thread(target=send)
        sender.start()
        received = bytearray()
        while chunk := sock.recv(1 << 16):
            received += chunk
        sender.join()
        sock.close()
        results[i] = received == payload

    results = {}
    threads = [threading.Thread(target=one, args=(i, results)) for i in range(count)]
    for t in threads: t.start()
    for t in threads: t.join()
    print(sum(results.values()), "of", count, "intact")
    """
)


def test_uplink_reaches_host_port_with_half_close_and_bulk_data(
    sandbox_factory: SandboxFactory, host_echo: int
) -> None:
    box = sandbox_factory(hostname="m2", uplink_ports=[host_echo], start_sshd=False)
    bulk = box.run([sys.executable, "-c", ECHO_CLIENT, str(host_echo), str(5 << 20), "1"])
    assert bulk.stdout.strip() == "1 of 1 intact", bulk.stderr
    many = box.run([sys.executable, "-c", ECHO_CLIENT, str(host_echo), str(64 << 10), "40"])
    assert many.stdout.strip() == "40 of 40 intact", many.stderr


def test_stop_leaves_no_process_and_twice_is_harmless(sandbox_factory: SandboxFactory) -> None:
    box = sandbox_factory(uplink_ports=[1])
    init_pid, sshd_pid = box.pid, box.sshd_pid
    assert sshd_pid is not None
    sleeper = box.popen(["sleep", "300"])
    inside = [
        int(p) for p in Path(f"/proc/{init_pid}/task/{init_pid}/children").read_text().split()
    ]
    assert _alive(init_pid)
    assert _alive(sshd_pid)

    box.stop()
    assert sleeper.wait(5) is not None
    for pid in [init_pid, sshd_pid, *inside]:
        assert not _alive(pid), f"pid {pid} survived stop()"
    box.stop()
    assert box.sshd_pid is None


def test_sshd_reloads_on_sighup_and_keeps_serving(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    box = sandbox_factory(hostname="m3")
    key = _add_user_with_key(box, tmp_path, "bob")
    before = box.sshd_pid
    box.run(["sh", "-c", "kill -HUP $(cat /run/sshd.pid)"], check=True)
    deadline = time.monotonic() + 10
    while "Received SIGHUP" not in box.sshd_log() and time.monotonic() < deadline:
        time.sleep(0.05)
    login = _ssh(box, key, "bob", "hostname")
    for _ in range(50):  # sshd re-executes itself: its listener is back within moments
        if login.returncode == 0:
            break
        time.sleep(0.1)
        login = _ssh(box, key, "bob", "hostname")
    assert login.stdout.strip() == "m3", login.stderr + box.sshd_log()
    assert box.sshd_pid == before


def test_crashed_owner_leaves_no_process(tmp_path: Path) -> None:
    """A process that made a sandbox and died without stop() takes it along."""
    from tether.sandbox import sandbox_unavailable_reason

    reason = sandbox_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from tether.sandbox import Sandbox
        box = Sandbox(Path({str(tmp_path / "box")!r}), uplink_ports=[1], start_sshd=True)
        box.start()
        print(box.pid, box.sshd_pid, box._uplink.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    owner = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert owner.returncode == -signal.SIGKILL, owner.stderr
    pids = [int(p) for p in owner.stdout.split()]
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if _alive(p)]


def test_host_path_only_for_private_trees(tmp_path: Path) -> None:
    box = Sandbox(tmp_path / "box")
    assert (
        box.host_path("/var/lib/tether/state.db") == tmp_path / "box/root/var/lib/tether/state.db"
    )
    assert box.host_path("/etc/ssh/sshd_config") == tmp_path / "box/root/etc/ssh/sshd_config"
    for shared in ("/usr/bin/ssh", "/tmp/x", "/var/lib/dpkg", "relative"):
        with pytest.raises(ValueError, match=r"not private|not an absolute"):
            box.host_path(shared)
    own_tmp = Sandbox(tmp_path / "own", private_tmp=True)
    assert own_tmp.host_path("/tmp/x") == tmp_path / "own/root/tmp/x"
    assert own_tmp.host_path("/var/tmp/y") == tmp_path / "own/root/var/tmp/y"


def test_private_tmp_keeps_what_is_written_there_on_the_machine(tmp_path: Path) -> None:
    """With private_tmp (the demo's machine), /tmp and /var/tmp are the machine's own."""
    from tether.sandbox import sandbox_unavailable_reason

    if (reason := sandbox_unavailable_reason()) is not None:
        pytest.skip(reason)
    name = f"tether-sandbox-{os.getpid()}-{time.monotonic_ns()}"
    workdir = tmp_path / "box"  # under the host's /tmp: hidden inside, still used by init
    try:
        with Sandbox(workdir, private_tmp=True) as box:
            for top in ("/tmp", "/var/tmp"):
                wrote = box.run(["sh", "-c", f"echo inside > {top}/{name}; stat -c %a {top}"])
                assert wrote.stdout.strip() == "1777", wrote.stderr
                assert not Path(top, name).exists()
                assert box.host_path(f"{top}/{name}").read_text() == "inside\n"
            assert box.run(["test", "-e", str(workdir)]).returncode == 1
            assert box.sshd_pid is not None  # the machine came up as usual
    finally:
        for top in ("/tmp", "/var/tmp"):
            Path(top, name).unlink(missing_ok=True)


def test_a_checkout_under_tmp_still_runs_inside_a_private_tmp(tmp_path: Path) -> None:
    """`tether demo` from a clone in /tmp: the machine still sees the Python running it.

    The fresh-clone check of this project ran from /tmp/fresh and every private-/tmp
    machine failed to start its agent ("No such file: /tmp/fresh/.venv/bin/python").
    """
    from tether.sandbox import sandbox_unavailable_reason
    from tether.sandbox.init import python_under

    if (reason := sandbox_unavailable_reason()) is not None:
        pytest.skip(reason)
    # Which paths would be kept if this interpreter lived under a hidden directory.
    prefix_parent = str(Path(sys.prefix).parent)
    kept = python_under([prefix_parent])
    try:
        assert sys.prefix in [path for _, path in kept]
    finally:
        for fd, _ in kept:
            os.close(fd)
    assert python_under(["/nonexistent-hidden-dir"]) == []
    # And for real: a "venv" under the host's /tmp, visible inside the private /tmp.
    with Sandbox(tmp_path / "box", private_tmp=True) as box:
        shown = box.run([sys.executable, "-c", "import tether, sys; print(sys.prefix)"])
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.strip() == sys.prefix
