"""The customer's page over HTTP (httpx against the app; no browser, no root).

The page runs around a real :class:`~tether.agent.daemon.AgentDaemon` (not serving),
so every refusal is checked against the real state and audit files: refused means
nothing changed.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tether.agent.daemon import AgentDaemon
from tether.agent.status import describe_access
from tether.agent.web.app import create_app
from tether.agent.web.auth import FAILED_LOGIN_DELAY, Throttle
from tether.config import AgentConfig, toml_string
from tether.keys import SigningKey, issue_key
from tether.tasks import TaskSet
from tether.webui.security import MAX_REQUEST_BODY

PASSWORD = "correct horse battery"
SIGNER = SigningKey.generate()


def make_config(tmp_path: Path, extra: str = "") -> AgentConfig:
    path = tmp_path / "agent.toml"
    path.write_text(
        'serial = "WEB-1"\n'
        f"vendor_keys = [{toml_string(SIGNER.verify_key().to_paserk())}]\n"
        f"state_dir = {toml_string(str(tmp_path / 'state'))}\n"
        f"run_dir = {toml_string(str(tmp_path / 'run'))}\n" + extra
    )
    return AgentConfig.load(path)


class Page:
    """An httpx client on the page, from a chosen client address."""

    def __init__(self, daemon: AgentDaemon, client: str = "127.0.0.1") -> None:
        self.daemon = daemon
        self.tasks = TaskSet()
        self.app = create_app(daemon, self.tasks)
        transport = httpx.ASGITransport(app=self.app, client=(client, 40000))
        self.http = httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8700")

    async def csrf(self, path: str) -> str:
        text = (await self.http.get(path)).text
        found = re.search(r'name="csrf-token" content="([0-9a-f]+)"', text)
        assert found, f"no CSRF token on {path}"
        return found[1]

    async def login(self, password: str = PASSWORD) -> httpx.Response:
        token = await self.csrf("/login")
        return await self.http.post("/login", data={"csrf": token, "password": password})

    def audit_size(self) -> int:
        return len(self.daemon.access.audit.entries())


@pytest.fixture
async def page(tmp_path: Path) -> AsyncIterator[Page]:
    daemon = AgentDaemon(make_config(tmp_path))
    page = Page(daemon)
    page.app.state.page.password.set(PASSWORD)
    try:
        yield page
    finally:
        await page.http.aclose()
        await page.tasks.aclose()


async def test_first_visit_from_the_machine_sets_the_password(tmp_path: Path) -> None:
    page = Page(AgentDaemon(make_config(tmp_path)))
    assert (await page.http.get("/")).headers["location"] == "/setup"
    token = await page.csrf("/setup")
    short = await page.http.post(
        "/setup", data={"csrf": token, "password": "short", "confirm": "short"}
    )
    assert short.status_code == 400
    assert "at least 12 characters" in short.text
    done = await page.http.post(
        "/setup", data={"csrf": token, "password": PASSWORD, "confirm": PASSWORD}
    )
    assert done.status_code == 303
    assert (await page.http.get("/")).status_code == 200
    stored = page.daemon.config.web_password_path
    assert stored.stat().st_mode & 0o077 == 0
    assert PASSWORD not in stored.read_text()


async def test_first_visit_from_another_host_cannot_set_the_password(tmp_path: Path) -> None:
    page = Page(AgentDaemon(make_config(tmp_path)), client="192.0.2.9")
    token = await page.csrf("/setup")
    assert "only be set from the machine itself" in (await page.http.get("/setup")).text
    refused = await page.http.post(
        "/setup", data={"csrf": token, "password": PASSWORD, "confirm": PASSWORD}
    )
    assert refused.status_code == 403
    assert not page.daemon.config.web_password_path.exists()


async def test_wrong_password_is_refused_after_a_delay(page: Page) -> None:
    started = time.monotonic()
    wrong = await page.login("not the password")
    elapsed = time.monotonic() - started
    assert wrong.status_code == 401
    assert "wrong password" in wrong.text
    assert elapsed >= FAILED_LOGIN_DELAY
    assert (await page.http.get("/")).headers["location"] == "/login"
    right = await page.login()
    assert right.status_code == 303
    assert right.headers["location"] == "/"
    cookie = right.headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=strict" in cookie
    assert (await page.http.get("/")).status_code == 200


async def test_repeated_wrong_passwords_lock_the_source_out(page: Page) -> None:
    page.app.state.page.throttle = Throttle(limit=3, delay=0.01)
    for _ in range(3):
        assert (await page.login("guess guess guess")).status_code == 401
    locked = await page.login()  # even the right password, while locked out
    assert locked.status_code == 429
    assert "too many wrong passwords" in locked.text
    assert (await page.http.get("/")).headers["location"] == "/login"


async def test_post_without_csrf_token_is_refused_and_changes_nothing(page: Page) -> None:
    assert (await page.login()).status_code == 303
    before = page.audit_size()
    key = issue_for("WEB-1")
    for path, data in (
        ("/access/enable", {"mode": "key", "key": key}),
        ("/access/disable", {}),
        ("/logout", {}),
    ):
        refused = await page.http.post(path, data=data)
        assert refused.status_code == 403, path
        assert "no valid security token" in refused.text
        assert "Nothing was changed" in refused.text
        forged = await page.http.post(path, data={**data, "csrf": "0" * 64})
        assert forged.status_code == 403, path
    assert page.audit_size() == before
    assert not page.daemon.access.state().is_open
    assert (await page.http.get("/")).status_code == 200  # still logged in: logout refused


async def test_a_body_over_the_limit_is_refused_unread(page: Page) -> None:
    token = await page.csrf("/login")
    huge = await page.http.post(
        "/login", data={"csrf": token, "password": "x" * (MAX_REQUEST_BODY + 1)}
    )
    assert huge.status_code == 413
    assert (await page.login()).status_code == 303  # an ordinary form still works


async def test_login_itself_needs_the_csrf_token(page: Page) -> None:
    await page.http.get("/login")
    refused = await page.http.post("/login", data={"password": PASSWORD})
    assert refused.status_code == 403
    assert (await page.http.get("/")).headers["location"] == "/login"


async def test_client_outside_the_allowed_list_is_refused(tmp_path: Path) -> None:
    config = make_config(tmp_path, '[web]\nallowed_clients = ["10.1.0.0/16", "::1"]\n')
    daemon = AgentDaemon(config)
    outsider = Page(daemon, client="192.0.2.9")
    for response in (
        await outsider.http.get("/"),
        await outsider.http.get("/login"),
        await outsider.http.post("/login", data={"password": PASSWORD}),
        await outsider.http.get("/static/ui/htmx.min.js"),
    ):
        assert response.status_code == 403
        assert "may not use the Tether admin page" in response.text
    insider = Page(daemon, client="10.1.2.3")
    assert (await insider.http.get("/login")).status_code in (200, 307, 303)


async def test_bad_key_is_explained_next_to_the_field(page: Page) -> None:
    assert (await page.login()).status_code == 303
    token = await page.csrf("/")
    before = page.audit_size()
    cases = {
        "not a key at all": "",
        issue_for("OTHER-9"): "OTHER-9",
        issue_for("WEB-1", expired=True): "expired",
    }
    for key, words in cases.items():
        form = {"csrf": token, "mode": "key", "key": key, "ports": ["22", "443"]}
        response = await page.http.post("/access/enable", data=form)
        assert response.status_code == 400
        error = re.search(
            r'<p class="error" id="key-error" role="alert">([^<]+)</p>', response.text
        )
        assert error, response.text
        assert words in error[1]
        assert "Traceback" not in response.text
        assert 'aria-describedby="key-error"' in response.text
    assert page.audit_size() == before
    assert not page.daemon.access.state().is_open


async def test_form_mistakes_are_explained_per_field(page: Page) -> None:
    assert (await page.login()).status_code == 303
    token = await page.csrf("/")
    form = {
        "csrf": token,
        "mode": "key",
        "key": issue_for("WEB-1"),
        "duration": "soon",
        "password_choice": "own",
        "password": "abcdefghijklmn",
        "password_confirm": "abcdefghijklmX",
    }
    response = await page.http.post("/access/enable", data=form)
    assert response.status_code == 400
    assert 'id="duration-error"' in response.text
    assert 'id="password-error"' in response.text
    assert "the two passwords differ" in response.text
    assert 'id="ports-error"' in response.text  # no port chosen
    assert "abcdefghijklmn" not in response.text  # passwords are never echoed back


async def test_page_shows_state_in_the_cli_words_and_the_audit_check(page: Page) -> None:
    page.daemon.access.audit.append("access.closed", by="cli", reason="customer")
    assert (await page.login()).status_code == 303
    body = (await page.http.get("/")).text
    words = describe_access(page.daemon.access.state(), "WEB-1", page.daemon.access.clock.now())
    assert words in body
    assert "Support access: closed" in body
    assert "chain intact: " in body
    fragment = await page.http.get("/fragment/status")
    assert fragment.status_code == 200
    assert words in fragment.text
    headers = (await page.http.get("/")).headers
    assert "default-src 'self'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"


async def test_fragments_need_a_session(page: Page) -> None:
    response = await page.http.get("/fragment/status", headers={"HX-Request": "true"})
    assert response.status_code == 401
    assert response.headers["hx-redirect"] == "/login"


def issue_for(serial: str, *, expired: bool = False) -> str:
    now = datetime.now(UTC) - (timedelta(days=2) if expired else timedelta(0))
    token, _ = issue_key(
        SIGNER,
        serial=serial,
        now=now,
        lifetime=timedelta(days=1),
        relay="127.0.0.1:2222",
        relay_host_key="SHA256:" + "A" * 43,
        ports=[22, 443],
        vendor="Test Vendor",
    )
    return token


async def test_missing_prerequisite_is_explained_at_the_form(page: Page) -> None:
    """A good key on a machine whose agent lacks the vendor CA: plain words, nothing changed."""
    assert (await page.login()).status_code == 303
    token = await page.csrf("/")
    form = {"csrf": token, "mode": "key", "key": issue_for("WEB-1"), "ports": ["22"]}
    response = await page.http.post("/access/enable", data=form)
    assert response.status_code == 400
    error = re.search(r'<p class="error" id="form-error" role="alert">([^<]+)</p>', response.text)
    assert error, response.text
    assert "has no vendor_ca" in error[1]
    assert not page.daemon.access.state().is_open
    assert page.audit_size() == 0


async def test_a_loopback_page_refuses_other_host_names(page: Page) -> None:
    """DNS rebinding: another site's name pointed at 127.0.0.1 does not reach the page."""
    for name in ("evil.example", "127.0.0.1.evil.example", "evil.example:8700"):
        response = await page.http.get("/login", headers={"host": name})
        assert response.status_code == 403, name
        assert "does not answer to other host names" in response.text
    for name in ("localhost:8700", "127.0.0.1", "[::1]:8700", "LOCALHOST"):
        assert (await page.http.get("/login", headers={"host": name})).status_code == 200, name


