"""One-click cases over the API: list, approve (a request key is issued), deny."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from tether.keys import KeyKind, parse_key
from tether.store import CaseStatus

from .conftest import ADMIN, Api


async def _open(
    api: Api,
    serial: str = "ACME-7",
    description: str = "disk full",
    machine_key: str = "SHA256:machine",
) -> int:
    case = await api.store.cases.open(
        serial=serial, machine_key=machine_key, description=description, now=api.clock.now()
    )
    return case.id


async def test_list_newest_first_with_the_machine_fingerprint_but_no_key_text(api: Api) -> None:
    first = await _open(api, description="first")
    second = await _open(api, "acme-8", "second")
    await api.add_engineer("alice")
    listed = (await api.client.get("/api/cases", headers=await api.headers("alice"))).json()
    assert [c["id"] for c in listed] == [second, first]
    assert listed[0] == {
        "id": second,
        "serial": "ACME-8",
        "machine_key": "SHA256:machine",
        "machine": "new",
        "description": "second",
        "status": "pending",
        "created_at": listed[0]["created_at"],
        "decided_by": None,
        "decided_at": None,
        "key_id": None,
        "limits": None,
    }


async def test_engineer_approves_a_case_and_a_request_key_is_issued(api: Api) -> None:
    case_id = await _open(api, description="printer on fire")
    await api.add_engineer("alice")
    headers = await api.headers("alice")
    response = await api.client.post(f"/api/cases/{case_id}/approve", headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["decided_by"]) == ("issued", "alice")
    # The engineer approved it for the machine key it names: that binds the serial.
    assert (body["machine_key"], body["machine"]) == ("SHA256:machine", "known")
    owner = await api.store.machines.get("ACME-7")
    assert owner is not None
    assert owner.machine_key == "SHA256:machine"
    stored = await api.store.cases.get(case_id)
    assert stored is not None
    assert stored.key_text is not None
    claims = parse_key(
        stored.key_text,
        [api.authority.signing_key.verify_key()],
        now=api.clock.now(),
        serial="ACME-7",
    )
    assert claims.key_id == body["key_id"]
    assert claims.kind is KeyKind.REQUEST
    assert claims.expires_at - claims.issued_at == timedelta(days=21)
    key = await api.store.keys.get(claims.key_id)
    assert key is not None
    assert (key.description, key.issued_by) == ("printer on fire", "alice")
    assert await api.events("case.approved") == [
        {
            "case_id": case_id,
            "serial": "ACME-7",
            "key_id": claims.key_id,
            "machine": "SHA256:machine",
            "by": "alice",
        }
    ]
    again = await api.client.post(f"/api/cases/{case_id}/approve", headers=headers)
    assert again.status_code == 409
    assert again.json() == {"detail": f"case {case_id} is already issued; it can no longer change"}
    deny = await api.client.post(f"/api/cases/{case_id}/deny", headers=headers, json={})
    assert deny.status_code == 409


async def test_deny_with_and_without_a_reason(api: Api) -> None:
    one, two = await _open(api), await _open(api)
    headers = await api.headers(ADMIN)
    denied = await api.client.post(
        f"/api/cases/{one}/deny", headers=headers, json={"reason": "unknown customer"}
    )
    assert denied.status_code == 200
    assert (denied.json()["status"], denied.json()["key_id"]) == ("denied", None)
    stored = await api.store.cases.get(one)
    assert stored is not None
    assert stored.deny_reason == "unknown customer"
    default = await api.client.post(f"/api/cases/{two}/deny", headers=headers)
    assert default.status_code == 200
    stored = await api.store.cases.get(two)
    assert stored is not None
    assert stored.deny_reason == "denied by vendor"
    assert [e["reason"] for e in await api.events("case.denied")] == [
        "unknown customer",
        "denied by vendor",
    ]
    assert await api.store.keys.list() == []


async def test_unknown_and_out_of_range_cases(api: Api) -> None:
    headers = await api.headers(ADMIN)
    for path in ("/api/cases/999/approve", "/api/cases/999/deny"):
        response = await api.client.post(path, headers=headers)
        assert response.status_code == 404
        assert response.json() == {"detail": "no case 999"}
    for bad in ("0", "-1", "abc", str(2**31), str(10**30)):
        response = await api.client.post(f"/api/cases/{bad}/approve", headers=headers)
        assert response.status_code == 400, bad
    cancelled = await _open(api)
    await api.store.cases.cancel(cancelled, api.clock.now())
    response = await api.client.post(f"/api/cases/{cancelled}/approve", headers=headers)
    assert response.status_code == 409
    assert "already cancelled" in response.json()["detail"]


async def test_racing_approvals_issue_one_key_and_revoke_the_loser(api: Api) -> None:
    case_id = await _open(api)
    await api.add_engineer("alice")
    await api.add_engineer("bob")
    alice, bob = await api.headers("alice"), await api.headers("bob")
    responses = await asyncio.gather(
        *[
            api.client.post(f"/api/cases/{case_id}/approve", headers=h)
            for h in (alice, bob, alice, bob)
        ]
    )
    codes = sorted(r.status_code for r in responses)
    assert codes[0] == 200
    assert set(codes[1:]) == {409}
    assert codes.count(200) == 1
    stored = await api.store.cases.get(case_id)
    assert stored is not None
    assert stored.status is CaseStatus.ISSUED
    live = [k for k in await api.store.keys.list() if not k.revoked]
    assert [k.key_id for k in live] == [stored.key_id]


async def test_cases_need_a_session(api: Api) -> None:
    case_id = await _open(api)
    assert (await api.client.get("/api/cases")).status_code == 401
    assert (await api.client.post(f"/api/cases/{case_id}/approve")).status_code == 401
    assert (await api.client.post(f"/api/cases/{case_id}/deny")).status_code == 401


async def test_a_case_from_another_machine_than_the_bound_one_is_not_approved(api: Api) -> None:
    """Approving never hands a bound serial's key to a different machine key."""
    await api.store.machines.bind_first_use("ACME-7", "SHA256:real", api.clock.now())
    case_id = await _open(api, machine_key="SHA256:impostor")
    await api.add_engineer("alice")
    headers = await api.headers("alice")
    listed = (await api.client.get("/api/cases", headers=headers)).json()
    assert (listed[0]["machine_key"], listed[0]["machine"]) == ("SHA256:impostor", "other")
    response = await api.client.post(f"/api/cases/{case_id}/approve", headers=headers)
    assert response.status_code == 409
    assert response.json()["detail"].startswith(
        "serial ACME-7 is bound to another machine (SHA256:real), but case "
        f"{case_id} came from SHA256:impostor: if the machine was replaced, re-bind it first"
    )
    stored = await api.store.cases.get(case_id)
    assert stored is not None
    assert (stored.status, stored.key_text) == (CaseStatus.PENDING, None)
    assert await api.store.keys.list() == []
