"""Suite-wide test policy.

Tests that need real parts (root + namespaces + OpenSSH for ``sandbox``, the
PostgreSQL server binaries for ``postgres``, Debian chromium for ``browser``, Debian
haproxy for ``haproxy``, Debian prometheus for ``prometheus``, Debian squid-openssl for
``squid``) skip with a reason on a developer
machine that lacks them. In CI (``CI=true``) such a skip is turned into a failure,
so a green CI run always means the real-component tests ran.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

pytest_plugins = ["tests.fixtures.postgres", "tests.fixtures.sandbox"]

_REQUIRED_IN_CI = ("sandbox", "postgres", "browser", "haproxy", "prometheus", "squid")


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if not (_in_ci() and report.skipped):
        return
    needed = [m for m in _REQUIRED_IN_CI if item.get_closest_marker(m)]
    if needed:
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = (
            f"CI=true but this {'/'.join(needed)} test was skipped: {reason}. "
            "CI must run every real-component test; fix the CI environment."
        )
