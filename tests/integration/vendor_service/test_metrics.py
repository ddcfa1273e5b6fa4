"""The vendor service's internal endpoint: API requests by route and status, pending
cases, and readiness that follows the database — scraped over HTTP like Prometheus."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from tether.config import VendorConfig
from tether.sandbox.postgres import LocalPostgres
from tether.store import Store
from tether.tasks import TaskSet
from tether.vendor_service.service import VendorService

from .conftest import make_vendor


@asynccontextmanager
async def running(config: VendorConfig) -> AsyncIterator[tuple[VendorService, Store, int]]:
    """The service with its internal endpoint on an OS-picked loopback port."""
    store = await Store.open(config.database)
    service = VendorService(
        dataclasses.replace(config, metrics_listen=("127.0.0.1", 0)),
        store,
        listen=("127.0.0.1", 0),
    )
    tasks = TaskSet()
    serving = tasks.spawn(service.serve(), "test.vendor")
    try:
        await asyncio.wait_for(service.wait_ready(), 10)
        assert service.metrics_server is not None
        yield service, store, service.metrics_server.port
    finally:
        await service.aclose()
        await asyncio.wait_for(serving, 10)
        await tasks.aclose()
        await store.aclose()


async def get(port: int, path: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(f"http://127.0.0.1:{port}{path}")


async def samples(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = await get(port, "/metrics")
    assert response.status_code == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def requests(found: dict[tuple[str, frozenset[tuple[str, str]]], float], **labels: str) -> float:
    key = ("tether_vendor_api_requests_total", frozenset(labels.items()))
    return found.get(key, 0.0)


async def test_vendor_metrics_count_requests_by_route_template_and_pending_cases(
    vendor_config: VendorConfig,
) -> None:
    async with running(vendor_config) as (service, store, port):
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
            bad = await client.post("/api/login", json={"name": "nobody", "password": "x"})
            assert bad.status_code == 401
            for case_id in (17, 18):  # two paths, one route template
                denied = await client.post(f"/api/cases/{case_id}/approve")
                assert denied.status_code == 401
            assert (await client.get("/no/such/ACME-1")).status_code == 404
        for serial in ("ACME-1", "ACME-2"):
            await store.cases.open(
                serial=serial, machine_key="SHA256:m", description="help", now=datetime.now(UTC)
            )
        found = await samples(port)
        assert requests(found, route="/api/login", method="POST", status="401") == 1
        assert requests(found, route="/api/cases/{id}/approve", method="POST", status="401") == 2
        assert requests(found, route="unmatched", method="GET", status="404") == 1
        assert found[("tether_vendor_cases_pending", frozenset())] == 2
        labels = {v for (_, pairs) in found for (_, v) in pairs}
        assert not any("ACME" in v or "17" in v for v in labels)  # no path, no serial
        # The API's own address serves no metrics: they are for the internal listener.
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
            assert (await client.get("/metrics")).status_code == 404
        assert (await get(port, "/healthz")).text == "ok\n"
        assert (await get(port, "/readyz")).text == "ready\n"


@pytest.mark.postgres
async def test_vendor_readyz_follows_the_database(
    tmp_path: Path, postgres_server: LocalPostgres, postgres_url: str
) -> None:

    config = await make_vendor(tmp_path, postgres_url)
    name = make_url(postgres_url).database
    async with running(config) as (service, _store, port):
        assert (await get(port, "/readyz")).status_code == 200
        postgres_server.psql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        postgres_server.psql(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"  # noqa: S608 (a fixture's name)
        )
        try:
            down = await get(port, "/readyz")
            assert (down.status_code, down.text) == (
                503,
                "not ready: vendor database unavailable\n",
            )
            assert (await get(port, "/healthz")).status_code == 200
            up = ("tether_vendor_database_up", frozenset())
            assert (await samples(port))[up] == 0  # still scraped, and says why
        finally:
            postgres_server.psql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        assert (await get(port, "/readyz")).status_code == 200
        assert (await samples(port))[up] == 1
        service.request_stop()  # the endpoint closes with the service: ask the check itself
        assert await service.readiness() == "stopping"
