"""Database URLs: normalisation, and passwords never shown."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tether.errors import BadInput
from tether.sandbox.postgres import LocalPostgres
from tether.store import Store, StoreError, display_url, normalize_url, sqlite_url


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:///rel/t.db", "sqlite+aiosqlite:///rel/t.db"),
        ("sqlite:////abs/t.db", "sqlite+aiosqlite:////abs/t.db"),
        ("sqlite+aiosqlite:////abs/t.db", "sqlite+aiosqlite:////abs/t.db"),
        ("postgresql://u:pw@db:5432/tether", "postgresql+asyncpg://u:pw@db:5432/tether"),
        ("postgres://u@db/tether", "postgresql+asyncpg://u@db/tether"),
        ("postgresql+asyncpg://u:pw@db/tether", "postgresql+asyncpg://u:pw@db/tether"),
        ("  postgresql://db/tether ", "postgresql+asyncpg://db/tether"),
    ],
)
def test_normalize_url_maps_to_async_drivers(given: str, expected: str) -> None:
    assert normalize_url(given) == expected


@pytest.mark.parametrize(
    "url",
    [
        "mysql://u:hunter2@db/tether",
        "postgresql+psycopg2://u:hunter2@db/tether",
        "sqlite://",
        "sqlite:///:memory:",
        "nonsense",
        "",
        "http://u:hunter2@example.com/",
    ],
)
def test_normalize_url_rejects_others_listing_what_is_accepted(url: str) -> None:
    with pytest.raises(BadInput) as err:
        normalize_url(url)
    message = str(err.value)
    assert "hunter2" not in message
    assert "sqlite:///" in message or "postgresql://" in message


def test_display_url_masks_the_password() -> None:
    shown = display_url("postgresql+asyncpg://vendor:s3cr%40t@db:5432/tether")
    assert shown == "postgresql+asyncpg://vendor:***@db:5432/tether"
    assert display_url("sqlite+aiosqlite:////x/t.db") == "sqlite+aiosqlite:////x/t.db"
    assert "hunter2" not in display_url("weird://u:hunter2@[bad")


def test_sqlite_url_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert sqlite_url(Path("t.db")) == f"sqlite+aiosqlite:///{tmp_path.resolve()}/t.db"


async def test_unreachable_postgresql_is_a_store_error_without_password() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql://vendor:hunter2@127.0.0.1:{port}/tether"
    with pytest.raises(StoreError, match="cannot open database at") as err:
        await Store.open(url)
    assert "hunter2" not in str(err.value)
    assert f"vendor:***@127.0.0.1:{port}" in str(err.value)


async def test_missing_sqlite_directory_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"cannot open database at sqlite.*does not exist"):
        await Store.open(sqlite_url(tmp_path / "no" / "such" / "dir" / "t.db"))


@pytest.mark.postgres
async def test_wrong_postgresql_password_is_not_shown(postgres_server: LocalPostgres) -> None:
    url = postgres_server.url("postgres", password="wrong-hunter2")
    with pytest.raises(StoreError, match="cannot open database at") as err:
        await Store.open(url, migrate=False)
    assert "hunter2" not in str(err.value)
    assert postgres_server.password not in str(err.value)


@pytest.mark.postgres
async def test_store_url_for_display_masks_password(postgres_url: str) -> None:
    store = await Store.open(postgres_url)
    try:
        assert "***" in store.url_for_display
        assert "tether-pg-Secret" not in store.url_for_display
        assert store.dialect == "postgresql"
    finally:
        await store.aclose()
