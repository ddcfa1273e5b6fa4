"""Fixtures of the store tests: an open :class:`Store` on each backend."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tether.store import Store


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """A migrated store on a fresh database (SQLite file or PostgreSQL)."""
    opened = await Store.open(store_url)
    try:
        yield opened
    finally:
        await opened.aclose()
