"""Whole flows in a real browser against real running parts (vendor, relay, sshd, agent).

The customer's page is served by the agent daemon inside the sandboxed machine and
reached from the host through the demo's page forwarder; the engineer connects with
stock ``ssh`` through the relay. Each page is screenshotted at 1280x800 and at a
phone's width into ``test-artifacts/browser/``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
from typing import Any

import pytest

from tests.browser.conftest import ARTIFACTS
from tether.agent.recording.recorder.live import MAX_WATCHERS
from tether.agent.web.live import RETRY_MS
from tether.demo import DemoSystem

pytestmark = [pytest.mark.browser, pytest.mark.sandbox]

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
SLOW = 25_000  # ms: the tether and sshd's log take a moment on a busy machine


async def shoot(page: Any, name: str) -> None:
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def fits_phone(page: Any, name: str) -> None:
    """At a phone's width the page must not scroll sideways (tables scroll in their box)."""
    await page.set_viewport_size(PHONE)
    await shoot(page, f"{name}-phone")
    width = await page.evaluate("document.documentElement.scrollWidth")
    wide = await page.evaluate(
        "[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > "
        f"{PHONE['width'] + 1}).slice(0, 5).map(e => e.tagName + '#' + e.id + '.' + e.className)"
    )
    assert width <= PHONE["width"] + 1, f"{name} is {width}px wide on a phone: {wide}"
    await page.set_viewport_size(DESKTOP)


async def access_status(system: DemoSystem) -> dict[str, Any]:
    result = await asyncio.to_thread(system.access, "status", "--json")
    assert result.returncode == 0, result.stderr
    status: dict[str, Any] = json.loads(result.stdout)
    return status


async def _logged_in(context: Any, system: DemoSystem) -> Any:
    """A page of ``context`` on the customer's page, logged in by keyboard alone (the
    password field has the focus; Enter submits)."""
    assert system.page_url is not None
    page = await context.new_page()
    await page.goto(system.page_url)
    await page.keyboard.type(system.page_password)
    await page.keyboard.press("Enter")
    return page


