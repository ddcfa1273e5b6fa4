"""A machine whose only way out is a real Squid: the tether goes through it (issue 16).

The machine is a sandbox whose one uplink is the proxy's port; the relay (TLS on, in
this process) is on a host port the machine cannot reach directly, so direct ``ssh``
and ``tls`` fail and the agent must use ``tls-proxy``: CONNECT through Squid, which
allows CONNECT only to the relay's port (the office's "443 only"). A TLS-inspecting
Squid (ssl-bump, with a CA of the test's own) breaks TLS open and still carries the
tether, because the SSH inside is pinned, not the TLS.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.integration.agent.test_cli import Machine, stop
from tests.integration.harness import (
    FAST,
    Agent,
    EchoServer,
    Engineer,
    Vendor,
    run_ssh,
    vendor_setup,
)
from tether.agent.network import Carrier, NetworkSettings, TransportKind, resolve_proxy
from tether.agent.probe import probe_transport
from tether.agent.status import TunnelState
from tether.keys import KeyKind
from tether.relay.server import Relay
from tether.sandbox import Sandbox
from tether.sandbox.squid import Squid, squid_unavailable_reason, ssl_bump_unavailable_reason
from tether.sshlib import asyncssh
from tether.tlscert import write_self_signed

pytestmark = [pytest.mark.sandbox, pytest.mark.squid]

PASSWORD = "s3cret-Proxy-pw-7731"
#: The issuer a TLS-inspecting office proxy signs its certificates with (RFC 4514).
PROXY_CA = "CN=Office Inspection CA,O=Example Office Firewall"


def _write_proxy_ca(directory: Path) -> tuple[Path, Path]:
    """A CA of the office's own, as a TLS-inspecting proxy has (RSA: Squid signs with it)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Office Firewall"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Office Inspection CA"),
        ]
    )
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "proxy-ca.pem", directory / "proxy-ca.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.fixture
def squid_factory() -> Iterator[Callable[..., Squid]]:
    reason = squid_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    started: list[Squid] = []

    def make(connect_ports: list[int], **kwargs: object) -> Squid:
        squid = Squid(connect_ports, **kwargs)  # type: ignore[arg-type]
        squid.start()
        started.append(squid)
        return squid

    yield make
    for squid in started:
        squid.cleanup()


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[Vendor]:
    cert, key = tmp_path / "relay.crt", tmp_path / "relay.key"
    write_self_signed("127.0.0.1", cert, key)
    async with vendor_setup(tmp_path, tls_certificate=cert, tls_key=key) as vendor:
        yield vendor


def _machine(
    vendor: Vendor,
    squid: Squid,
    sandbox_factory: Callable[..., Sandbox],
    tmp_path: Path,
    credentials: str | None = None,
) -> Machine:
    box = sandbox_factory(hostname="M-1", uplink_ports=[squid.port])  # the proxy, nothing else
    trust = (vendor.dir / "agent-trust.toml").read_text()
    network = f'[network]\nproxy = "http://127.0.0.1:{squid.port}"\n'
    if credentials is not None:
        secret = box.host_path("/etc/tether") / "proxy.pass"
        secret.write_text(credentials + "\n")
        secret.chmod(0o600)
        network += 'proxy_credentials = "proxy.pass"\n'
    (box.host_path("/etc/tether") / "agent.toml").write_text(
        f'serial = "M-1"\n{trust}sshd_log = "/var/log/sshd.log"\n'
        "[tether]\nbackoff_initial = 0.5\nbackoff_cap = 2.0\nconnect_timeout = 5\n" + network
    )
    return Machine(box, tmp_path / "agent.log")


async def _tether_and_reach_sshd(
    machine: Machine, relay: Vendor, alice: Engineer, key: str, transport: str
) -> None:
    """Open access with ``key``: the tether comes up over ``transport`` (as ``status``
    says it), and the engineer's stock ssh reaches the machine's own sshd through it."""
    agent = await machine.start_agent()
    try:
        assert (await machine.tether("access", "enable", "--key", key)).returncode == 0
        body = await machine.wait_tunnel("connected", timeout=30)
        tunnel = body["tunnel"]
        assert isinstance(tunnel, dict)
        assert tunnel["transport"] == transport
        human = await machine.tether("access", "status")
        assert f"over {transport}" in human.stdout
        banner = await run_ssh(
            alice.ssh_args(relay.relay_port, "-W", "m-1:22", "alice@127.0.0.1"), timeout=20
        )
        assert banner.stdout.startswith(b"SSH-2.0-OpenSSH"), banner.stderr
    finally:
        await stop(machine, agent)


