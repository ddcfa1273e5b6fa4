"""The customer page's login lockout, attacked as the security review did (defects 18, 19).

* 18: the lockout was checked before the wrong-password delay and the argon2 check, so
  198 of 200 parallel guesses were checked. Now an attempt is counted before its check:
  at most five per client per window, whatever the concurrency.
* 19: behind the demo's carrier every client is 127.0.0.1, so anyone could lock the
  admin out. Now a browser that logged in before is a client of its own, a trusted
  proxy's ``X-Forwarded-For`` names the real client, and a new password set on the
  machine (``tether agent web-password``) ends every lockout.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
from click.testing import CliRunner

from tests.unit.agent.web.test_app import PASSWORD, Page, make_config
from tether.agent.daemon import AgentDaemon
from tether.agent.web.auth import FAILURE_LIMIT, Throttle
from tether.cli import main

WRONG = "not the admin password"


def page_with_password(tmp_path: Path, extra: str = "", client: str = "127.0.0.1") -> Page:
    page = Page(AgentDaemon(make_config(tmp_path, extra)), client=client)
    page.app.state.page.password.set(PASSWORD)
    return page


def browser(page: Page, address: str = "127.0.0.1") -> httpx.AsyncClient:
    """Another browser (its own cookies) on the same page, from ``address``."""
    transport = httpx.ASGITransport(app=page.app, client=(address, 40001))
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8700")


async def guess(
    page: Page, password: str, *, http: httpx.AsyncClient | None = None, **headers: str
) -> httpx.Response:
    """One login attempt: the login form (for its CSRF token), then the password."""
    http = http or page.http
    text = (await http.get("/login", headers=headers)).text
    token = re.search(r'name="csrf-token" content="([0-9a-f]+)"', text)
    assert token, text
    return await http.post("/login", data={"csrf": token[1], "password": password}, headers=headers)


async def test_parallel_guesses_are_counted_before_they_are_checked(tmp_path: Path) -> None:
    page = page_with_password(tmp_path)
    page.app.state.page.throttle = Throttle(delay=0.2)  # the real limit; a shorter delay
    token = await page.csrf("/login")
    answers = await asyncio.gather(
        *[
            page.http.post("/login", data={"csrf": token, "password": f"guess {i}"})
            for i in range(200)
        ]
    )
    codes = [a.status_code for a in answers]
    assert codes.count(401) == FAILURE_LIMIT, "passwords checked"  # five, not 198
    assert codes.count(429) == 200 - FAILURE_LIMIT
    assert "too many wrong passwords" in next(a.text for a in answers if a.status_code == 429)


async def test_a_stranger_at_the_same_address_cannot_lock_out_the_admin_browser(
    tmp_path: Path,
) -> None:
    admin = page_with_password(tmp_path)
    assert (await admin.login()).status_code == 303  # the admin's browser, earlier
    await admin.http.post("/logout", data={"csrf": await admin.csrf("/")})
    stranger = browser(admin)  # the same address: everyone is 127.0.0.1 behind the carrier
    for _ in range(FAILURE_LIMIT + 3):
        await guess(admin, WRONG, http=stranger)
    assert (await guess(admin, PASSWORD, http=stranger)).status_code == 429  # locked out
    assert (await admin.login()).status_code == 303  # the admin's browser is not


async def test_a_new_password_on_the_machine_ends_the_lockout(tmp_path: Path) -> None:
    page = page_with_password(tmp_path)
    for _ in range(FAILURE_LIMIT):
        await guess(page, WRONG)
    locked = await guess(page, PASSWORD)
    assert locked.status_code == 429
    assert "tether agent web-password" in locked.text
    # At the machine's console:
    args = ["agent", "web-password", "--config", str(page.daemon.config.path)]
    reset = CliRunner().invoke(main, args, input="a brand new admin password\n")
    assert reset.exit_code == 0, reset.output
    assert (await guess(page, "a brand new admin password")).status_code == 303


async def test_behind_a_trusted_proxy_each_forwarded_client_is_counted_alone(
    tmp_path: Path,
) -> None:
    page = page_with_password(tmp_path, '[web]\ntrusted_proxies = ["127.0.0.2"]\n', "127.0.0.2")
    for _ in range(FAILURE_LIMIT):
        await guess(page, WRONG, **{"X-Forwarded-For": "203.0.113.9"})
    assert (await guess(page, PASSWORD, **{"X-Forwarded-For": "203.0.113.9"})).status_code == 429
    admin = await guess(page, PASSWORD, **{"X-Forwarded-For": "198.51.100.7"})
    assert admin.status_code == 303
    # A client the proxy does not name (the carrier's own) is never the machine itself.
    setup = await page.http.get("/setup")
    assert setup.status_code in (303, 307)  # a password exists: nothing to set up here


async def test_a_forwarded_for_header_from_an_untrusted_client_is_ignored(
    tmp_path: Path,
) -> None:
    page = page_with_password(tmp_path, '[web]\ntrusted_proxies = ["127.0.0.2"]\n', "192.0.2.50")
    for i in range(FAILURE_LIMIT):
        await guess(page, WRONG, **{"X-Forwarded-For": f"198.51.100.{i}"})
    spoofed = await guess(page, PASSWORD, **{"X-Forwarded-For": "198.51.100.99"})
    assert spoofed.status_code == 429
    assert "192.0.2.50" in spoofed.text


async def test_the_carrier_of_a_page_cannot_set_its_first_password(tmp_path: Path) -> None:
    carried = Page(
        AgentDaemon(make_config(tmp_path, '[web]\ntrusted_proxies = ["127.0.0.2"]\n')),
        client="127.0.0.2",
    )
    token = await carried.csrf("/setup")
    refused = await carried.http.post(
        "/setup", data={"csrf": token, "password": PASSWORD, "confirm": PASSWORD}
    )
    assert refused.status_code == 403
    assert not carried.daemon.config.web_password_path.exists()
