"""Admin endpoints: engineers, machine re-binds; and the live tether view."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tether.store import RevocationKind

from .conftest import ADMIN, PASSWORD, Api


async def test_add_list_and_login_as_new_engineer(api: Api) -> None:
    headers = await api.headers(ADMIN)
    added = await api.client.post(
        "/api/engineers", headers=headers, json={"name": "alice", "password": PASSWORD}
    )
    assert added.status_code == 201, added.text
    assert added.json() == {
        "name": "alice",
        "admin": False,
        "active": True,
        "totp_enabled": False,
        "created_at": added.json()["created_at"],
    }
    listed = (await api.client.get("/api/engineers", headers=headers)).json()
    assert [e["name"] for e in listed] == ["alice", ADMIN]
    assert all(set(e) == {"name", "admin", "active", "totp_enabled", "created_at"} for e in listed)
    await api.login("alice")
    creds = await api.store.engineers.credentials("alice")
    assert creds is not None
    assert creds.password_hash is not None
    assert creds.password_hash.startswith("$argon2id$")
    assert PASSWORD not in await api.audit_text()
    assert await api.events("engineer.added") == [
        {"engineer": "alice", "admin": False, "by": ADMIN}
    ]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"name": "alice", "password": "short"}, 400, "at least 12 characters"),
        ({"name": "root", "password": PASSWORD}, 400, "reserved"),
        ({"name": "tether-support", "password": PASSWORD}, 400, "reserved"),
        ({"name": "Alice", "password": PASSWORD}, 400, "name: use"),
        ({"name": ADMIN, "password": PASSWORD}, 409, "already exists"),
        ({"name": "alice", "password": "nul\u0000in the middle"}, 400, "cannot be stored"),
    ],
)
async def test_add_refusals(api: Api, body: dict[str, object], status: int, words: str) -> None:
    response = await api.client.post("/api/engineers", headers=await api.headers(ADMIN), json=body)
    assert response.status_code == status
    assert words in response.json()["detail"]


async def test_disable_enable_remove(api: Api) -> None:
    await api.add_engineer("alice")
    alice = await api.headers("alice")
    headers = await api.headers(ADMIN)
    disabled = await api.client.post(
        "/api/engineers/alice/disable", headers=headers, json={"reason": "on leave"}
    )
    assert disabled.status_code == 200
    assert disabled.json()["active"] is False
    (revocation,) = await api.store.revocations.since(0)
    assert (revocation.kind, revocation.subject, revocation.reason) == (
        RevocationKind.ENGINEER,
        "alice",
        "on leave",
    )
    assert (await api.client.get("/api/me", headers=alice)).status_code == 401  # sessions ended
    enabled = await api.client.post("/api/engineers/alice/enable", headers=headers)
    assert enabled.json()["active"] is True
    await api.login("alice")
    removed = await api.client.delete("/api/engineers/alice", headers=headers)
    assert removed.status_code == 204
    assert removed.content == b""
    assert await api.store.engineers.get("alice") is None
    assert [r.reason for r in await api.store.revocations.since(0)] == ["on leave", "removed"]
    for method, path in (
        ("DELETE", "/api/engineers/alice"),
        ("POST", "/api/engineers/alice/disable"),
        ("POST", "/api/engineers/alice/enable"),
    ):
        response = await api.client.request(method, path, headers=headers)
        assert response.status_code == 404, path
        assert response.json() == {"detail": "no engineer alice"}
    assert [e["event"] for e in await _events(api, "engineer.")] == [
        "engineer.disabled",
        "engineer.enabled",
        "engineer.removed",
    ]


async def _events(api: Api, prefix: str) -> list[dict[str, object]]:
    return [
        {"event": e.event, **e.fields}
        for e in await api.audit()
        if e.event.startswith(prefix) and e.event not in ("engineer.login", "engineer.added")
    ]


async def test_an_admin_cannot_disable_or_remove_themselves(api: Api) -> None:
    headers = await api.headers(ADMIN)
    for method, path in (
        ("POST", f"/api/engineers/{ADMIN}/disable"),
        ("DELETE", f"/api/engineers/{ADMIN}"),
    ):
        response = await api.client.request(method, path, headers=headers)
        assert response.status_code == 409
        assert "your own account" in response.json()["detail"]
    assert (await api.client.get("/api/me", headers=headers)).status_code == 200


async def test_engineer_endpoints_are_admin_only(api: Api) -> None:
    await api.add_engineer("alice")
    headers = await api.headers("alice")
    for method, path in (
        ("GET", "/api/engineers"),
        ("POST", "/api/engineers"),
        ("POST", f"/api/engineers/{ADMIN}/disable"),
        ("POST", f"/api/engineers/{ADMIN}/enable"),
        ("DELETE", f"/api/engineers/{ADMIN}"),
        ("POST", "/api/machines/ACME-1/rebind"),
        ("GET", "/api/audit/heads"),
    ):
        response = await api.client.request(
            method, path, headers=headers, json={"name": "eve", "password": PASSWORD, "reason": "x"}
        )
        assert response.status_code == 403, path
    assert await api.store.engineers.get("eve") is None


async def test_machine_rebind(api: Api) -> None:
    headers = await api.headers(ADMIN)
    await api.store.machines.bind_first_use("ACME-1", "SHA256:old", api.clock.now())
    response = await api.client.post(
        "/api/machines/ACME-1/rebind", headers=headers, json={"reason": "mainboard replaced"}
    )
    assert response.status_code == 204
    machine = await api.store.machines.get("ACME-1")
    assert machine is not None
    assert (machine.machine_key, machine.rebound_by) == (None, ADMIN)
    rebound = await api.store.machines.bind_first_use("ACME-1", "SHA256:new", api.clock.now())
    assert rebound.machine_key == "SHA256:new"
    assert await api.events("machine.rebound") == [
        {"serial": "ACME-1", "by": ADMIN, "reason": "mainboard replaced"}
    ]
    unknown = await api.client.post(
        "/api/machines/ACME-2/rebind", headers=headers, json={"reason": "x"}
    )
    assert unknown.status_code == 404
    no_reason = await api.client.post("/api/machines/ACME-1/rebind", headers=headers, json={})
    assert no_reason.status_code == 400
    assert "reason: Field required" in no_reason.json()["detail"]


async def test_tethers_show_ports_expiry_description_and_engineers(api: Api) -> None:
    _, claims = await api.authority.issue_key("ACME-1", description="slow disk")
    await api.store.tethers.register(
        serial="ACME-1",
        key_id=claims.key_id,
        relay_id="relay-1",
        relay_address="127.0.0.1:2222",
        machine_key="SHA256:m",
        now=api.clock.now(),
    )
    await api.store.channels.open(
        relay_id="relay-1", serial="ACME-1", engineer="bob", port=22, now=api.clock.now()
    )
    await api.store.channels.open(
        relay_id="relay-2", serial="acme-1", engineer="alice", port=443, now=api.clock.now()
    )
    await api.store.channels.open(
        relay_id="relay-1", serial="ACME-2", engineer="carol", port=22, now=api.clock.now()
    )
    await api.add_engineer("alice")
    (tether,) = (await api.client.get("/api/tethers", headers=await api.headers("alice"))).json()
    assert tether == {
        "serial": "ACME-1",
        "key_id": claims.key_id,
        "relay_id": "relay-1",
        "since": tether["since"],
        "ports": [22, 80, 443],
        "expires_at": tether["expires_at"],
        "description": "slow disk",
        "engineers": ["alice", "bob"],
        "limits": None,  # the machine reported none (this one registered directly)
    }
    assert (await api.client.get("/api/tethers")).status_code == 401


async def test_free_text_with_control_characters_or_keys_is_handled(api: Api) -> None:
    headers = await api.headers(ADMIN)
    _, claims = await api.authority.issue_key("ACME-1")
    bad = await api.client.post(
        f"/api/keys/{claims.key_id}/revoke", headers=headers, json={"reason": "nul \u0000 here"}
    )
    assert bad.status_code == 400
    assert "control character" in bad.json()["detail"]
    broken = await api.client.post(
        f"/api/keys/{claims.key_id}/revoke",
        headers={**headers, "Content-Type": "application/json"},
        content=b'{"reason": "lone \\ud800 surrogate"}',
    )
    assert broken.status_code == 400
    pasted = await api.client.post(
        f"/api/keys/{claims.key_id}/revoke",
        headers=headers,
        json={"reason": "dup of v4.public.eyJhbGciOi"},
    )
    assert pasted.status_code == 200
    (entry,) = await api.events("key.revoked")
    assert entry["reason"] == "[withheld: looked like a key]"
    api.clock.advance(timedelta(seconds=1))


async def test_audit_heads_show_which_machine_log_was_rewritten(api: Api) -> None:
    now = api.clock.now()
    await api.store.audit.put_head(
        serial="S1", machine_key="SHA256:a", seq=3, hash="a" * 64, now=now
    )
    await api.store.audit.put_head(
        serial="S2", machine_key="SHA256:b", seq=7, hash="b" * 64, now=now
    )
    await api.store.audit.flag_head(
        serial="S2",
        machine_key="SHA256:b",
        seq=8,
        hash="c" * 64,
        problem="entry 7 differs",
        now=now,
    )
    headers = await api.headers(ADMIN)

    every = await api.client.get("/api/audit/heads", headers=headers)
    flagged = await api.client.get("/api/audit/heads?mismatched=true", headers=headers)

    assert every.status_code == 200
    assert [(h["serial"], h["seq"], h["mismatches"]) for h in every.json()] == [
        ("S1", 3, 0),
        ("S2", 8, 1),
    ]
    (only,) = flagged.json()
    assert (only["serial"], only["mismatch"], only["machine_key"]) == (
        "S2",
        "entry 7 differs",
        "SHA256:b",
    )
