"""A machine whose only way out is a real Squid: the tether goes through it (issue 16).

The machine is a sandbox whose one uplink is the proxy's port; the relay (TLS on, in
this process) is on a host port the machine cannot reach directly, so direct ``ssh``
and ``tls`` fail and the agent must use ``tls-proxy``: CONNECT through Squid, which
allows CONNECT only to the relay's port (the office's "443 only").
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from tests.integration.agent.test_cli import Machine, stop
from tests.integration.harness import FAST, Agent, EchoServer, Vendor, run_ssh, vendor_setup
from tether.agent.network import NetworkSettings, TransportKind
from tether.agent.status import TunnelState
from tether.keys import KeyKind
from tether.relay.server import Relay
from tether.sandbox import Sandbox
from tether.sandbox.squid import Squid, squid_unavailable_reason
from tether.sshlib import asyncssh
from tether.tlscert import write_self_signed

pytestmark = [pytest.mark.sandbox, pytest.mark.squid]

PASSWORD = "s3cret-Proxy-pw-7731"


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
    agent = await machine.start_agent()
    try:
        assert (await machine.tether("access", "enable", "--key", key)).returncode == 0
        body = await machine.wait_tunnel("connected", timeout=30)
        tunnel = body["tunnel"]
        assert isinstance(tunnel, dict)
        assert tunnel["transport"] == f"tls-proxy via 127.0.0.1:{squid.port}"
        human = await machine.tether("access", "status")
        assert f"over tls-proxy via 127.0.0.1:{squid.port}" in human.stdout
        # The engineer's stock ssh reaches the machine's own sshd through the tether.
        banner = await run_ssh(
            alice.ssh_args(relay.relay_port, "-W", "m-1:22", "alice@127.0.0.1"), timeout=20
        )
        assert banner.stdout.startswith(b"SSH-2.0-OpenSSH"), banner.stderr
    finally:
        await stop(machine, agent)
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
    assert "TLS certificate issued by CN=127.0.0.1" in str(checks["relay over tls-proxy"]["detail"])
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


async def test_a_swapped_relay_host_key_behind_the_proxy_is_refused(
    relay: Vendor, squid_factory: Callable[..., Squid], tmp_path: Path
) -> None:
    """TLS through the proxy is not the trust: another host key behind it gets nothing."""
    squid = squid_factory([relay.relay_port])
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
