"""VendorService for real: uvicorn on 127.0.0.1:0, HTTP from outside, the request policy."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import httpx
import pytest

from tether.config import RequestPolicy, VendorConfig
from tether.errors import NotReady
from tether.store import CaseRecord, CaseStatus, Store
from tether.tasks import TaskSet
from tether.vendor_service.api_credentials import hash_password
from tether.vendor_service.service import VendorService

from .conftest import ADMIN, PASSWORD


@asynccontextmanager
async def running(
    config: VendorConfig, policy: RequestPolicy
) -> AsyncIterator[tuple[VendorService, Store]]:
    store = await Store.open(config.database)
    tasks = TaskSet()
    service = VendorService(
        dataclasses.replace(config, request_policy=policy), store, listen=("127.0.0.1", 0)
    )
    serving = tasks.spawn(service.serve(), "test.vendor")
    try:
        await asyncio.wait_for(service.wait_ready(), 10)
        yield service, store
    finally:
        # Stop uvicorn the normal way even when the test failed, then wait for it.
        await service.aclose()
        await asyncio.wait_for(serving, 10)
        await tasks.aclose()
        await store.aclose()


async def _until(check: Callable[[], Awaitable[CaseRecord | None]], timeout: float) -> CaseRecord:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        case = await check()
        if case is not None and case.status is not CaseStatus.PENDING:
            return case
        await asyncio.sleep(0.05)
    raise AssertionError(f"the case was still pending after {timeout} s")


async def _open_case(
    store: Store, serial: str = "ACME-1", machine_key: str = "SHA256:m"
) -> CaseRecord:
    return await store.cases.open(
        serial=serial, machine_key=machine_key, description="help", now=datetime.now(UTC)
    )


async def test_http_on_port_zero_and_auto_policy_issues_within_a_second(
    vendor_config: VendorConfig,
) -> None:
    async with running(vendor_config, RequestPolicy.AUTO) as (service, store):
        assert service.url.startswith("http://127.0.0.1:")
        assert not service.url.endswith(":0")
        # The real default argon2 parameters, over a real socket.
        await store.engineers.add(
            ADMIN, datetime.now(UTC), admin=True, password_hash=hash_password(PASSWORD)
        )
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
            login = await client.post("/api/login", json={"name": ADMIN, "password": PASSWORD})
            assert login.status_code == 200, login.text
            headers = {"Authorization": f"Bearer {login.json()['token']}"}
            assert (await client.get("/api/me", headers=headers)).json()["admin"] is True
            assert (await client.get("/openapi.json")).status_code == 200
            assert (await client.get("/docs")).status_code == 404

            # The machine's serial was bound when it first used a key the vendor issued.
            await store.machines.bind_first_use("ACME-1", "SHA256:m", datetime.now(UTC))
            started = time.monotonic()
            case = await _open_case(store)
            decided = await _until(lambda: store.cases.get(case.id), timeout=5)
            took = time.monotonic() - started
            # A policy round every 0.5 s: about half a second; the margin is for busy CI hosts.
            assert took < 2.0, f"auto-approval took {took:.2f} s"
            assert decided.status is CaseStatus.ISSUED
            assert decided.decided_by == "auto-approve"
            assert decided.key_text is not None
            key = await store.keys.get(decided.key_id or "")
            assert key is not None
            assert (key.issued_by, key.kind.value, key.description) == (
                "auto-approve",
                "request",
                "help",
            )
            listed = (await client.get("/api/cases", headers=headers)).json()
            assert listed[0]["status"] == "issued"


async def test_auto_policy_serves_only_a_machine_already_bound_to_its_serial(
    vendor_config: VendorConfig,
) -> None:
    """A request never binds a serial; under ``auto`` an unbound serial waits for a person."""
    async with running(vendor_config, RequestPolicy.AUTO) as (service, store):
        await store.machines.bind_first_use("ACME-1", "SHA256:real", datetime.now(UTC))
        stranger = await _open_case(store, "ACME-2", machine_key="SHA256:stranger")
        impostor = await _open_case(store, "ACME-1", machine_key="SHA256:impostor")
        known = await _open_case(store, "ACME-1", machine_key="SHA256:real")
        decided = await _until(lambda: store.cases.get(known.id), timeout=5)
        assert decided.status is CaseStatus.ISSUED
        assert await service.process_pending() == 0  # one more round serves neither
        for waiting in (stranger, impostor):
            still = await store.cases.get(waiting.id)
            assert still is not None
            assert (still.status, still.key_text) == (CaseStatus.PENDING, None)
        # Nothing was bound by asking: the unknown serial is still free for its real owner.
        assert await store.machines.get("ACME-2") is None
        owner = await store.machines.get("ACME-1")
        assert owner is not None
        assert owner.machine_key == "SHA256:real"


async def test_hold_policy_waits_for_an_engineer(vendor_config: VendorConfig) -> None:
    async with running(vendor_config, RequestPolicy.HOLD) as (service, store):
        await store.engineers.add("alice", datetime.now(UTC), password_hash=hash_password(PASSWORD))
        held, denied = await _open_case(store), await _open_case(store, "ACME-2")
        await asyncio.sleep(1.2)  # more than two policy rounds
        still = await store.cases.get(held.id)
        assert still is not None
        assert still.status is CaseStatus.PENDING
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
            login = await client.post("/api/login", json={"name": "alice", "password": PASSWORD})
            headers = {"Authorization": f"Bearer {login.json()['token']}"}
            approved = await client.post(f"/api/cases/{held.id}/approve", headers=headers)
            assert approved.json()["status"] == "issued"
            assert approved.json()["decided_by"] == "alice"
            refused = await client.post(
                f"/api/cases/{denied.id}/deny", headers=headers, json={"reason": "not a customer"}
            )
            assert refused.json()["status"] == "denied"
        after = await store.cases.get(denied.id)
        assert after is not None
        assert after.deny_reason == "not a customer"


async def test_a_busy_port_is_a_clear_error(vendor_config: VendorConfig) -> None:
    async with running(vendor_config, RequestPolicy.AUTO) as (first, store):
        port = int(first.url.rsplit(":", 1)[1])
        second = VendorService(vendor_config, store, listen=("127.0.0.1", port))
        with pytest.raises(NotReady, match=f"cannot listen on 127.0.0.1:{port}"):
            await second.serve()