async def test_tether_comes_up_over_tls_through_the_only_proxy_and_ssh_reaches_the_machine(
    relay: Vendor,
    squid_factory: Callable[..., Squid],
    sandbox_factory: Callable[..., Sandbox],
    tmp_path: Path,
) -> None:
    squid = squid_factory([relay.relay_port])
    machine = _machine(relay, squid, sandbox_factory, tmp_path)
    alice = await relay.engineer("alice", tmp_path)
    key, _ = await relay.issue("M-1", ports=[22])
    await _tether_and_reach_sshd(
        machine, relay, alice, key, f"tls-proxy via 127.0.0.1:{squid.port}"
    )
    assert f"CONNECT 127.0.0.1:{relay.relay_port}" in squid.access_log()


async def _argv_everywhere() -> str:
    """Every process's command line on this host (the sandbox's included)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue
    return "\n".join(found)


@pytest.mark.parametrize("right", [True, False], ids=["right-password", "wrong-password"])
async def test_proxy_basic_auth_and_the_password_stays_secret(
    relay: Vendor,
    squid_factory: Callable[..., Squid],
    sandbox_factory: Callable[..., Sandbox],
    tmp_path: Path,
    right: bool,
) -> None:
    squid = squid_factory([relay.relay_port], users={"bob": PASSWORD})
    given = PASSWORD if right else PASSWORD + "-typo"
    machine = _machine(relay, squid, sandbox_factory, tmp_path, credentials=f"bob:{given}")
    key, _ = await relay.issue("M-1", ports=[22])
    agent = await machine.start_agent()
    try:
        assert (await machine.tether("access", "enable", "--key", key)).returncode == 0
        if right:
            await machine.wait_tunnel("connected", timeout=30)
        else:
            body = await machine.wait_tunnel("reconnecting", timeout=30)
            # The agent backs off (reconnecting in N s) rather than hammering the proxy.
            tunnel = body["tunnel"]
            assert isinstance(tunnel, dict)
            assert "refused the user and password" in str(tunnel["reason"])
            assert "407" in str(tunnel["reason"])
            assert tunnel["retry_at"] is not None
        argv = await _argv_everywhere()
        status = await machine.tether("access", "status", "--json")
        human = await machine.tether("access", "status")
        log_text = await machine.tether("access", "log")
    finally:
        await stop(machine, agent)
    audit = (machine.state_dir / "audit.log").read_text()
    for place, text in {
        "argv": argv,
        "status --json": status.stdout + status.stderr,
        "status": human.stdout + human.stderr,
        "access log": log_text.stdout,
        "audit file": audit,
        "agent log": machine.log.read_text(),
    }.items():
        assert PASSWORD not in text, place
    assert json.loads(status.stdout)["tunnel"]["relay"] == f"127.0.0.1:{relay.relay_port}"
    assert "bob" in squid.access_log()  # the proxy did see the login attempt


async def test_a_proxy_that_refuses_connect_passes_the_tether_as_a_websocket(
    relay: Vendor, squid_factory: Callable[..., Squid], tmp_path: Path
) -> None:
    squid = squid_factory([relay.relay_port], allow_connect=False)
    # Only the proxy's ways: direct ones would work in this process's network.
    network = NetworkSettings(
        transports=(TransportKind.TLS_PROXY, TransportKind.WEBSOCKET_PROXY),
        proxy=f"http://127.0.0.1:{squid.port}",
        environ={},
    )
    settings = replace(FAST, network=network)
    async with EchoServer() as service:
        key, claims = await relay.issue("M-1", ports=[service.port])
        alice = await relay.engineer("alice", tmp_path)
        async with Agent(key, claims, [service.port], settings=settings) as agent:
            await agent.wait_for(TunnelState.CONNECTED, timeout=20)
            assert agent.tunnel.status.transport == f"websocket-proxy via 127.0.0.1:{squid.port}"
            result = await run_ssh(
                alice.ssh_args(relay.relay_port, "-W", f"m-1:{service.port}", "alice@127.0.0.1"),
                input=b"ws\n",
            )
        assert result.stdout == b"hello from the machine\nws\n", result.stderr
    log = squid.access_log()
    assert "TCP_DENIED/403" in log
    assert "CONNECT" in log


async def _check(machine: Machine, key: str) -> tuple[int, dict[str, dict[str, object]], str]:
    done = await machine.tether("access", "check", "--key", "-", "--json", input=key.encode())
    body = json.loads(done.stdout)
    human = await machine.tether("access", "check", "--key", "-", input=key.encode())
    return done.returncode, {c["name"]: c for c in body["checks"]}, done.stdout + human.stdout


@pytest.mark.parametrize(
    ("users", "credentials", "connect_to_relay", "words"),
    [
        ({"bob": PASSWORD}, None, True, "wants a user and password (HTTP 407)"),
        ({"bob": PASSWORD}, "bob:wrong", True, "refused the user and password"),
        # CONNECT only to 443: refused, but the WebSocket upgrade passes and carries it.
        ({}, None, False, "refused to connect to 127.0.0.1:"),
    ],
    ids=["407-no-password", "407-wrong-password", "403-connect-refused"],
)
async def test_check_explains_each_way_that_fails(
    relay: Vendor,
    squid_factory: Callable[..., Squid],
    sandbox_factory: Callable[..., Sandbox],
    tmp_path: Path,
    users: dict[str, str],
    credentials: str | None,
    connect_to_relay: bool,
    words: str,
) -> None:
    squid = squid_factory([relay.relay_port if connect_to_relay else 443], users=users)
    machine = _machine(relay, squid, sandbox_factory, tmp_path, credentials=credentials)
    key, _ = await relay.issue("M-1", ports=[22])
    code, checks, text = await _check(machine, key)
    assert "connection refused" in str(checks["relay over ssh"]["detail"])
    assert words in str(checks["relay over tls-proxy"]["detail"])
    assert PASSWORD not in text
    websocket = checks["relay over websocket-proxy"]
    if users:
        assert code == 1
        assert checks["relay reachable"]["ok"] is False
        assert "407" in str(websocket["detail"])
    else:
        assert code == 0, text
        assert str(websocket["detail"]).startswith("works (websocket-proxy via")
        assert checks["relay over tls-proxy"]["ok"] is True  # explained, not fatal


async def test_check_names_the_way_that_works_and_the_tls_issuer(
    relay: Vendor,
    squid_factory: Callable[..., Squid],
    sandbox_factory: Callable[..., Sandbox],
    tmp_path: Path,
) -> None:
    squid = squid_factory([relay.relay_port], users={"bob": PASSWORD})
    machine = _machine(relay, squid, sandbox_factory, tmp_path, credentials=f"bob:{PASSWORD}")
    key, _ = await relay.issue("M-1", ports=[22])
    code, checks, text = await _check(machine, key)
    assert code == 0, text
    assert f"answers over tls-proxy via 127.0.0.1:{squid.port}" in str(
        checks["relay reachable"]["detail"]
    )
    through = str(checks["relay over tls-proxy"]["detail"])
    assert "TLS certificate issued by CN=127.0.0.1" in through
    assert "inspects TLS" not in through  # this Squid tunnels TLS untouched
    ssh = checks["relay over ssh"]
    assert ssh["ok"] is True  # explained, but not a failure: another way works
    assert "not needed now: the tether uses tls-proxy" in str(ssh["detail"])
    assert checks["relay host key"]["ok"] is True
    assert PASSWORD not in text


async def test_check_says_when_the_relays_name_does_not_resolve(
    relay: Vendor,
    squid_factory: Callable[..., Squid],
    sandbox_factory: Callable[..., Sandbox],
    tmp_path: Path,
) -> None:
    squid = squid_factory([443])
    machine = _machine(relay, squid, sandbox_factory, tmp_path)
    key, _ = await relay.authority.issue_key(
        "M-1",
        lifetime=timedelta(hours=1),
        ports=(22,),
        relay="relay.does-not-exist.invalid:443",
        kind=KeyKind.MANUAL,
    )
    code, checks, _ = await _check(machine, key)
    assert code == 1
    assert "relay.does-not-exist.invalid does not resolve (DNS" in str(
        checks["relay over ssh"]["detail"]
    )


async def test_a_tls_inspecting_proxy_still_carries_the_tether_and_check_names_it(
    relay: Vendor,
    squid_factory: Callable[..., Squid],
    sandbox_factory: Callable[..., Sandbox],
    tmp_path: Path,
) -> None:
    """Squid breaks TLS open with its own CA: the pinned SSH inside still comes up."""
    reason = ssl_bump_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    squid = squid_factory([relay.relay_port], inspect_tls=_write_proxy_ca(tmp_path))
    machine = _machine(relay, squid, sandbox_factory, tmp_path)
    alice = await relay.engineer("alice", tmp_path)
    key, _ = await relay.issue("M-1", ports=[22])
    code, checks, text = await _check(machine, key)
    assert code == 0, text
    through = str(checks["relay over tls-proxy"]["detail"])
    assert f"TLS certificate issued by {PROXY_CA}" in through
    assert "The proxy inspects TLS" in through
    assert "where the relay's is issued by CN=127.0.0.1" in through
    assert "The tether still works" in through
    assert checks["relay host key"]["ok"] is True
    await _tether_and_reach_sshd(
        machine, relay, alice, key, f"tls-proxy via 127.0.0.1:{squid.port}"
    )
    # Squid bumped the CONNECT and, finding no HTTP inside, tunnelled the SSH on.
    log = squid.access_log()
    assert f"CONNECT 127.0.0.1:{relay.relay_port}" in log
    assert "TCP_TUNNEL/200" in log


async def test_a_proxy_that_passes_only_http_inside_the_tls_it_inspects_carries_a_websocket(
    relay: Vendor,
    squid_factory: Callable[..., Squid],
    sandbox_factory: Callable[..., Sandbox],
    tmp_path: Path,
) -> None:
    """Squid lets only HTTPS out, breaks its TLS open and answers anything but HTTP
    inside with an error page (its default; strict offices): SSH in TLS through it
    fails, a WebSocket upgrade in plain HTTP is refused, a WebSocket inside the TLS
    passes as a browser's would, and the pinned SSH inside comes up."""
    reason = ssl_bump_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    squid = squid_factory(
        [relay.relay_port], inspect_tls=_write_proxy_ca(tmp_path), strict=True, plain_http=False
    )
    machine = _machine(relay, squid, sandbox_factory, tmp_path)
    alice = await relay.engineer("alice", tmp_path)
    key, _ = await relay.issue("M-1", ports=[22])
    code, checks, text = await _check(machine, key)
    assert code == 0, text
    assert checks["relay over tls-proxy"]["ok"] is True  # explained, not fatal: another works
    tls_only = str(checks["relay over tls-proxy"]["detail"])
    assert f"TLS was set up (a certificate issued by {PROXY_CA})" in tls_only
    assert "passes only web traffic inside it; the websocket-tls ways" in tls_only
    assert "(HTTP 403)" in str(checks["relay over websocket-proxy"]["detail"])
    through = str(checks["relay over websocket-tls-proxy"]["detail"])
    assert through.startswith(f"works (websocket-tls-proxy via 127.0.0.1:{squid.port})"), text
    assert f"TLS certificate issued by {PROXY_CA}" in through
    assert "The proxy inspects TLS" in through
    await _tether_and_reach_sshd(
        machine, relay, alice, key, f"websocket-tls-proxy via 127.0.0.1:{squid.port}"
    )
    # Squid saw the upgrade inside the TLS it broke open, and nothing tunnelled blind.
    log = squid.access_log()
    assert "/tether" in log
    assert "TCP_TUNNEL/200" not in log


