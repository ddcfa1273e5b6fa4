"""Fixtures of the vendor-service tests: a vendor data directory and the API in-process.

``api`` is the FastAPI app of a fresh vendor (on SQLite and on PostgreSQL, through
``store_url``) driven by an ``httpx.AsyncClient`` over ``ASGITransport``, with a
frozen clock and a cheap argon2 hasher (the parameters are in each hash, so logins
check real argon2id; only hashing is faster). One admin exists: ``boss``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher

from tether.audit import AuditEntry
from tether.clock import FrozenClock
from tether.config import RequestPolicy, VendorConfig
from tether.seal import SealPrivateKey
from tether.store import Store
from tether.vendor_service.api_credentials import Passwords
from tether.vendor_service.app import create_app
from tether.vendor_service.authority import Authority, init_data_dir

PASSWORD = "correct horse battery"
ADMIN = "boss"
#: Same algorithm (argon2id), lighter parameters: tests hash many passwords.
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@dataclasses.dataclass
class Api:
    """The vendor API of one test, plus what a test needs to look behind it."""

    client: httpx.AsyncClient
    store: Store
    authority: Authority
    clock: FrozenClock
    config: VendorConfig
    seal_key: SealPrivateKey
    app: Any = None

    def client_from(self, address: str) -> httpx.AsyncClient:
        """Another client of the same API, connecting from ``address``."""
        transport = httpx.ASGITransport(app=self.app, client=(address, 50000))
        return httpx.AsyncClient(transport=transport, base_url="http://vendor.test")

    async def add_engineer(
        self, name: str, *, admin: bool = False, password: str | None = PASSWORD
    ) -> None:
        """Create an engineer straight in the store (with a password unless None)."""
        hashed = FAST_HASHER.hash(password) if password is not None else None
        await self.store.engineers.add(name, self.clock.now(), admin=admin, password_hash=hashed)

    async def login(self, name: str, password: str = PASSWORD, totp: str | None = None) -> str:
        """Log in and return the bearer token (fails the test if refused)."""
        body: dict[str, Any] = {"name": name, "password": password}
        if totp is not None:
            body["totp"] = totp
        response = await self.client.post("/api/login", json=body)
        assert response.status_code == 200, response.text
        token: str = response.json()["token"]
        return token

    async def headers(self, name: str) -> dict[str, str]:
        """Authorization headers of a fresh session of ``name``."""
        return {"Authorization": f"Bearer {await self.login(name)}"}

    async def audit(self) -> list[AuditEntry]:
        """The vendor audit chain's entries (checking the chain first)."""
        report = await self.authority.audit_report()
        assert report.verification.ok, report.verification.problems
        return list(report.entries)

    async def events(self, name: str) -> list[dict[str, Any]]:
        """The fields of every audit entry called ``name``."""
        return [dict(e.fields) for e in await self.audit() if e.event == name]

    async def audit_text(self) -> str:
        """The whole vendor audit chain as text (to check that no secret is in it)."""
        return "\n".join(e.to_json_line() for e in await self.audit())


async def make_vendor(tmp_path: Path, database: str) -> VendorConfig:
    """A fresh vendor data directory using ``database``."""
    result = await init_data_dir(
        tmp_path / "vendor", vendor="ACME", relay="127.0.0.1:2222", database=database
    )
    return result.config


@pytest.fixture
async def vendor_config(tmp_path: Path, store_url: str) -> VendorConfig:
    """``vendor.toml`` of a fresh vendor (both backends)."""
    return await make_vendor(tmp_path, store_url)


@pytest.fixture
def policy() -> RequestPolicy:
    """The one-click policy the ``api`` fixture uses (override per module or test)."""
    return RequestPolicy.AUTO


@pytest.fixture
async def api(vendor_config: VendorConfig, policy: RequestPolicy) -> AsyncIterator[Api]:
    """The vendor API in-process, with admin ``boss`` (password :data:`PASSWORD`)."""
    config = dataclasses.replace(vendor_config, request_policy=policy)
    clock = FrozenClock(datetime.now(UTC).replace(microsecond=0))
    store = await Store.open(config.database)
    try:
        authority = Authority(config, store, clock=clock)
        seal_key = SealPrivateKey.from_pem(config.seal_key_path.read_bytes())
        app = create_app(
            authority, clock=clock, seal_key=seal_key, passwords=Passwords(FAST_HASHER)
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://vendor.test") as client:
            harness = Api(client, store, authority, clock, config, seal_key, app)
            await harness.add_engineer(ADMIN, admin=True)
            yield harness
    finally:
        await store.aclose()
