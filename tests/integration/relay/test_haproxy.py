"""Relays behind Debian's HAProxy (TCP mode, PROXY v2, checks on /readyz), as shipped.

Everything is on loopback, so addresses tell the parties apart: HAProxy connects to the
relays from 127.0.0.9 (the balancer, the only trusted proxy), agents come from
127.0.0.1 and engineers' stock ssh from other 127.0.0.x addresses. The relays must name
the client, never 127.0.0.9.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from datetime import timedelta
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from proxyprotocol.result import ProxyResultIPv4
from proxyprotocol.v2 import ProxyProtocolV2
from sqlalchemy.engine import make_url

from tests.integration.harness import Agent, EchoServer, Vendor, run_ssh, vendor_setup
from tether.agent.tunnel import TunnelState
from tether.config import RelayConfig
from tether.keys import KeyKind
from tether.relay.gate import Drop
from tether.relay.server import Relay
from tether.sandbox.haproxy import HAPROXY, Backend, HAProxy, haproxy_unavailable_reason
from tether.sandbox.postgres import LocalPostgres
from tether.vendor_service.authority import init_data_dir

pytestmark = pytest.mark.haproxy

BALANCER = "127.0.0.9"
BEHIND_HAPROXY: dict[str, object] = {
    "proxy_protocol": True,
    "trusted_proxies": (f"{BALANCER}/32",),
    "metrics_listen": ("127.0.0.1", 0),
}


@pytest.fixture(autouse=True)
def _needs_haproxy() -> None:
    reason = haproxy_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


@contextmanager
def relay_logs(caplog: pytest.LogCaptureFixture) -> Iterator[list[str]]:
    caplog.set_level(logging.INFO, logger="tether.relay")
    lines: list[str] = []
    yield lines
    lines.extend(r.message for r in caplog.records if r.name == "tether.relay")


def backend(relay: Relay) -> Backend:
    assert relay.metrics_server is not None
    return Backend(relay.config.relay_id, relay.port, relay.metrics_server.port)


@asynccontextmanager
async def haproxy(tmp: Path, *relays: Relay) -> AsyncIterator[HAProxy]:
    proxy = HAProxy(tmp / "haproxy", [backend(r) for r in relays], source=BALANCER)
    # The relays answer HAProxy's checks from this event loop: wait in a thread.
    await asyncio.to_thread(proxy.start)
    try:
        yield proxy
    finally:
        proxy.stop()


async def issue(vendor: Vendor, serial: str, port: int, proxy: HAProxy) -> Agent:
    key, claims = await vendor.authority.issue_key(
        serial,
        lifetime=timedelta(hours=1),
        ports=(port,),
        relay=f"127.0.0.1:{proxy.port}",  # agents know only the balancer
        kind=KeyKind.MANUAL,
    )
    return Agent(key, claims, [port])


async def wait_until(condition: object, what: str, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_through_haproxy_an_agent_tethers_and_engineer_ssh_reaches_the_machine(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with relay_logs(caplog) as lines:
        async with (
            vendor_setup(tmp_path, **BEHIND_HAPROXY) as vendor,
            EchoServer() as service,
            haproxy(tmp_path, vendor.relay) as proxy,
        ):
            alice = await vendor.engineer("alice", tmp_path, port=proxy.port)
            async with await issue(vendor, "M-1", service.port, proxy) as agent:
                await agent.wait_for(TunnelState.CONNECTED)
                # The handshake is timed from the accept before the PROXY header.
                registry = vendor.relay.metrics.registry
                handshakes = "tether_relay_tether_handshake_duration_seconds_count"
                assert registry.get_sample_value(handshakes) == 1
                result = await run_ssh(
                    alice.ssh_args(
                        proxy.port,
                        "-b",
                        "127.0.0.5",
                        "-W",
                        f"M-1:{service.port}",
                        "alice@127.0.0.1",
                    ),
                    input=b"ping\n",
                )
                assert result.stdout == b"hello from the machine\nping\n", result.stderr
                chain = vendor.relay.audit.chain

                async def audited_up() -> list[dict[str, object]]:
                    report = await vendor.store.audit.read(chain)
                    return [dict(e.fields) for e in report.entries if e.event == "tether.up"]

                for _ in range(100):  # the audit writer works in the background
                    if ups := await audited_up():
                        break
                    await asyncio.sleep(0.05)
    # The relay saw the real clients: the agent from 127.0.0.1, alice from 127.0.0.5.
    up = next(line for line in lines if line.startswith("tether.up"))
    assert "peer=127.0.0.1:" in up
    login = next(line for line in lines if line.startswith("engineer.login"))
    assert "peer=127.0.0.5:" in login
    assert [str(u["peer"]).rsplit(":", 1)[0] for u in ups] == ["127.0.0.1"]
    assert not any(BALANCER in line for line in lines if not line.startswith("relay.listen"))


async def test_a_relay_not_ready_gets_no_new_connections_from_haproxy(tmp_path: Path) -> None:
    async with (
        vendor_setup(tmp_path, **BEHIND_HAPROXY) as vendor,
        EchoServer() as service,
    ):
        second = Relay(
            replace(vendor.relay.config, relay_id="relay-2", listen=("127.0.0.1", 0)),
            vendor.store,
        )
        await second.start()
        first = vendor.relay
        try:
            async with haproxy(tmp_path, first, second) as proxy:
                agents = [await issue(vendor, f"M-{i}", service.port, proxy) for i in range(4)]
                for agent in agents[:2]:  # round robin: one each while both are ready
                    await agent.__aenter__()
                    await agent.wait_for(TunnelState.CONNECTED)
                assert (len(first.registry), len(second.registry)) == (1, 1)

                second.drain()
                await asyncio.to_thread(proxy.wait_for, {"relay-2": "DOWN", "relay-1": "UP"})
                for agent in agents[2:]:
                    await agent.__aenter__()
                    await agent.wait_for(TunnelState.CONNECTED)
                # New tethers all went to the ready relay; the draining one kept its own.
                assert (len(first.registry), len(second.registry)) == (3, 1)
                for agent in agents:
                    await agent.__aexit__(None, None, None)
        finally:
            await second.aclose()


@pytest.mark.postgres
async def test_readyz_reports_a_lost_database(
    tmp_path: Path, postgres_server: LocalPostgres, postgres_url: str
) -> None:
    name = make_url(postgres_url).database
    async with vendor_setup(tmp_path, database=postgres_url, **BEHIND_HAPROXY) as vendor:
        relay = vendor.relay
        assert await http_get(relay, "/readyz") == (200, "ready")
        assert await http_get(relay, "/healthz") == (200, "ok")
        assert (await http_get(relay, "/nope"))[0] == 404
        # The database refuses the relay (as in an outage): its sessions are cut and
        # new ones are not let in.
        postgres_server.psql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        postgres_server.psql(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"  # noqa: S608 (a fixture's name)
        )
        try:
            status, body = await http_get(relay, "/readyz")
            assert (status, body) == (503, "not ready: vendor database unavailable")
            metrics = (await http_get(relay, "/metrics"))[1]
            assert "tether_relay_database_up 0.0" in metrics.splitlines()
            assert (await http_get(relay, "/healthz"))[0] == 200  # alive all the same
        finally:
            postgres_server.psql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        assert await http_get(relay, "/readyz") == (200, "ready")  # back with the database
        relay.drain()
        assert await http_get(relay, "/readyz") == (503, "not ready: stopping")


async def http_get(relay: Relay, path: str) -> tuple[int, str]:
    assert relay.metrics_server is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.metrics_server.port)
    writer.write(f"GET {path} HTTP/1.0\r\n\r\n".encode())
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = response.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body.strip()


def proxy_header(source: str, port: int) -> bytes:
    return ProxyProtocolV2().pack(
        ProxyResultIPv4(
            (IPv4Address(source), port),
            (IPv4Address("127.0.0.1"), 2222),
            protocol=socket.SOCK_STREAM,
        )
    )


async def test_a_proxy_header_from_an_untrusted_address_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with relay_logs(caplog) as lines:
        async with vendor_setup(tmp_path, **BEHIND_HAPROXY) as vendor:
            # 127.0.0.1 is not the balancer: its claim to be 203.0.113.7 is refused
            # before the relay says a word of SSH.
            reader, writer = await asyncio.open_connection("127.0.0.1", vendor.relay.port)
            writer.write(proxy_header("203.0.113.7", 4000) + b"SSH-2.0-OpenSSH_9.2\r\n")
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            # From the balancer's address, a connection without a header is refused too.
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", vendor.relay.port, local_addr=(BALANCER, 0)
            )
            writer.write(b"SSH-2.0-OpenSSH_9.2\r\n")
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
    refused = [line for line in lines if line.startswith("relay.proxy_refused")]
    assert "reason=untrusted-proxy" in refused[0]
    assert "peer=127.0.0.1:" in refused[0]
    assert "reason=proxy-header" in refused[1]
    assert "no PROXY v2 signature" in refused[1]
    assert not any("203.0.113.7" in line for line in lines)


async def test_per_source_limits_count_the_real_client_behind_haproxy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with relay_logs(caplog) as lines:
        async with (
            vendor_setup(
                tmp_path,
                max_unauthenticated_per_source=2,
                refused_log_interval=1.0,
                **BEHIND_HAPROXY,
            ) as vendor,
            haproxy(tmp_path, vendor.relay) as proxy,
        ):
            streams = []

            async def connect(source: str) -> bytes:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", proxy.port, local_addr=(source, 0)
                )
                streams.append(writer)
                writer.write(b"SSH-2.0-OpenSSH_9.2\r\n")
                return await asyncio.wait_for(reader.readline(), 5)

            try:
                # Two clients waiting to log in from 127.0.0.3 are its limit; a third is
                # turned away; 127.0.0.4 behind the same balancer is not.
                assert (await connect("127.0.0.3")).startswith(b"SSH-2.0-")
                assert (await connect("127.0.0.3")).startswith(b"SSH-2.0-")
                await connect("127.0.0.3")
                await wait_until(lambda: vendor.relay.gate.drops[Drop.ADDRESS] == 1, "refused")
                assert (await connect("127.0.0.4")).startswith(b"SSH-2.0-")
                # The refusal is summarised for the real client's block, not the balancer's.
                await wait_until(
                    lambda: any(ln.startswith("relay.refused") for ln in lines_now(caplog)),
                    "summary",
                )
                refused = [ln for ln in lines_now(caplog) if ln.startswith("relay.refused")]
                assert len(refused) == 1
                assert "block=127.0.0.0/24" in refused[0]
                assert "address=1" in refused[0]
                await wait_until(lambda: vendor.relay.unauthenticated == 3, "3 waiting to log in")
            finally:
                for writer in streams:
                    writer.close()
    assert not any(BALANCER in line for line in lines if not line.startswith("relay.listen"))


def lines_now(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.message for r in caplog.records if r.name == "tether.relay"]


ROOT = Path(__file__).resolve().parents[3]


def test_the_shipped_haproxy_cfg_is_valid_and_matches_relay_toml(tmp_path: Path) -> None:
    shipped = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
    check = subprocess.run(
        [HAPROXY, "-c", "-f", str(shipped)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    text = shipped.read_text()
    for needed in ("mode tcp", "send-proxy-v2", "option httpchk GET /readyz", "timeout tunnel"):
        assert needed in text
    # The relay.toml lines its header tells vendors to write are accepted by the relay.
    settings = [
        line.removeprefix("#").split("#", 1)[0].strip()
        for line in text.splitlines()
        if line.startswith("#   ") and (" = " in line or line[4:].startswith("["))
    ]
    assert len(settings) == 4
    data = tmp_path / "vendor"
    asyncio.run(init_data_dir(data, vendor="ACME", relay="127.0.0.1:2222"))
    relay_toml = data / "relay.toml"
    relay_toml.write_text(relay_toml.read_text() + "\n".join(settings) + "\n")
    config = RelayConfig.load(relay_toml)
    assert config.proxy_protocol
    assert config.trusted_proxies == ("10.0.0.5/32",)
    assert config.metrics_listen == ("10.0.1.11", 9102)