async def test_anonymous_sessions_cannot_push_out_the_admins(page: Page) -> None:
    assert (await page.login()).status_code == 303
    for _ in range(1_050):
        page.app.state.page.sessions.new(admin=False)
    assert (await page.http.get("/")).status_code == 200


def put_recording(config: AgentConfig, recording_id: str, engineer: str, output: str) -> None:
    """A finished recording as the recorder leaves it: gzip asciicast plus its metadata."""
    import gzip
    import json

    from tether.agent.recording.catalog import cast_path, meta_path

    directory = config.recordings_dir
    directory.mkdir(parents=True, exist_ok=True)
    cast = json.dumps({"version": 2, "width": 80, "height": 24}) + "\n"
    cast += json.dumps([0.5, "o", output]) + "\n"
    cast_path(directory, recording_id).write_bytes(gzip.compress(cast.encode()))
    meta_path(directory, recording_id).write_text(
        json.dumps(
            {
                "engineer": engineer,
                "kind": "command",
                "command": "uptime",
                "started": "2026-11-25T03:00:00+00:00",
                "ended": "2026-11-25T03:01:05+00:00",
                "exit_status": 0,
                "status": "ended",
                "transfers": [{"op": "put", "path": "/tmp/fix.sh", "bytes": 120}],
            }
        )
    )