@pytest.mark.parametrize("inspect", [False, True], ids=["tunnelling-proxy", "inspecting-proxy"])
async def test_a_swapped_relay_host_key_behind_the_proxy_is_refused(
    relay: Vendor, squid_factory: Callable[..., Squid], tmp_path: Path, inspect: bool
) -> None:
    """TLS through the proxy is not the trust: another host key behind it gets nothing."""
    if inspect and (reason := ssl_bump_unavailable_reason()) is not None:
        pytest.skip(reason)
    squid = squid_factory(
        [relay.relay_port], inspect_tls=_write_proxy_ca(tmp_path) if inspect else None
    )
    network = NetworkSettings(
        transports=(TransportKind.TLS_PROXY,), proxy=f"http://127.0.0.1:{squid.port}", environ={}
    )
    key, claims = await relay.issue("M-1", ports=[22])
    impostor = tmp_path / "impostor_host_key"
    impostor.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    port = relay.relay_port
    await relay.relay.aclose()
    relay.relay = Relay(
        replace(relay.relay.config, listen=("127.0.0.1", port), host_key=impostor), relay.store
    )
    await relay.relay.start()
    async with Agent(key, claims, [22], settings=replace(FAST, network=network)) as agent:
        await agent.wait_for(TunnelState.RECONNECTING, timeout=20)
        reason = agent.tunnel.status.reason or ""
    assert f"is not the one pinned by the key ({claims.relay_host_key})" in reason
    assert f"CONNECT 127.0.0.1:{port}" in squid.access_log()  # it did go through the proxy
    # The same way, probed once: the TLS the agent saw was the proxy's (or the relay's).
    carrier = Carrier(TransportKind.TLS_PROXY, resolve_proxy(network, "127.0.0.1"))
    probe = await probe_transport(
        claims.relay,
        claims.relay_host_key,
        asyncssh.generate_private_key("ssh-ed25519"),
        carrier,
    )
    assert probe.host_key_ok is False
    assert "something in between impersonates the relay" in str(probe.error)
    assert probe.tls_issuer == (PROXY_CA if inspect else "CN=127.0.0.1")
