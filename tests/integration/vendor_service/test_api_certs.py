"""POST /api/certificates: an engineer gets their own public key signed by the vendor CA."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from tether.sshlib import asyncssh

from .conftest import Api


def _keypair() -> tuple[asyncssh.SSHKey, str]:
    key = asyncssh.generate_private_key("ssh-ed25519", comment="alice@laptop")
    return key, key.export_public_key().decode()


async def test_sign_own_key(api: Api) -> None:
    await api.add_engineer("alice")
    headers = await api.headers("alice")
    _, public = _keypair()
    response = await api.client.post(
        "/api/certificates", headers=headers, json={"public_key": public, "ttl_hours": 2}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    cert: Any = asyncssh.import_certificate(body["certificate"])  # untyped attributes
    assert cert._key_id == "alice"
    assert cert.principals == ["alice", "tether-support"]
    assert cert.key.public_data == asyncssh.import_public_key(public).public_data
    assert body["principals"] == ["alice", "tether-support"]
    after = datetime.fromisoformat(body["valid_after"])
    before = datetime.fromisoformat(body["valid_before"])
    assert before - after == timedelta(hours=2, minutes=1)  # backdated one minute
    assert body["relay"] == "127.0.0.1:2222"
    host_key = (api.config.data_dir / "relay_host_key.pub").read_text().strip()
    assert body["relay_host_key"] == host_key
    assert body["support_account"] == "tether-support"
    (signed,) = await api.events("cert.signed")
    assert signed["engineer"] == "alice"
    assert signed["cert_serial"] == cert._serial


async def test_default_ttl_is_eight_hours_and_at_most_seven_days(api: Api) -> None:
    await api.add_engineer("alice")
    headers = await api.headers("alice")
    _, public = _keypair()
    default = await api.client.post(
        "/api/certificates", headers=headers, json={"public_key": public}
    )
    body = default.json()
    span = datetime.fromisoformat(body["valid_before"]) - datetime.fromisoformat(
        body["valid_after"]
    )
    assert span == timedelta(hours=8, minutes=1)
    too_long = await api.client.post(
        "/api/certificates", headers=headers, json={"public_key": public, "ttl_hours": 169}
    )
    assert too_long.status_code == 400
    assert "ttl_hours" in too_long.json()["detail"]
    tiny = await api.client.post(
        "/api/certificates", headers=headers, json={"public_key": public, "ttl_hours": 1e-9}
    )
    assert tiny.status_code == 400
    assert "at least one minute" in tiny.json()["detail"]


async def test_private_key_certificate_and_garbage_are_refused_clearly(api: Api) -> None:
    await api.add_engineer("alice")
    headers = await api.headers("alice")
    key, public = _keypair()
    private = key.export_private_key().decode()
    refused = await api.client.post(
        "/api/certificates", headers=headers, json={"public_key": private}
    )
    assert refused.status_code == 400
    assert "PRIVATE key" in refused.json()["detail"]
    assert "BEGIN" not in refused.json()["detail"]
    cert = (
        await api.client.post("/api/certificates", headers=headers, json={"public_key": public})
    ).json()["certificate"]
    as_cert = await api.client.post("/api/certificates", headers=headers, json={"public_key": cert})
    assert as_cert.status_code == 400
    assert "is an SSH certificate; send the plain public key" in as_cert.json()["detail"]
    for junk in ("ssh-ed25519 AAAAnotbase64!!", "x" * 100, "ssh-rsa " + "A" * 40, "\u0000" * 20):
        response = await api.client.post(
            "/api/certificates", headers=headers, json={"public_key": junk}
        )
        assert response.status_code == 400, junk
        assert isinstance(response.json()["detail"], str)


async def test_the_ca_key_itself_is_refused(api: Api) -> None:
    headers = await api.headers("boss")
    ca_public = (api.config.data_dir / "engineer_ca.pub").read_text()
    response = await api.client.post(
        "/api/certificates", headers=headers, json={"public_key": ca_public}
    )
    assert response.status_code == 400
    assert "CA's own key" in response.json()["detail"]


async def test_certificates_need_a_session(api: Api) -> None:
    _, public = _keypair()
    response = await api.client.post("/api/certificates", json={"public_key": public})
    assert response.status_code == 401