async def test_customer_opens_access_sees_the_engineer_ends_the_session_and_closes(
    system: DemoSystem, browser: Any
) -> None:
    from playwright.async_api import expect

    assert system.page_url is not None
    assert system.engineer is not None
    # The demo opened access with the CLI; the customer now does it on the page.
    assert (await asyncio.to_thread(system.access, "disable")).returncode == 0
    key = await system.issue_key()

    context = await browser.new_context(viewport=DESKTOP)
    page = await context.new_page()
    await page.goto(system.page_url)
    await expect(page).to_have_url(system.page_url + "login")
    await shoot(page, "customer-login")
    # By keyboard alone: the password field has the focus; Enter submits.
    await page.keyboard.type(system.page_password)
    await page.keyboard.press("Enter")
    state = page.locator("#access-state")
    await expect(state).to_have_text("Support access: closed")
    assert await page.evaluate("document.cookie") == ""  # the session cookie is HttpOnly
    await shoot(page, "customer-closed")

    # Pasted from an e-mail: line breaks and spaces in the key are harmless.
    wrapped = "\n  ".join(key[i : i + 60] for i in range(0, len(key), 60))
    await page.get_by_label("Tether key").fill(wrapped)
    await page.get_by_role("button", name="Open access with this key").click()
    await expect(state).to_contain_text("connected to relay 127.0.0.1:", timeout=SLOW)
    await expect(page.locator("#countdown")).to_have_text(re.compile(r"^\d+h \d\dm \d\ds$"))
    await shoot(page, "customer-connected")

    ssh = subprocess.Popen(  # noqa: ASYNC220 - it runs alongside, as the engineer's terminal
        system.engineer.ssh(system.serial, "echo in; sleep 300"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        row = page.locator("#sessions-table tbody tr")
        await expect(row).to_have_count(1, timeout=SLOW)
        await expect(row).to_contain_text(system.engineer_name)
        await expect(row.locator("td").nth(2)).to_contain_text("22")
        await shoot(page, "customer-session")
        await fits_phone(page, "customer")

        await page.get_by_role("button", name=f"End the session of {system.engineer_name}").click()
        await expect(page.locator(".flash")).to_have_text(
            f"Ended the session of {system.engineer_name}."
        )
        # Really ended: the engineer's ssh sees the connection go.
        out, _ = await asyncio.to_thread(ssh.communicate, None, 10)
        assert ssh.returncode != 0
        assert out == b"in\n"  # it was in, and was thrown out
        await expect(page.locator("#no-sessions")).to_be_visible()
        await expect(state).to_contain_text("connected to relay")  # access itself stays open
    finally:
        if ssh.poll() is None:
            ssh.kill()
        ssh.communicate()

    await page.get_by_role("button", name="Close support access now").click()
    await expect(page.locator(".flash")).to_have_text("Support access closed.")
    await expect(state).to_have_text("Support access: closed")
    await expect(page.locator("#audit-verdict")).to_contain_text("chain intact")
    await expect(page.locator("#audit")).to_contain_text("session ended")
    await shoot(page, "customer-after")
    status = await access_status(system)
    assert status["access"]["status"] == "closed"

    # The session was recorded: it is listed, and the vendored player replays its output.
    recording = page.locator("#recordings-table tbody tr").first
    await expect(recording).to_contain_text(system.engineer_name, timeout=SLOW)
    await expect(recording).to_contain_text("echo in; sleep 300")
    await expect(recording).not_to_contain_text("still running")  # it was ended above
    await recording.get_by_role("link", name=re.compile("^Play the session of")).click()

    await expect(page.locator("#player .ap-term, #player .ap-terminal").first).to_contain_text(
        "in", timeout=SLOW
    )
    await shoot(page, "customer-recording")
    await context.close()


async def test_vendor_issues_a_key_and_sees_the_tether_appear_and_disappear(
    system: DemoSystem, browser: Any
) -> None:
    from playwright.async_api import expect

    assert (await asyncio.to_thread(system.access, "disable")).returncode == 0
    context = await browser.new_context(viewport=DESKTOP)
    page = await context.new_page()
    await page.goto(system.console_url)
    await expect(page).to_have_url(system.console_url + "login")
    await shoot(page, "console-login")
    await page.get_by_label("Engineer name").fill("admin")
    await page.get_by_label("Password").fill(system.admin_password)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.locator("#no-tethers")).to_be_visible(timeout=SLOW)

    await page.get_by_label("Machine serial").fill(system.serial)
    await page.get_by_label("Valid for (at most 12w)").fill("1d")
    await page.get_by_role("button", name="Issue key").click()
    issued = page.locator("#issued-key")
    await expect(issued).to_be_visible()
    copy = page.locator('button[data-copy="issued-key"]')
    await expect(copy).to_have_text("Copy")
    await copy.click()
    await expect(copy).to_have_text("Copied")
    key = await issued.input_value()
    await shoot(page, "console-key-issued")

    # The customer applies it (the CLI, this time): the tether appears on the console live.
    result = await asyncio.to_thread(system.access, "enable", "--key", key)
    assert result.returncode == 0, result.stderr
    row = page.locator("#tethers-table tbody tr")
    await expect(row).to_have_count(1, timeout=SLOW)
    await expect(row).to_contain_text(system.serial)
    await expect(row).to_contain_text("22, 80, 443")
    await shoot(page, "console-tether")
    await fits_phone(page, "console")

    await page.get_by_role("button", name=f"Revoke the key of {system.serial}").click()
    await expect(page.locator(".flash")).to_contain_text("revoked")
    await expect(page.locator("#no-tethers")).to_be_visible(timeout=SLOW)
    await expect(page.locator("#audit")).to_contain_text("key revoked")
    await shoot(page, "console-after")
    for _ in range(100):  # the machine hears of the revocation and closes access itself
        if (await access_status(system))["access"]["status"] == "closed":
            break
        await asyncio.sleep(0.2)
    else:
        pytest.fail("the machine did not close access after the key was revoked")
    await context.close()


async def test_customer_watches_the_engineer_live_and_ends_the_session(
    system: DemoSystem, browser: Any
) -> None:
    """Issue 17: the live view shows what the engineer types within a second; End ends it."""
    import time

    from playwright.async_api import expect

    from tests.e2e.test_session_recording import Terminal

    assert system.page_url is not None
    assert system.engineer is not None
    context = await browser.new_context(viewport=DESKTOP)
    page = await _logged_in(context, system)
    await expect(page.locator("#access-state")).to_contain_text("connected to relay", timeout=SLOW)

    term = Terminal(system.engineer.ssh("-tt", system.serial), columns=90, rows=24)
    try:
        await term.expect(r"[$#] $", within=SLOW / 1000)
        term.type("echo ready-$((6*7))\r")
        await term.expect(r"\rready-42\r\n")
        watch = page.get_by_role("link", name=f"Watch the session of {system.engineer_name}")
        await expect(watch).to_be_visible(timeout=SLOW)
        await watch.click()
        screen = page.locator("#player .ap-term, #player .ap-terminal").first
        await expect(screen).to_contain_text("ready-42", timeout=SLOW)  # the screen so far
        await shoot(page, "customer-live")

        term.type("echo marker-$((5*5))\r")
        typed = time.monotonic()
        await expect(screen).to_contain_text("marker-25", timeout=SLOW)
        shown = time.monotonic() - typed
        assert shown <= 1.0, f"the marker took {shown:.2f} s to reach the live view"
        await term.expect(r"\rmarker-25\r\n")
        await fits_phone(page, "customer-live")

        # Nothing can be sent into the stream: it takes no POST (or anything but GET).
        stream = await page.locator("#player").get_attribute("data-live")
        status = await page.evaluate(
            "async (url) => (await fetch(url, {method: 'POST', body: 'echo injected-9\\r'}))"
            ".status",
            stream,
        )
        assert status == 405
        # And only a logged-in admin can read it.
        stranger = await browser.new_context()
        refused = await stranger.request.get(system.page_url + (stream or "").lstrip("/"))
        assert refused.status == 401
        await stranger.close()
        term.type("echo after-$((3*3))\r")
        await expect(screen).to_contain_text("after-9")

        # Every watcher place taken (the page holds one): another page says so, once.
        assert system.machine is not None
        recordings = system.machine.host_path("/var/lib/tether/recordings")
        recording = (stream or "").split("/")[2]
        # The sandbox's path is too long for a unix socket address: go through its fd.
        directory = os.open(recordings, os.O_PATH | os.O_DIRECTORY)
        crowd = []
        try:
            for _ in range(MAX_WATCHERS - 1):
                crowd.append(watcher := socket.socket(socket.AF_UNIX))
                watcher.connect(f"/proc/self/fd/{directory}/{recording}.live")
        finally:
            os.close(directory)
        try:
            second = await context.new_page()
            await second.goto(page.url)
            await expect(second.locator("#live-state")).to_contain_text(
                f"{MAX_WATCHERS} watchers follow this session already", timeout=SLOW
            )
            asked = []
            second.on("request", lambda r: asked.append(r.url) if "/events" in r.url else None)
            await asyncio.sleep(2 * RETRY_MS / 1000)
            assert asked == [], "a full session's page kept asking for the stream"
            await second.close()
        finally:
            for watcher in crowd:
                watcher.close()

        await page.get_by_role("button", name=f"End the session of {system.engineer_name}").click()
        await expect(page.locator(".flash")).to_have_text(
            f"Ended the session of {system.engineer_name}."
        )
        assert await term.wait() != 0  # the engineer's ssh is thrown out
        assert "injected" not in term.output.decode(errors="replace")
        # Its recorder died with it; the agent clears the live view's socket it left.
        assert system.machine is not None
        recordings = system.machine.host_path("/var/lib/tether/recordings")
        for _ in range(100):
            if not list(recordings.glob("*.live")):
                break
            await asyncio.sleep(0.1)
        assert not list(recordings.glob("*.live"))
    finally:
        term.close()
    await context.close()


async def test_customer_opens_access_with_limits_and_consent_and_admits_a_login(
    system: DemoSystem, browser: Any
) -> None:
    """Issue 17: limits and consent chosen in the page's form; the login waits for Admit."""
    from playwright.async_api import expect

    from tests.integration.harness import run_ssh

    assert system.page_url is not None
    assert system.engineer is not None
    assert (await asyncio.to_thread(system.access, "disable")).returncode == 0
    key = await system.issue_key()
    context = await browser.new_context(viewport=DESKTOP)
    page = await _logged_in(context, system)
    form = page.locator("form", has=page.get_by_label("Tether key"))
    await form.get_by_label("Tether key").fill(key)
    await form.get_by_label("No administrator rights (sudo)").check()
    await form.get_by_label("Each login").select_option("ask")
    await form.get_by_label("If I do not answer within (default 5m)").fill("2m")
    await form.get_by_role("button", name="Open access with this key").click()
    state = page.locator("#access-state")
    await expect(state).to_contain_text("connected to relay", timeout=SLOW)
    limits = page.locator("#limits-line")
    await expect(limits).to_contain_text("no administrator rights (sudo)")
    await expect(limits).to_contain_text("each login waits for the customer to admit it")
    status = await access_status(system)
    assert status["access"]["limits"]["consent"] == "ask", status["access"]
    assert status["access"]["limits"]["sudo"] is False

    # The engineer sees them in the vendor console before connecting.
    console = await context.new_page()
    await console.goto(system.console_url)
    await console.get_by_label("Engineer name").fill("admin")
    await console.get_by_label("Password").fill(system.admin_password)
    await console.get_by_role("button", name="Log in").click()
    row = console.locator("#tethers-table tbody tr")
    await expect(row).to_contain_text(system.serial, timeout=SLOW)
    await expect(row.locator("td.limits")).to_contain_text(
        "no administrator rights (sudo)", timeout=SLOW
    )
    await expect(row.locator("td.limits")).to_contain_text("each login waits for the customer")
    await shoot(console, "console-tether-limits")
    await console.close()

    login = asyncio.ensure_future(
        run_ssh(
            system.engineer.ssh(system.serial, "echo in-$((2*3)); sudo -n true; echo sudo=$?"),
            timeout=60,
        )
    )
    try:
        admit = page.get_by_role("button", name=f"Admit the login of {system.engineer_name}")
        await expect(admit).to_be_visible(timeout=SLOW)
        await shoot(page, "customer-consent")
        assert not login.done()  # it waits for the customer
        await admit.click()
        await expect(page.locator(".flash")).to_contain_text(
            f"Admitted the login of {system.engineer_name}"
        )
        result = await asyncio.wait_for(login, 30)
    finally:
        if not login.done():
            login.cancel()
    assert result.returncode == 0, result.stderr
    assert b"in-6\n" in result.stdout
    assert b"sudo=1\n" in result.stdout  # no administrator rights
    assert b"waiting for the customer to admit you" in result.stderr
    await page.goto(system.page_url)
    await expect(page.locator("#audit")).to_contain_text("support admitted")
    await context.close()
