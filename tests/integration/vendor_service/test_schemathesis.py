"""Schemathesis over the OpenAPI schema: whatever it sends, the API answers without a 5xx.

The app runs in schemathesis' own ASGI event loop, so its store is created unconnected
here and connects lazily there (an asyncpg or aiosqlite connection belongs to the loop
that made it). The data it works on is seeded beforehand through a separate store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import schemathesis.specs.openapi.schemas
from hypothesis import HealthCheck, given, settings
from schemathesis import APIOperation, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tether.seal import SealPrivateKey, seal
from tether.store import Store, normalize_url, sqlite_url
from tether.store.db import Database, create_engine
from tether.vendor_service.api_credentials import TOKEN_LIFETIME, Passwords, new_token
from tether.vendor_service.api_models import ENDPOINTS
from tether.vendor_service.app import create_app
from tether.vendor_service.authority import Authority

# schemathesis loads its OpenAPI modules on first use, and pytest rewrites their
# asserts as they load; done deep inside a running test, CPython 3.11's compiler can
# fail ("AST constructor recursion depth mismatch"). Imported above, they load at
# collection time instead.
from .conftest import ADMIN, FAST_HASHER, PASSWORD, make_vendor

#: Examples per operation and generation mode (positive, negative).
MAX_EXAMPLES = 15
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@dataclass
class Target:
    """The app under test and an admin session for it."""

    app: Any
    token: str
    store: Store


async def _seed(tmp_path: Path) -> tuple[Any, str]:
    config = await make_vendor(tmp_path, sqlite_url(tmp_path / "fuzz.db"))
    now = datetime.now(UTC)
    async with await Store.open(config.database) as store:
        authority = Authority(config, store)
        await store.engineers.add(ADMIN, now, admin=True, password_hash=FAST_HASHER.hash(PASSWORD))
        await store.engineers.add("alice", now, password_hash=FAST_HASHER.hash(PASSWORD))
        token, digest = new_token()
        await store.tokens.create(ADMIN, digest, now, now + TOKEN_LIFETIME)
        _, claims = await authority.issue_key("ACME-1", description="seeded")
        seal_key = SealPrivateKey.from_pem(config.seal_key_path.read_bytes())
        sealed = seal(
            "p4ssw0rdp4ssw0rd", seal_key.public(), serial="ACME-1", grant_id=claims.key_id
        )
        await store.passwords.put(key_id=claims.key_id, serial="ACME-1", sealed=sealed, now=now)
        await store.machines.bind_first_use("ACME-1", "SHA256:machine", now)
        await store.cases.open(serial="ACME-1", machine_key="SHA256:m", description="d", now=now)
        await store.tethers.register(
            serial="ACME-1",
            key_id=claims.key_id,
            relay_id="relay-1",
            relay_address="127.0.0.1:2222",
            machine_key="SHA256:machine",
            now=now,
        )
    return config, token


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Target]:
    """The vendor API with seeded data, its store not yet connected."""
    config, token = asyncio.run(_seed(tmp_path))
    url = normalize_url(config.database)
    store = Store(Database(create_engine(url), url))
    authority = Authority(config, store)
    seal_key = SealPrivateKey.from_pem(config.seal_key_path.read_bytes())
    app = create_app(authority, seal_key=seal_key, passwords=Passwords(FAST_HASHER))
    yield Target(app, token, store)
    asyncio.run(store.aclose())


def _fresh_token(target: Target) -> str:
    with asgi.get_client(target.app) as client:
        response = client.post("/api/login", json={"name": "alice", "password": PASSWORD})
        assert response.status_code == 200, response.text
        token: str = response.json()["token"]
        return token


def _fuzz(
    target: Target, operation: APIOperation[Any, Any, Any, Any], mode: GenerationMode
) -> None:
    """Up to :data:`MAX_EXAMPLES` cases of ``operation``, each checked."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        # Logging out ends the session: give that operation a session of its own.
        token = _fresh_token(target) if case.path == "/api/logout" else target.token
        case.call_and_validate(headers={"Authorization": f"Bearer {token}"}, checks=CHECKS)

    run()


def test_no_server_error_for_any_input(target: Target) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", target.app)
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) == len(ENDPOINTS)
    started = time.monotonic()
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(target, operation, mode)
    assert time.monotonic() - started < 60
