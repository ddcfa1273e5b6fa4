"""Tether keys over the API: issue, list, revoke (admins only), and sealed passwords."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import text

from tether.seal import seal
from tether.store import RevocationKind

from .conftest import ADMIN, Api


async def test_issue_list_revoke(api: Api) -> None:
    headers = await api.headers(ADMIN)
    issued = await api.client.post(
        "/api/keys",
        headers=headers,
        json={"serial": "ACME-1", "expires": "12w", "ports": [443, 22]},
    )
    assert issued.status_code == 201, issued.text
    body = issued.json()
    assert body["key"].startswith("v4.public.")
    assert body["serial"] == "ACME-1"
    assert body["kind"] == "manual"
    assert body["ports"] == [22, 443]
    assert body["relay"] == "127.0.0.1:2222"
    assert (body["used"], body["revoked"], body["revoke_reason"]) == (False, False, None)
    expires = datetime.fromisoformat(body["expires_at"])
    assert expires - datetime.fromisoformat(body["issued_at"]) == timedelta(weeks=12)
    stored = await api.store.keys.get(body["key_id"])
    assert stored is not None
    assert stored.issued_by == ADMIN
    listed = (await api.client.get("/api/keys", headers=headers)).json()
    assert [k["key_id"] for k in listed] == [body["key_id"]]
    assert "key" not in listed[0]

    revoked = await api.client.post(
        f"/api/keys/{body['key_id']}/revoke", headers=headers, json={"reason": "case closed"}
    )
    assert revoked.status_code == 200
    assert (revoked.json()["revoked"], revoked.json()["revoke_reason"]) == (True, "case closed")
    (feed,) = await api.store.revocations.since(0)
    assert (feed.kind, feed.subject) == (RevocationKind.KEY, body["key_id"])
    again = await api.client.post(f"/api/keys/{body['key_id']}/revoke", headers=headers)
    assert again.status_code == 200  # no body: the default reason; already revoked: unchanged
    assert again.json()["revoke_reason"] == "case closed"
    assert [e["key_id"] for e in await api.events("key.issued")] == [body["key_id"]]
    assert (await api.events("key.revoked"))[0] == {
        "key_id": body["key_id"],
        "serial": "ACME-1",
        "by": ADMIN,
        "reason": "case closed",
    }


async def test_issue_defaults_and_relay_override(api: Api) -> None:
    headers = await api.headers(ADMIN)
    body = (
        await api.client.post(
            "/api/keys",
            headers=headers,
            json={"serial": "ACME-2", "relay": "relay.example.com:443"},
        )
    ).json()
    assert body["ports"] == [22, 80, 443]
    assert body["relay"] == "relay.example.com:443"
    span = datetime.fromisoformat(body["expires_at"]) - datetime.fromisoformat(body["issued_at"])
    assert span == timedelta(days=14)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"serial": "ACME-1", "expires": "13w"}, "at most 12 weeks"),
        ({"serial": "ACME-1", "expires": "soon"}, "cannot read duration"),
        ({"serial": "ACME-1", "ports": []}, "at least one port"),
        ({"serial": "ACME-1", "ports": [0]}, "invalid port"),
        ({"serial": "ACME-1", "ports": [70000]}, "invalid port"),
        ({"serial": "ACME-1", "relay": "no port"}, "invalid relay address"),
        ({"serial": "bad serial!"}, "serial: use 1-64 letters"),
        ({"serial": "ACME-1", "kind": "request"}, "kind: unknown field"),
    ],
)
async def test_issue_refuses_bad_input(api: Api, body: dict[str, object], words: str) -> None:
    response = await api.client.post("/api/keys", headers=await api.headers(ADMIN), json=body)
    assert response.status_code == 400
    assert words in response.json()["detail"]
    assert await api.store.keys.list() == []


async def test_keys_are_admin_only(api: Api) -> None:
    await api.add_engineer("alice")
    headers = await api.headers("alice")
    for method, path in (
        ("GET", "/api/keys"),
        ("POST", "/api/keys"),
        ("POST", "/api/keys/k1/revoke"),
    ):
        response = await api.client.request(method, path, headers=headers, json={"serial": "A-1"})
        assert response.status_code == 403, path
        assert response.json() == {"detail": "only a vendor admin may do this"}


async def test_revoke_unknown_key_is_404(api: Api) -> None:
    response = await api.client.post("/api/keys/nope/revoke", headers=await api.headers(ADMIN))
    assert response.status_code == 404
    assert response.json() == {"detail": "no key nope"}
    weird = await api.client.post("/api/keys/a%00b/revoke", headers=await api.headers(ADMIN))
    assert weird.status_code == 400


SEALED = "Kx7pQ2mN9vR4tW8z"


async def _sealed_key(api: Api, password: str = SEALED) -> str:
    _, claims = await api.authority.issue_key("ACME-9")
    sealed = seal(password, api.seal_key.public(), serial="ACME-9", grant_id=claims.key_id)
    await api.store.passwords.put(
        key_id=claims.key_id, serial="ACME-9", sealed=sealed, now=api.clock.now()
    )
    return claims.key_id


async def test_reveal_password_is_audited(api: Api) -> None:
    key_id = await _sealed_key(api)
    await api.add_engineer("alice")
    response = await api.client.post(
        f"/api/keys/{key_id}/password", headers=await api.headers("alice")
    )
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert response.json() == {
        "key_id": key_id,
        "serial": "ACME-9",
        "account": "tether-support",
        "password": "Kx7pQ2mN9vR4tW8z",
    }
    await api.client.post(f"/api/keys/{key_id}/password", headers=await api.headers(ADMIN))
    assert await api.events("password.revealed") == [
        {"engineer": "alice", "key_id": key_id, "serial": "ACME-9"},
        {"engineer": ADMIN, "key_id": key_id, "serial": "ACME-9"},
    ]
    assert "Kx7pQ2mN9vR4tW8z" not in await api.audit_text()


async def test_reveal_needs_a_session_and_a_sealed_password(api: Api) -> None:
    key_id = await _sealed_key(api)
    anonymous = await api.client.post(f"/api/keys/{key_id}/password")
    assert anonymous.status_code == 401
    headers = await api.headers(ADMIN)
    _, other = await api.authority.issue_key("ACME-8")
    none_sent = await api.client.post(f"/api/keys/{other.key_id}/password", headers=headers)
    assert none_sent.status_code == 404
    assert "no password was sent" in none_sent.json()["detail"]
    unknown = await api.client.post("/api/keys/unknown/password", headers=headers)
    assert unknown.status_code == 404
    assert await api.events("password.revealed") == []


async def test_reveal_refuses_a_password_sealed_for_another_grant(api: Api) -> None:
    _, claims = await api.authority.issue_key("ACME-9")
    sealed = seal("secretsecret", api.seal_key.public(), serial="ACME-9", grant_id="other-key")
    await api.store.passwords.put(
        key_id=claims.key_id, serial="ACME-9", sealed=sealed, now=api.clock.now()
    )
    response = await api.client.post(
        f"/api/keys/{claims.key_id}/password", headers=await api.headers(ADMIN)
    )
    assert response.status_code == 409
    assert "belongs to another machine or grant" in response.json()["detail"]
    assert await api.events("password.revealed") == []


async def test_reveal_is_refused_when_the_audit_log_cannot_be_written(api: Api) -> None:
    key_id = await _sealed_key(api)
    headers = await api.headers(ADMIN)
    # Appending now fails: the audit table is not where the service looks for it.
    async with api.store._db.write("hiding the audit table") as session:
        await session.execute(text("ALTER TABLE audit_events RENAME TO audit_hidden"))
    try:
        response = await api.client.post(f"/api/keys/{key_id}/password", headers=headers)
    finally:
        async with api.store._db.write("restoring the audit table") as session:
            await session.execute(text("ALTER TABLE audit_hidden RENAME TO audit_events"))
    assert response.status_code == 503
    assert "audit log" in response.json()["detail"]
    assert "password" not in response.json()