async def test_recordings_are_listed_and_served_to_the_player(page: Page) -> None:
    rid = "20261125T030000Z-0123abcd"
    put_recording(page.daemon.config, rid, "alice", "load average: 0.42\r\n")
    assert (await page.login()).status_code == 303
    body = (await page.http.get("/")).text
    assert 'id="recordings-table"' in body
    assert "alice" in body
    assert "1m 05s" in body
    assert "put /tmp/fix.sh (120 bytes)" in body
    player = await page.http.get(f"/recordings/{rid}")
    assert player.status_code == 200
    assert f'data-cast="/recordings/{rid}/cast"' in player.text
    assert "/static/agent/asciinema-player.min.js" in player.text
    assert "'wasm-unsafe-eval'" in player.headers["content-security-policy"]
    cast = await page.http.get(f"/recordings/{rid}/cast")
    assert cast.status_code == 200
    assert "load average: 0.42" in cast.text
    assert cast.text.startswith('{"version": 2')


async def test_recordings_need_a_session_and_a_real_id(page: Page) -> None:
    rid = "20261125T030000Z-0123abcd"
    put_recording(page.daemon.config, rid, "alice", "secret output\r\n")
    anonymous = await page.http.get(f"/recordings/{rid}/cast")
    assert anonymous.status_code == 303
    assert "secret output" not in anonymous.text
    assert (await page.login()).status_code == 303
    for bad in ("..%2F..%2Fetc%2Fshadow", "20261125T030000Z-0123abcd.json", "nope"):
        response = await page.http.get(f"/recordings/{bad}/cast")
        assert response.status_code == 404, bad
        assert (await page.http.get(f"/recordings/{bad}")).status_code == 404, bad
    assert "No support session has been recorded yet" not in (await page.http.get("/")).text


