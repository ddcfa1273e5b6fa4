"""Debian's Prometheus and promtool on Tether: the shipped files, and a real scrape.

A real Prometheus server (``/usr/bin/prometheus``, OS-picked port, storage in the
test's directory) scrapes a relay's internal endpoint while a scenario runs (tether
up, an engineer session, a refused channel, a revocation); Prometheus' HTTP API must
then report the scenario's numbers.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.integration.harness import Agent, EchoServer, Vendor, run_ssh, vendor_setup
from tether.agent.metrics import AgentFacts, write_textfile
from tether.agent.tunnel import TunnelState
from tether.tasks import TaskSet
from tether.vendor_service.authority import load_vendor_config
from tether.vendor_service.service import VendorService

pytestmark = pytest.mark.prometheus

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def _needs(binary: str) -> None:
    if not Path(binary).exists():
        pytest.skip(
            f"{binary} is not installed (Debian package prometheus; scripts/setup installs it)"
        )


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, check=False, cwd=DEPLOY
    )


def test_the_shipped_prometheus_config_and_alert_rules_are_valid() -> None:
    _needs(PROMTOOL)
    for args in (
        ("check", "config", "prometheus.yml"),
        ("check", "rules", "alerts.yml"),
        ("test", "rules", "alerts_test.yml"),  # each alert fires on the series it is for
    ):
        result = promtool(*args)
        assert result.returncode == 0, (args, result.stdout, result.stderr)


def test_the_agents_textfile_passes_promtool_check_metrics(tmp_path: Path) -> None:
    _needs(PROMTOOL)
    path = tmp_path / "tether.prom"
    for facts in (AgentFacts(True, 3600.0, True, 2, 1), AgentFacts(False, None, False, None)):
        write_textfile(path, facts)
        result = subprocess.run(
            [PROMTOOL, "check", "metrics"],
            input=path.read_text(),
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout + result.stderr == ""  # no lint complaint either


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def prometheus(tmp: Path, targets: dict[str, int]) -> AsyncIterator[httpx.AsyncClient]:
    """A Prometheus server scraping ``targets`` (job → port on 127.0.0.1) every 200 ms."""
    tmp.mkdir()
    config = tmp / "prometheus.yml"
    jobs = "".join(
        f"  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        for job, port in targets.items()
    )
    config.write_text(
        f"global:\n  scrape_interval: 200ms\n  scrape_timeout: 200ms\nscrape_configs:\n{jobs}"
    )
    port = _free_port()
    log = (tmp / "prometheus.log").open("wb")  # read it when a test fails
    proc = await asyncio.create_subprocess_exec(
        PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
        stdout=log, stderr=log,
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            for _ in range(300):
                if proc.returncode is not None:
                    break
                try:
                    if (await client.get("/-/ready")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("Prometheus did not become ready in 15 s")
            assert proc.returncode is None, "Prometheus exited at start"
            yield client
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
        log.close()


async def query(client: httpx.AsyncClient, expr: str) -> float | None:
    answer = (await client.get("/api/v1/query", params={"query": expr})).json()
    assert answer["status"] == "success", answer
    result = answer["data"]["result"]
    return None if not result else float(result[0]["value"][1])


async def settle(client: httpx.AsyncClient, expected: dict[str, float]) -> None:
    """Wait until Prometheus has scraped figures matching every expected value."""
    seen: dict[str, float | None] = {}
    for _ in range(150):
        seen = {expr: await query(client, expr) for expr in expected}
        if seen == expected:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"Prometheus says {seen}, the scenario says {expected}")


async def test_a_real_prometheus_scraping_a_relay_and_the_vendor_service_sees_the_scenario(
    tmp_path: Path,
) -> None:
    _needs(PROMETHEUS)
    async with (
        vendor_setup(tmp_path, metrics_listen=("127.0.0.1", 0)) as vendor,
        EchoServer() as service,
    ):
        server = vendor.relay.metrics_server
        assert server is not None
        config = replace(load_vendor_config(vendor.dir), metrics_listen=("127.0.0.1", 0))
        api = VendorService(config, vendor.store, listen=("127.0.0.1", 0))
        tasks = TaskSet()
        serving = tasks.spawn(api.serve(), "test.vendor")
        await asyncio.wait_for(api.wait_ready(), 10)
        assert api.metrics_server is not None
        targets = {"tether-relay": server.port, "tether-vendor": api.metrics_server.port}
        try:
            async with prometheus(tmp_path / "prometheus", targets) as prom:
                await _scenario(vendor, api, prom, service, tmp_path)
        finally:
            await api.aclose()
            await asyncio.wait_for(serving, 10)
            await tasks.aclose()


async def _scenario(
    vendor: Vendor, api: VendorService, prom: httpx.AsyncClient, service: EchoServer, tmp_path: Path
) -> None:
    await settle(prom, {'up{job="tether-relay"}': 1, "tether_relay_tethers_connected": 0})
    await settle(prom, {'up{job="tether-vendor"}': 1, "tether_vendor_cases_pending": 0})
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        bad = await client.post("/api/login", json={"name": "x", "password": "y"})
        assert bad.status_code == 401
    await vendor.store.cases.open(
        serial="M-9", machine_key="SHA256:m", description="help", now=datetime.now(UTC)
    )
    key, claims = await vendor.issue("M-1", ports=[service.port])
    alice = await vendor.engineer("alice", tmp_path)
    async with Agent(key, claims, [service.port]) as agent:
        await agent.wait_for(TunnelState.CONNECTED)
        await settle(prom, {"tether_relay_tethers_connected": 1})
        ssh = alice.ssh_args(vendor.relay_port, "-W", f"M-1:{service.port}", "alice@127.0.0.1")
        done = await run_ssh(ssh, input=b"ping\n")
        assert done.stdout.endswith(b"ping\n"), done.stderr
        refused = await run_ssh(alice.ssh_args(vendor.relay_port, "-W", "M-1:1", "alice@127.0.0.1"))
        assert refused.returncode != 0
        live = await asyncio.create_subprocess_exec(
            *ssh, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        assert live.stdout is not None
        assert await asyncio.wait_for(live.stdout.readline(), 10) == b"hello from the machine\n"
        await settle(prom, {"tether_relay_engineer_sessions": 1})
        await vendor.authority.revoke_key(claims.key_id, reason="test")
        await asyncio.wait_for(live.wait(), 1.0)
        await agent.wait_for(TunnelState.REFUSED, timeout=1.0)
    await settle(
        prom,
        {
            "tether_relay_tethers_connected": 0,
            'tether_relay_tether_admissions_total{result="admitted"}': 1,
            'tether_relay_tether_drops_total{reason="revoked"}': 1,
            "tether_relay_engineer_sessions": 0,
            "tether_relay_engineer_session_duration_seconds_count": 3,
            "tether_relay_engineer_channels_opened_total": 2,
            'tether_relay_engineer_channels_refused_total{reason="port-closed"}': 1,
            'tether_relay_revocation_cut_seconds_count{kind="key"}': 1,
            # The ≤ 1 s invariant, as an operator's alert would compute it.
            'tether_relay_revocation_cut_seconds_bucket{kind="key",le="1.0"}': 1,
            "tether_relay_database_up": 1,
            "tether_vendor_cases_pending": 1,
            'tether_vendor_api_requests_total{route="/api/login",status="401"}': 1,
            "tether_vendor_database_up": 1,
        },
    )
