"""Shared by the end-to-end tests: a fresh :class:`tether.demo.DemoSystem` per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tether.demo import DemoSystem
from tether.sandbox import sandbox_unavailable_reason


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[DemoSystem]:
    reason = sandbox_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    demo = DemoSystem(tmp_path / "demo")
    await demo.start()
    try:
        yield demo
    finally:
        await demo.aclose()
