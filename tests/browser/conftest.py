"""Browser tests: Debian chromium driven by Playwright against a running :class:`DemoSystem`.

Playwright's own browser download is never used (``playwright install`` is not run):
the tests launch the system's ``/usr/bin/chromium`` headless, with the flags that keep
it from calling out to the network (it hangs on a closed network without them).
Screenshots go to ``test-artifacts/browser/``.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import system

__all__ = ["ARTIFACTS", "browser", "system"]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """A headless Debian chromium (skips, and fails in CI, where it is missing)."""
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"Debian chromium is not installed at {CHROMIUM} (scripts/setup installs it)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("the playwright package is missing (pip install -e '.[test]')")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()
