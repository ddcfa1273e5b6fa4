"""Logging in to the vendor API: passwords, one-time codes, rate limits, sessions."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta

import httpx
import pyotp

from tether.clock import FrozenClock
from tether.config import VendorConfig
from tether.store import Store
from tether.vendor_service.api_auth import SOURCE_FAILURE_LIMIT
from tether.vendor_service.api_credentials import TOKEN_LIFETIME, Passwords, token_hash
from tether.vendor_service.app import create_app
from tether.vendor_service.authority import Authority

from .conftest import ADMIN, FAST_HASHER, PASSWORD, Api


async def test_login_me_logout(api: Api) -> None:
    await api.add_engineer("alice")
    response = await api.client.post("/api/login", json={"name": "alice", "password": PASSWORD})
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["engineer"] == "alice"
    assert body["admin"] is False
    assert len(body["token"]) >= 43
    headers = {"Authorization": f"Bearer {body['token']}"}
    me = await api.client.get("/api/me", headers=headers)
    assert me.json() == {"engineer": "alice", "admin": False, "totp_enabled": False}
    # Only the hash of the token is stored.
    stored = await api.store.tokens.get(token_hash(body["token"]))
    assert stored is not None
    assert stored.expires_at == api.clock.now() + TOKEN_LIFETIME
    assert (await api.client.post("/api/logout", headers=headers)).status_code == 204
    after = await api.client.get("/api/me", headers=headers)
    assert after.status_code == 401
    assert after.json() == {"detail": "unknown or ended session; log in again"}
    assert [e["engineer"] for e in await api.events("engineer.login")] == ["alice"]


async def test_wrong_password_unknown_name_and_no_password_look_alike(api: Api) -> None:
    await api.add_engineer("alice")
    await api.add_engineer("nopass", password=None)
    for name, password in (("alice", "wrong password!"), ("ghost", PASSWORD), ("nopass", "x")):
        response = await api.client.post("/api/login", json={"name": name, "password": password})
        assert response.status_code == 401, name
        assert response.json() == {"detail": "wrong engineer name or password"}
    failed = await api.events("engineer.login_failed")
    assert [f["engineer"] for f in failed] == ["alice", "ghost", "nopass"]
    audit_text = await api.audit_text()
    assert "wrong password!" not in audit_text


async def test_disabled_engineer_cannot_log_in_and_their_session_ends(api: Api) -> None:
    await api.add_engineer("alice")
    headers = await api.headers("alice")
    await api.store.engineers.disable("alice", reason="left", now=api.clock.now())
    response = await api.client.post("/api/login", json={"name": "alice", "password": PASSWORD})
    assert response.status_code == 403
    assert "disabled" in response.json()["detail"]
    me = await api.client.get("/api/me", headers=headers)
    assert me.status_code == 403
    assert me.json() == {"detail": "engineer alice is disabled"}


async def test_five_failures_per_name_then_429_with_retry_after(api: Api) -> None:
    await api.add_engineer("alice")
    for _ in range(5):
        bad = await api.client.post("/api/login", json={"name": "alice", "password": "nope"})
        assert bad.status_code == 401
    limited = await api.client.post("/api/login", json={"name": "alice", "password": PASSWORD})
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "300"
    assert "too many failed logins for alice" in limited.json()["detail"]
    # Another name is not affected.
    assert (
        await api.client.post("/api/login", json={"name": ADMIN, "password": PASSWORD})
    ).is_success
    api.clock.advance(timedelta(minutes=4))
    still = await api.client.post("/api/login", json={"name": "alice", "password": PASSWORD})
    assert still.status_code == 429
    assert still.headers["retry-after"] == "60"
    api.clock.advance(timedelta(minutes=1))
    await api.login("alice")


async def test_a_stranger_cannot_lock_an_admin_out_with_five_requests(api: Api) -> None:
    """Security review, defect 19: the limit per name alone locked the admin out for 300 s."""
    async with api.client_from("203.0.113.9") as stranger, api.client_from("198.51.100.7") as boss:
        for _ in range(5):
            guess = await stranger.post("/api/login", json={"name": ADMIN, "password": "guess"})
            assert guess.status_code == 401
        locked = await stranger.post("/api/login", json={"name": ADMIN, "password": PASSWORD})
        assert locked.status_code == 429
        assert "too many failed logins for boss from 203.0.113.9" in locked.json()["detail"]
        mine = await boss.post("/api/login", json={"name": ADMIN, "password": PASSWORD})
        assert mine.status_code == 200, mine.text


async def test_one_source_guessing_many_names_is_limited_too(api: Api) -> None:
    async with api.client_from("203.0.113.10") as sprayer:
        for i in range(SOURCE_FAILURE_LIMIT):
            guess = await sprayer.post("/api/login", json={"name": f"name{i}", "password": "x"})
            assert guess.status_code == 401
        limited = await sprayer.post("/api/login", json={"name": ADMIN, "password": PASSWORD})
        assert limited.status_code == 429
        assert "too many failed logins from 203.0.113.10" in limited.json()["detail"]
    await api.login(ADMIN)  # from anywhere else: fine


async def test_behind_a_trusted_proxy_the_forwarded_client_is_counted(
    vendor_config: VendorConfig,
) -> None:
    config = dataclasses.replace(vendor_config, trusted_proxies=("10.9.0.1",))
    async with await Store.open(config.database) as store:
        authority = Authority(config, store, clock=FrozenClock(datetime.now(UTC)))
        await store.engineers.add(
            ADMIN, datetime.now(UTC), admin=True, password_hash=FAST_HASHER.hash(PASSWORD)
        )
        app = create_app(authority, seal_key=None, passwords=Passwords(FAST_HASHER))
        transport = httpx.ASGITransport(app=app, client=("10.9.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://vendor.test") as proxy:
            stranger = {"X-Forwarded-For": "203.0.113.9"}
            for _ in range(5):
                await proxy.post(
                    "/api/login", json={"name": ADMIN, "password": "x"}, headers=stranger
                )
            locked = await proxy.post(
                "/api/login", json={"name": ADMIN, "password": PASSWORD}, headers=stranger
            )
            assert locked.status_code == 429
            boss = await proxy.post(
                "/api/login",
                json={"name": ADMIN, "password": PASSWORD},
                headers={"X-Forwarded-For": "198.51.100.7"},
            )
            assert boss.status_code == 200, boss.text


async def test_parallel_guesses_cannot_outrun_the_limit(api: Api) -> None:
    await api.add_engineer("alice")
    guesses = [
        api.client.post("/api/login", json={"name": "alice", "password": f"guess {i}"})
        for i in range(20)
    ]
    codes = sorted(r.status_code for r in await asyncio.gather(*guesses))
    assert codes == [401] * 5 + [429] * 15


async def test_success_clears_the_failure_count(api: Api) -> None:
    await api.add_engineer("alice")
    for _ in range(4):
        await api.client.post("/api/login", json={"name": "alice", "password": "nope"})
    await api.login("alice")
    for _ in range(4):
        await api.client.post("/api/login", json={"name": "alice", "password": "nope"})
    await api.login("alice")


async def test_totp_flow(api: Api) -> None:
    await api.add_engineer("alice")
    headers = await api.headers("alice")
    setup = await api.client.post("/api/me/totp", headers=headers)
    assert setup.status_code == 200
    assert setup.headers["cache-control"] == "no-store"
    secret = setup.json()["secret"]
    uri = setup.json()["uri"]
    assert uri.startswith("otpauth://totp/")
    assert "alice" in uri
    assert "ACME" in uri
    assert (await api.client.get("/api/me", headers=headers)).json()["totp_enabled"] is True
    again = await api.client.post("/api/me/totp", headers=headers)
    assert again.status_code == 409
    assert "already on" in again.json()["detail"]

    missing = await api.client.post("/api/login", json={"name": "alice", "password": PASSWORD})
    assert missing.status_code == 401
    assert "send the current code as totp" in missing.json()["detail"]
    totp = pyotp.TOTP(secret)
    wrong = str((int(totp.at(api.clock.now())) + 1) % 1_000_000).zfill(6)
    bad = await api.client.post(
        "/api/login", json={"name": "alice", "password": PASSWORD, "totp": wrong}
    )
    assert bad.status_code == 401
    assert bad.json() == {"detail": "wrong or outdated one-time code"}
    # The code of the previous 30-second step is still accepted (valid_window=1).
    previous = totp.at(api.clock.now() - timedelta(seconds=30))
    await api.login("alice", totp=previous)
    await api.login("alice", totp=totp.at(api.clock.now()))
    stale = totp.at(api.clock.now() - timedelta(minutes=5))
    old = await api.client.post(
        "/api/login", json={"name": "alice", "password": PASSWORD, "totp": stale}
    )
    assert old.status_code == 401
    wrong_password = await api.client.post(
        "/api/login",
        json={"name": "alice", "password": "nope", "totp": totp.at(api.clock.now())},
    )
    assert wrong_password.json() == {"detail": "wrong engineer name or password"}
    assert secret not in await api.audit_text()
    assert [e["engineer"] for e in await api.events("engineer.totp_enabled")] == ["alice"]


async def test_token_expires_after_twelve_hours(api: Api) -> None:
    headers = await api.headers(ADMIN)
    api.clock.advance(TOKEN_LIFETIME - timedelta(seconds=1))
    assert (await api.client.get("/api/me", headers=headers)).status_code == 200
    api.clock.advance(timedelta(seconds=1))
    expired = await api.client.get("/api/me", headers=headers)
    assert expired.status_code == 401
    assert expired.json() == {"detail": "your session expired; log in again"}
    assert expired.headers["www-authenticate"] == "Bearer"
    # Gone for good: the next try does not even find it.
    again = await api.client.get("/api/me", headers=headers)
    assert again.json() == {"detail": "unknown or ended session; log in again"}


async def test_missing_or_malformed_authorization_is_401(api: Api) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic Ym9zczpwdw=="},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": "Bearer " + "x" * 5000},
    ):
        response = await api.client.get("/api/me", headers=headers)
        assert response.status_code == 401, headers
        assert isinstance(response.json()["detail"], str)


async def test_login_body_is_validated_with_plain_words(api: Api) -> None:
    cases = [
        ({"name": "Alice", "password": "x"}, "name: use 1 to 32 characters"),
        ({"name": "alice"}, "password: Field required"),
        ({"name": "alice", "password": "x", "totp": "12345"}, "totp"),
        ({"name": "alice", "password": "x", "extra": 1}, "extra: unknown field"),
    ]
    for body, words in cases:
        response = await api.client.post("/api/login", json=body)
        assert response.status_code == 400, body
        assert words in response.json()["detail"], response.json()
    raw = await api.client.post(
        "/api/login", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert raw.status_code == 400
    assert raw.json() == {"detail": "the request body is not valid JSON"}