async def test_hostile_limits_in_the_form_are_explained_and_change_nothing(page: Page) -> None:
    assert (await page.login()).status_code == 303
    token = await page.csrf("/")
    before = page.audit_size()
    base = {"csrf": token, "mode": "key", "key": issue_for("WEB-1"), "ports": ["22"]}
    cases = [
        ({"files": "everything"}, "limits", "choose how files may be transferred"),
        ({"files": "x" * 5000}, "limits", "choose how files may be transferred"),
        ({"max_session": "forever"}, "max_session", ""),
        ({"max_session": "9" * 400 + "d"}, "max_session", ""),
        ({"consent": "ask", "consent_timeout": "-5m"}, "consent_timeout", ""),
        ({"no_shell": "on", "files": "off"}, "limits", "would allow nothing"),
    ]
    for fields, field, words in cases:
        response = await page.http.post("/access/enable", data={**base, **fields})
        assert response.status_code == 400, fields
        error = re.search(
            rf'<p class="error" id="{field}-error" role="alert">([^<]+)</p>', response.text
        )
        assert error, (fields, response.text)
        assert words in error[1]
        assert "Traceback" not in response.text
        assert "x" * 100 not in response.text  # a hostile value is not echoed back whole
    assert page.audit_size() == before
    assert not page.daemon.access.state().is_open
