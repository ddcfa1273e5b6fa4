"""The engineer CLI as typed: `tether login`, `ls`, `ssh-config`, `web`, with stock OpenSSH.

Each test runs the real ``tether`` command as a process against a vendor HTTP service
(the api_models contract stub; the real service in
``test_engineer_flow_against_real_vendor_service``), a real relay, and a machine
tethered to it (see world.py). Nothing here needs root.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import socket
import ssl
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.integration.engineer.world import (
    ENGINEER,
    PASSWORD,
    SERIAL,
    World,
    engineer_world,
)
from tests.integration.harness import run_ssh
from tether.certs import sign_engineer_certificate
from tether.sshlib import asyncssh

SSH = shutil.which("ssh") or "/usr/bin/ssh"
SCP = shutil.which("scp") or "/usr/bin/scp"
SFTP = shutil.which("sftp") or "/usr/bin/sftp"
LOGGED_IN = re.compile(
    r"^Logged in as alice; certificate valid until \d\d:\d\d UTC \(in (7h 59m|8h)\)$", re.M
)


@pytest.fixture(params=["stub", "real"])
def backend(request: pytest.FixtureRequest) -> str:
    """Which vendor service: the contract stub, or the real one (skips until it exists)."""
    return str(request.param)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _config_without_spaces(world: World) -> Path:
    """A copy of the generated configuration at a path without spaces.

    OpenSSH hands ``-F FILE`` on to the ProxyJump ssh unquoted, so ``-F`` cannot name a
    file whose path has a space (the paths *inside* the file still do: the state
    directory is "engineer state"). Engineers use ``Include`` and need no ``-F``.
    """
    copy = world.tmp / "ssh_config"
    copy.write_text(world.ssh_config.read_text())
    return copy


def _ssh(world: World, *args: str) -> list[str]:
    """Stock ssh with the generated configuration only (never the host's)."""
    return [SSH, "-F", str(_config_without_spaces(world)), "-o", "BatchMode=yes", *args]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _read_echo(port: int, message: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        greeting = await asyncio.wait_for(reader.readline(), 10)
        writer.write(message)
        await writer.drain()
        echoed = await asyncio.wait_for(reader.readexactly(len(message)), 10)
        return greeting + echoed
    finally:
        writer.close()


# --- login ------------------------------------------------------------------------


async def test_login_stores_files_with_the_right_modes(tmp_path: Path, backend: str) -> None:
    async with engineer_world(tmp_path, backend) as world:
        result = await world.login()
        state = world.state_dir
        assert LOGGED_IN.search(result.stdout), result.stdout
        assert "Generated a new SSH key" in result.stderr
        assert _mode(state) == 0o700
        assert _mode(state / "token") == 0o600
        assert _mode(state / "id_ed25519") == 0o600
        assert (state / "id_ed25519-cert.pub").read_text().startswith("ssh-ed25519-cert-v01")
        host_key = (world.vendor.dir / "relay_host_key.pub").read_text().split()
        assert (state / "known_hosts").read_text() == (
            f"[127.0.0.1]:{world.vendor.relay_port} {host_key[0]} {host_key[1]}\n"
        )
        settings = (state / "engineer.toml").read_text()
        assert f'vendor = "{world.url}"' in settings
        assert f'relay = "127.0.0.1:{world.vendor.relay_port}"' in settings
        token = (state / "token").read_text().strip()
        assert token not in result.stdout + result.stderr + settings
        assert "warning" not in result.stderr  # http:// on loopback is fine

        as_json = await world.tether(
            "login", "--vendor", world.url, "--json", input=PASSWORD + "\n"
        )
        data = json.loads(as_json.stdout)
        assert data["engineer"] == ENGINEER
        assert data["principals"] == [ENGINEER, "tether-support"]
        assert data["key_generated"] is False


async def test_login_asks_for_totp_when_the_service_wants_one(tmp_path: Path, backend: str) -> None:
    async with engineer_world(tmp_path, backend) as world:
        code = await world.add_engineer("bob", PASSWORD, True)
        assert code is not None
        without = await world.tether(
            "login", "--vendor", world.url, "--name", "bob", input=f"{PASSWORD}\n"
        )
        assert without.returncode == 2
        assert "no TOTP code on standard input" in without.stderr
        result = await world.tether(
            "login", "--vendor", world.url, "--name", "bob", input=f"{PASSWORD}\n{code()}\n"
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("Logged in as bob;")


async def test_login_failures_in_plain_words(tmp_path: Path, backend: str) -> None:
    async with engineer_world(tmp_path, backend) as world:
        wrong = await world.tether(
            "login", "--vendor", world.url, "--name", ENGINEER, input="wrong\n"
        )
        assert wrong.returncode == 1
        assert re.search(
            r"refused the login as alice: wrong (engineer )?name or password", wrong.stderr
        )
        assert "Traceback" not in wrong.stderr

        dead = f"http://127.0.0.1:{_free_port()}"
        down = await world.tether("login", "--vendor", dead, "--name", ENGINEER, input="x\n")
        assert down.returncode == 1
        assert f"cannot reach the vendor service at {dead}" in down.stderr

        plain = await world.tether(
            "login", "--vendor", "http://vendor.invalid", "--name", ENGINEER, input="x\n"
        )
        assert "warning: http://vendor.invalid does not use TLS" in plain.stderr
        assert plain.returncode == 1

        bad = await world.tether("login", "--vendor", "vendor.example.com", "--name", ENGINEER)
        assert bad.returncode == 2
        assert "invalid vendor URL" in bad.stderr

        long = await world.tether("login", "--vendor", world.url, "--ttl", "8d", input="x\n")
        assert long.returncode == 2
        assert "at most 7 days" in long.stderr


# --- ls ---------------------------------------------------------------------------


async def test_ls_lists_the_tethered_serial(tmp_path: Path, backend: str) -> None:
    async with engineer_world(tmp_path, backend) as world:
        await world.login()
        table = await world.tether("ls")
        assert table.returncode == 0, table.stderr
        header, row = table.stdout.splitlines()[:2]
        assert header.split() == [
            "SERIAL",
            "SINCE",
            "EXPIRES",
            "IN",
            "PORTS",
            "ENGINEERS",
            "DESCRIPTION",
        ]
        ports = ",".join(str(p) for p in sorted([world.echo.port, world.machine.port]))
        assert row.split()[0] == SERIAL
        assert ports in row
        assert re.search(r"\b23h 59m\b|\b1d\b", row), row

        listed = json.loads((await world.tether("ls", "--json")).stdout)
        assert [t["serial"] for t in listed] == [SERIAL]
        assert listed[0]["ports"] == sorted([world.echo.port, world.machine.port])
        assert 86000 < listed[0]["expires_in_seconds"] <= 86400


# --- ssh-config with stock OpenSSH ------------------------------------------------------


async def test_ssh_config_reaches_the_machine_with_stock_ssh(tmp_path: Path, backend: str) -> None:
    async with engineer_world(tmp_path, backend) as world:
        await world.login()
        printed = await world.tether("ssh-config")
        assert printed.returncode == 0, printed.stderr
        assert f"Host {SERIAL} {SERIAL.lower()}\n" in printed.stdout
        assert f'IdentityFile "{world.state_dir}/id_ed25519"' in printed.stdout

        written = await world.tether("ssh-config", "--write", "--serial", "OTHER-7")
        assert written.returncode == 0, written.stderr
        assert "Include" in written.stdout
        text = world.ssh_config.read_text()
        assert text.startswith(printed.stdout.split("Host tether-relay")[0])
        assert "Host OTHER-7 other-7\n" in text
        assert _mode(world.ssh_config) == 0o600

        # ssh -W SERIAL:PORT through the relay alias: the echo service answers.
        echoed = await run_ssh(
            _ssh(world, "-W", f"{SERIAL}:{world.echo.port}", "tether-relay"), input=b"ping\n"
        )
        assert echoed.stdout == b"hello from the machine\nping\n", echoed.stderr

        # ssh -N -L: a local port to the machine's service.
        local = _free_port()
        tunnel = await asyncio.create_subprocess_exec(
            *_ssh(
                world,
                "-N",
                "-o",
                "ExitOnForwardFailure=yes",
                "-L",
                f"127.0.0.1:{local}:{SERIAL}:{world.echo.port}",
                "tether-relay",
            ),
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            for _ in range(200):
                try:
                    got = await _read_echo(local, b"via -L\n")
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("ssh -L did not open its port")
            assert got == b"hello from the machine\nvia -L\n"
        finally:
            tunnel.terminate()
            await tunnel.wait()


async def test_ssh_scp_sftp_to_the_serial_go_through_the_relay(
    tmp_path: Path, backend: str
) -> None:
    """`ssh SERIAL`: ProxyJump via the relay, the support account, the certificate."""
    async with engineer_world(tmp_path, backend) as world:
        await world.login()
        assert (await world.tether("ssh-config", "--write")).returncode == 0
        port = str(world.machine.port)

        result = await run_ssh(_ssh(world, "-p", port, SERIAL, "hello"))
        assert result.stdout == b"machine says hello to tether-support\n", result.stderr
        assert world.machine.logins == ["tether-support"]
        known = (world.state_dir / "known_machines").read_text()
        assert world.machine.host_key.export_public_key().decode().split()[1] in known

        lower = await run_ssh(_ssh(world, "-p", port, SERIAL.lower(), "hello"))
        assert lower.returncode == 0, lower.stderr

        upload = tmp_path / "notes.txt"
        upload.write_text("support notes\n")
        options = ["-F", str(_config_without_spaces(world)), "-P", port, "-o", "BatchMode=yes"]
        # -O: the classic scp protocol. The stand-in machine's SFTP server (asyncssh) lacks
        # the truncate that scp's SFTP mode sends; a real sshd has it (tests/e2e).
        scp = await run_ssh([SCP, "-O", *options, str(upload), f"{SERIAL}:/notes.txt"])
        assert scp.returncode == 0, scp.stderr
        assert (world.machine.files / "notes.txt").read_text() == "support notes\n"

        back = tmp_path / "back.txt"
        sftp = await run_ssh(
            [SFTP, *options, "-b", "-", SERIAL], input=f"get /notes.txt {back}\n".encode()
        )
        assert sftp.returncode == 0, sftp.stderr
        assert back.read_text() == "support notes\n"


async def test_ssh_config_install_adds_include_once(tmp_path: Path, backend: str) -> None:
    async with engineer_world(tmp_path, backend) as world:
        await world.login()
        ssh_dir = world.home / ".ssh"
        ssh_dir.mkdir(mode=0o700)
        (ssh_dir / "config").write_text("Host work\n    User me\n")
        first = await world.tether("ssh-config", "--install")
        assert first.returncode == 0, first.stderr
        assert "Added `Include" in first.stdout
        text = (ssh_dir / "config").read_text()
        assert text.count("Include ") == 1
        assert text.index("Include ") < text.index("Host work")
        assert '"~/../engineer state/ssh_config"' not in text  # not under home: absolute
        assert str(world.ssh_config) in text
        backups = list(ssh_dir.glob("config.tether-backup-*"))
        assert len(backups) == 1
        second = await world.tether("ssh-config", "--install")
        assert "already includes it" in second.stdout
        assert (ssh_dir / "config").read_text() == text


# --- web --------------------------------------------------------------------------


async def test_web_forwards_a_connection(tmp_path: Path, backend: str) -> None:
    async with engineer_world(tmp_path, backend) as world:
        await world.login()
        proc = await world.spawn("web", SERIAL, "--port", str(world.echo.port))
        try:
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            match = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/\n", line)  # no TLS there
            assert match, line
            notice = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
            assert "Ctrl-C to close" in notice
            port = int(match.group(1))
            assert await _read_echo(port, b"web one\n") == b"hello from the machine\nweb one\n"
            assert await _read_echo(port, b"web two\n") == b"hello from the machine\nweb two\n"
            proc.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(proc.wait(), 10) == 0
            with pytest.raises(ConnectionRefusedError):
                await _read_echo(port, b"closed\n")
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def _tls_context(tmp: Path) -> ssl.SSLContext:
    """A server context with a fresh self-signed certificate (as appliances ship them).

    The certificate (``tmp/web.pem``) names 127.0.0.1, where the engineer opens it.
    """
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERIAL)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    pem = tmp / "web.pem"
    pem.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem)
    return context


@asynccontextmanager
async def _web_server(tls: ssl.SSLContext | None) -> AsyncIterator[int]:
    """A tiny web UI on this host's loopback, over TLS or plain HTTP; yields its port."""
    body = b"served over " + (b"https" if tls else b"http")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass  # the probe, or a client that went away
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


async def test_web_says_https_only_where_the_machine_serves_tls(
    tmp_path: Path, backend: str
) -> None:
    async with (
        _web_server(_tls_context(tmp_path)) as tls_port,
        _web_server(None) as plain_port,
        engineer_world(tmp_path, backend, extra_ports=[tls_port, plain_port]) as world,
    ):
        await world.login()
        for port, scheme in ((tls_port, "https"), (plain_port, "http")):
            proc = await world.spawn("web", SERIAL, "--port", str(port))
            try:
                assert proc.stdout is not None
                url = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
                assert re.fullmatch(rf"{scheme}://127\.0\.0\.1:\d+/", url), (port, url)
                trusted = ssl.create_default_context(cafile=tmp_path / "web.pem")
                async with httpx.AsyncClient(verify=trusted, trust_env=False) as client:
                    page = await client.get(url, timeout=10)
                assert page.text == f"served over {scheme}"
            finally:
                proc.send_signal(signal.SIGINT)
                await asyncio.wait_for(proc.wait(), 10)


async def test_web_on_a_chosen_local_port(tmp_path: Path, backend: str) -> None:
    async with engineer_world(tmp_path, backend) as world:
        await world.login()
        local = _free_port()
        proc = await world.spawn(
            "web", SERIAL, "--port", str(world.echo.port), "--local-port", str(local)
        )
        try:
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert line == f"http://127.0.0.1:{local}/\n"
            assert await _read_echo(local, b"hi\n") == b"hello from the machine\nhi\n"
        finally:
            proc.send_signal(signal.SIGINT)
            await asyncio.wait_for(proc.wait(), 10)


async def test_web_refusals_are_shown_in_the_relays_words(tmp_path: Path, backend: str) -> None:
    async with engineer_world(tmp_path, backend) as world:
        await world.login()
        closed = await world.tether("web", SERIAL, "--port", "8080")
        assert closed.returncode == 1
        assert f"port 8080 is not open on machine {SERIAL}" in closed.stderr
        other = await world.tether("web", "OTHER-7")
        assert other.returncode == 1
        assert "machine OTHER-7 is not tethered" in other.stderr
        bad = await world.tether("web", "a;b")
        assert bad.returncode == 2
        assert "invalid serial" in bad.stderr


async def test_ssh_config_and_web_answer_in_json(tmp_path: Path, backend: str) -> None:
    async with engineer_world(tmp_path, backend) as world:
        await world.login()
        printed = await world.tether("ssh-config", "--json", "--serial", "OTHER-7")
        ssh_dir = world.home / ".ssh"
        ssh_dir.mkdir(mode=0o700)
        installed = await world.tether("ssh-config", "--install", "--json")
        echo_port = world.echo.port
        proc = await world.spawn("web", SERIAL, "--port", str(echo_port), "--json")
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            opened = json.loads(line)
            greeting = await _read_echo(opened["local_port"], b"json\n")
        finally:
            proc.send_signal(signal.SIGINT)
            await asyncio.wait_for(proc.wait(), 10)
    assert printed.returncode == 0, printed.stderr
    shown = json.loads(printed.stdout)
    assert (shown["machines"], shown["path"]) == ([SERIAL, "OTHER-7"], None)
    assert f"Host {SERIAL} {SERIAL.lower()}\n" in shown["config"]
    assert installed.returncode == 0, installed.stderr
    done = json.loads(installed.stdout)
    assert done["path"] == str(world.ssh_config)
    assert world.ssh_config.read_text() == done["config"]
    assert done["include"]["changed"] is True
    assert done["include"]["config"] == str(ssh_dir / "config")
    assert opened["url"] == f"http://127.0.0.1:{opened['local_port']}/"
    assert (opened["scheme"], opened["serial"], opened["port"]) == ("http", SERIAL, echo_port)
    assert greeting == b"hello from the machine\njson\n"


# --- not logged in, expired ---------------------------------------------------------

COMMANDS = [("ls",), ("ssh-config",), ("web", SERIAL), ("ssh-config", "--write")]


async def test_every_command_says_how_to_log_in_when_not_logged_in(
    tmp_path: Path, backend: str
) -> None:
    async with engineer_world(tmp_path, backend) as world:
        for command in COMMANDS:
            result = await world.tether(*command)
            assert result.returncode == 1, command
            assert "not logged in" in result.stderr, command
            assert "tether login --vendor" in result.stderr, command


async def test_expired_certificate_every_command_says_so(tmp_path: Path, backend: str) -> None:
    async with engineer_world(tmp_path, backend) as world:
        await world.login()
        key = asyncssh.read_private_key(world.state_dir / "id_ed25519")
        past = world.vendor.authority.clock.now() - timedelta(hours=3)
        expired = sign_engineer_certificate(
            world.vendor.authority.ca_key,
            key.convert_to_public(),
            engineer=ENGINEER,
            now=past,
            ttl=timedelta(hours=1),
        )
        (world.state_dir / "id_ed25519-cert.pub").write_text(expired.openssh() + "\n")
        end = f"{expired.valid_before:%H:%M} UTC"
        for command in COMMANDS:
            result = await world.tether(*command)
            assert result.returncode == 1, command
            assert f"your certificate expired at {end}" in result.stderr, (command, result.stderr)
            assert f"run `tether login --vendor {world.url}` again" in result.stderr
        # Logging in again is the cure.
        await world.login()
        assert (await world.tether("ls")).returncode == 0


async def test_session_ended_on_the_service_says_log_in_again(tmp_path: Path, backend: str) -> None:
    async with engineer_world(tmp_path, backend) as world:
        await world.login()
        await world.end_session(world.token())
        result = await world.tether("ls")
        assert result.returncode == 1
        assert "no longer accepts your login" in result.stderr
        assert f"tether login --vendor {world.url}" in result.stderr
        # The certificate still works: a configuration for named machines can be written.
        named = await world.tether("ssh-config", "--serial", SERIAL)
        assert named.returncode == 0, named.stderr
        assert "warning: the vendor service no longer accepts your login" in named.stderr
        assert f"Host {SERIAL} " in named.stdout
