"""One click on the customer's page: the request waits for the vendor, in the page's words.

A real relay and vendor store (in this process) answer the agent's request; the page
runs around a real (not serving) agent daemon. The agent here has no ``vendor_ca``, so
the issued key cannot open access on this host: the page must say so in plain words,
and nothing on the machine changes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.integration.harness import vendor_setup
from tests.integration.test_one_click import wait_for_case
from tests.unit.agent.web.test_app import PASSWORD, Page
from tether.agent.daemon import AgentDaemon
from tether.config import AgentConfig, TetherSettings


async def fragment_until(page: Page, words: str, within: float = 10.0) -> str:
    text = ""
    for _ in range(int(within / 0.05)):
        text = (await page.http.get("/fragment/status")).text
        if words in text:
            return text
        await asyncio.sleep(0.05)
    raise AssertionError(f"{words!r} never appeared; last status: {text}")


async def test_one_click_waits_for_approval_then_explains_a_missing_prerequisite(
    tmp_path: Path,
) -> None:
    async with vendor_setup(tmp_path) as vendor:
        config = AgentConfig(
            path=tmp_path / "agent.toml",
            serial="M-1",
            vendor_keys=(vendor.authority.signing_key.verify_key(),),
            state_dir=tmp_path / "state",
            run_dir=tmp_path / "run",
            request_relay=f"127.0.0.1:{vendor.relay_port}",
            request_relay_host_key=vendor.relay.host_key_fingerprint,
            tether=TetherSettings(connect_timeout=5),
        )
        page = Page(AgentDaemon(config))
        page.app.state.page.password.set(PASSWORD)
        try:
            assert (await page.login()).status_code == 303
            token = await page.csrf("/")
            form = {
                "csrf": token,
                "mode": "request",
                "description": "disk full on /var",
                "ports": ["22", "443"],
            }
            sent = await page.http.post("/access/enable", data=form)
            assert sent.status_code == 303
            case_id = await wait_for_case(vendor)
            waiting = await fragment_until(page, f"waiting for vendor approval (case {case_id})")
            assert "Withdraw the request" in waiting
            home = (await page.http.get("/")).text
            assert "Support request sent; waiting for the vendor." in home
            assert "Open access with this key" not in home  # no second way while one waits

            await vendor.authority.approve_case(case_id, by="alice")
            failed = await fragment_until(page, "Support request:")
            assert "has no vendor_ca" in failed
            assert "Traceback" not in failed
            assert not page.daemon.access.state().is_open
            events = [e.event for e in page.daemon.access.audit.entries()]
            assert "access.opened" not in events
        finally:
            await page.http.aclose()
            await page.tasks.aclose()
