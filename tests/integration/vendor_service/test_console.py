"""The vendor console over HTTP: login, CSRF, and actions through the API's own functions."""

from __future__ import annotations

import re

import httpx

from tests.integration.vendor_service.conftest import ADMIN, PASSWORD, Api
from tether.keys import parse_key


async def csrf(client: httpx.AsyncClient, path: str) -> str:
    found = re.search(r'name="csrf-token" content="([0-9a-f]+)"', (await client.get(path)).text)
    assert found, f"no CSRF token on {path}"
    return found[1]


async def console_login(api: Api, name: str = ADMIN, password: str = PASSWORD) -> httpx.Response:
    token = await csrf(api.client, "/console/login")
    return await api.client.post(
        "/console/login", data={"csrf": token, "name": name, "password": password}
    )


async def test_login_sets_a_strict_httponly_cookie_and_shows_the_console(api: Api) -> None:
    assert (await api.client.get("/console/")).headers["location"] == "/console/login"
    wrong = await console_login(api, password="not the password")
    assert wrong.status_code == 401
    assert "wrong engineer name or password" in wrong.text
    done = await console_login(api)
    assert done.status_code == 303
    cookie = done.headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=strict" in cookie
    page = await api.client.get("/console/")
    assert page.status_code == 200
    assert "Live tethers" in page.text
    assert "No machine is tethered right now." in page.text
    assert "chain intact" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "engineer.login" in [e.event for e in await api.audit()]


async def test_issue_key_with_the_form_and_revoke_it(api: Api) -> None:
    assert (await console_login(api)).status_code == 303
    token = await csrf(api.client, "/console/")
    issued = await api.client.post(
        "/console/keys", data={"csrf": token, "serial": "SN-42", "expires": "2d", "ports": "22,443"}
    )
    assert issued.status_code == 201
    text = re.search(
        r'<textarea id="issued-key" readonly class="mono">([^<]+)</textarea>', issued.text
    )
    assert text
    claims = parse_key(
        text[1], [api.authority.signing_key.verify_key()], serial="SN-42", now=api.clock.now()
    )
    assert claims.ports == (22, 443)
    assert 'data-copy="issued-key"' in issued.text
    revoked = await api.client.post(
        "/console/keys/revoke", data={"csrf": token, "key_id": claims.key_id}
    )
    assert revoked.status_code == 303
    stored = await api.store.keys.get(claims.key_id)
    assert stored is not None
    assert stored.revoked
    assert f"Key {claims.key_id} for SN-42 revoked" in (await api.client.get("/console/")).text


async def test_bad_form_input_is_explained_in_plain_words(api: Api) -> None:
    assert (await console_login(api)).status_code == 303
    token = await csrf(api.client, "/console/")
    too_long = await api.client.post(
        "/console/keys", data={"csrf": token, "serial": "SN-42", "expires": "20w"}
    )
    assert too_long.status_code == 400
    assert 'id="issue-error"' in too_long.text
    assert "12 weeks" in too_long.text or "12w" in too_long.text
    assert await api.store.keys.list() == []


async def test_post_without_csrf_token_is_refused_and_changes_nothing(api: Api) -> None:
    assert (await console_login(api)).status_code == 303
    for path, data in (
        ("/console/keys", {"serial": "SN-42"}),
        ("/console/engineers", {"name": "mallory", "password": "x" * 16, "admin": "yes"}),
        ("/console/logout", {}),
    ):
        refused = await api.client.post(path, data=data)
        assert refused.status_code == 403, path
        assert "no valid security token" in refused.text
    assert await api.store.keys.list() == []
    assert await api.store.engineers.get("mallory") is None
    assert (await api.client.get("/console/")).status_code == 200  # still logged in
    api.client.cookies.clear()
    login_without_token = await api.client.post(
        "/console/login", data={"name": ADMIN, "password": PASSWORD}
    )
    assert login_without_token.status_code == 403


async def test_engineers_are_added_and_disabled_and_roles_hold(api: Api) -> None:
    assert (await console_login(api)).status_code == 303
    token = await csrf(api.client, "/console/")
    added = await api.client.post(
        "/console/engineers", data={"csrf": token, "name": "erin", "password": "long enough pw 1"}
    )
    assert added.status_code == 303
    assert "Engineer erin added." in (await api.client.get("/console/")).text
    api.client.cookies.clear()
    assert (await console_login(api, "erin", "long enough pw 1")).status_code == 303
    page = (await api.client.get("/console/")).text
    assert "Issue a key" not in page  # an engineer sees tethers and cases, not admin tools
    erin_token = await csrf(api.client, "/console/")
    refused = await api.client.post("/console/keys", data={"csrf": erin_token, "serial": "SN-1"})
    assert "only a vendor admin may do this" in refused.text
    api.client.cookies.clear()
    assert (await console_login(api)).status_code == 303
    token = await csrf(api.client, "/console/")
    await api.client.post("/console/engineers/disable", data={"csrf": token, "name": "erin"})
    erin = await api.store.engineers.get("erin")
    assert erin is not None
    assert not erin.active
    assert "engineer.disabled" in [e.event for e in await api.audit()]


async def test_a_case_is_approved_from_the_console(api: Api) -> None:
    case = await api.store.cases.open(
        serial="ACME-7", machine_key="SHA256:machine", description="disk full", now=api.clock.now()
    )
    await api.add_engineer("alice")
    assert (await console_login(api, "alice")).status_code == 303
    page = (await api.client.get("/console/")).text
    assert "disk full" in page
    assert f'aria-label="Approve case {case.id}"' in page
    token = await csrf(api.client, "/console/")
    done = await api.client.post("/console/cases/approve", data={"csrf": token, "case_id": case.id})
    assert done.status_code == 303
    stored = await api.store.cases.get(case.id)
    assert stored is not None
    assert stored.status.value == "issued"
    assert stored.decided_by == "alice"
    assert f"Case {case.id} approved" in (await api.client.get("/console/")).text
    again = await api.client.post(
        "/console/cases/approve", data={"csrf": token, "case_id": case.id}
    )
    assert again.status_code == 303
    assert "can no longer change" in (await api.client.get("/console/")).text


async def test_revealing_a_sealed_password_is_audited_and_not_cached(api: Api) -> None:
    from tether.seal import seal

    _, claims = await api.authority.issue_key("ACME-9")
    sealed = seal(
        "Kx7pQ2mN9vR4tW8z", api.seal_key.public(), serial="ACME-9", grant_id=claims.key_id
    )
    await api.store.passwords.put(
        key_id=claims.key_id, serial="ACME-9", sealed=sealed, now=api.clock.now()
    )
    await api.add_engineer("alice")
    assert (await console_login(api, "alice")).status_code == 303
    token = await csrf(api.client, "/console/")
    shown = await api.client.post(
        "/console/keys/password", data={"csrf": token, "key_id": claims.key_id}
    )
    assert shown.status_code == 200
    assert 'value="Kx7pQ2mN9vR4tW8z"' in shown.text
    assert shown.headers["cache-control"] == "no-store"
    assert await api.events("password.revealed") == [
        {"engineer": "alice", "key_id": claims.key_id, "serial": "ACME-9"}
    ]
    missing = await api.client.post(
        "/console/keys/password", data={"csrf": token, "key_id": "nope"}
    )
    assert missing.status_code == 303
    assert "no password was sent for key nope" in (await api.client.get("/console/")).text
