"""`tether login` and the vendor client against the stub service in process (no sockets).

The stub (tests/integration/engineer/stub_api.py) implements the api_models contract;
httpx's ASGI transport runs it inside the test, so these stay unit-fast.
"""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.integration.engineer.stub_api import StubVendorAPI
from tether.certs import EngineerCertificate, sign_engineer_certificate
from tether.clock import SYSTEM_CLOCK
from tether.engineer.client import (
    LoginRefused,
    SessionExpired,
    VendorClient,
    VendorUnreachable,
    check_vendor_url,
)
from tether.engineer.login import LoginResult, Prompts, login
from tether.engineer.state import EngineerState
from tether.errors import BadInput, NotReady
from tether.sshlib import asyncssh

CA = asyncssh.generate_private_key("ssh-ed25519")
RELAY_KEY = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
URL = "http://vendor.test"
PASSWORD = "correct horse battery staple"


async def _sign(name: str, key: asyncssh.SSHKey, ttl: timedelta) -> EngineerCertificate:
    return sign_engineer_certificate(CA, key, engineer=name, now=datetime.now(UTC), ttl=ttl)


@pytest.fixture
def stub() -> StubVendorAPI:
    api = StubVendorAPI(sign=_sign, relay="relay.test:2222", relay_host_key=RELAY_KEY)
    api.add("alice", PASSWORD)
    api.add("bob", PASSWORD, totp="123456")
    return api


class Answers:
    """Prompt answers, recording what was asked."""

    def __init__(self, password: str = PASSWORD, totp: str = "123456") -> None:
        self.password, self.totp = password, totp
        self.asked: list[str] = []

    def prompts(self) -> Prompts:
        def ask_password(prompt: str) -> str:
            self.asked.append(prompt)
            return self.password

        def ask_totp(prompt: str) -> str:
            self.asked.append(prompt)
            return self.totp

        return Prompts(password=ask_password, totp=ask_totp)


async def _login(
    state: EngineerState,
    transport: httpx.AsyncBaseTransport,
    *,
    name: str = "alice",
    answers: Answers | None = None,
    ttl: timedelta = timedelta(hours=8),
    key_path: Path | None = None,
) -> LoginResult:
    return await login(
        state,
        vendor=URL,
        name=name,
        key_path=key_path,
        ttl=ttl,
        prompts=(answers or Answers()).prompts(),
        clock=SYSTEM_CLOCK,
        transport=transport,
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_login_stores_token_key_certificate_known_hosts_and_settings(
    tmp_path: Path, stub: StubVendorAPI
) -> None:
    state = EngineerState(tmp_path / "state")
    answers = Answers()
    result = await _login(state, httpx.ASGITransport(app=stub.app), answers=answers)

    assert answers.asked == [f"Password for alice at {URL}"]
    assert result.key.generated
    assert _mode(state.root) == 0o700
    assert _mode(state.token_path) == 0o600
    assert state.token_path.read_text().strip() in stub.tokens
    assert _mode(state.default_key_path) == 0o600
    assert asyncssh.read_private_key(state.default_key_path)
    cert_path = state.root / "id_ed25519-cert.pub"
    assert result.settings.certificate == cert_path
    assert cert_path.read_text().startswith("ssh-ed25519-cert-v01@openssh.com ")
    relay_words = RELAY_KEY.split()
    assert state.known_hosts_path.read_text() == (
        f"[relay.test]:2222 {relay_words[0]} {relay_words[1]}\n"
    )
    settings = state.load_settings()
    assert (settings.engineer, settings.relay, settings.support_account) == (
        "alice",
        "relay.test:2222",
        "tether-support",
    )
    summary = result.summary()
    assert summary.startswith("Logged in as alice; certificate valid until ")
    assert summary.endswith(("(in 7h 59m)", "(in 8h)"))
    token = state.token_path.read_text().strip()
    assert token not in state.settings_path.read_text()


async def test_second_login_reuses_the_key(tmp_path: Path, stub: StubVendorAPI) -> None:
    state = EngineerState(tmp_path / "state")
    first = await _login(state, httpx.ASGITransport(app=stub.app))
    second = await _login(state, httpx.ASGITransport(app=stub.app))
    assert not second.key.generated
    assert second.key.public_line == first.key.public_line


async def test_login_with_own_key(tmp_path: Path, stub: StubVendorAPI) -> None:
    own = tmp_path / "mykey"
    key = asyncssh.generate_private_key("ssh-ed25519")
    own.write_bytes(key.export_private_key())
    own.chmod(0o600)
    state = EngineerState(tmp_path / "state")
    result = await _login(state, httpx.ASGITransport(app=stub.app), key_path=own)
    assert not result.key.generated
    assert not state.default_key_path.exists()
    assert result.settings.key == own
    assert result.settings.certificate == state.root / "mykey-cert.pub"


async def test_login_refuses_a_public_key_as_key(tmp_path: Path, stub: StubVendorAPI) -> None:
    pub = tmp_path / "k.pub"
    pub.write_text(RELAY_KEY)
    with pytest.raises(BadInput, match="give the private key file"):
        await _login(EngineerState(tmp_path / "s"), httpx.ASGITransport(app=stub.app), key_path=pub)


async def test_totp_is_asked_when_the_service_requires_it(
    tmp_path: Path, stub: StubVendorAPI
) -> None:
    answers = Answers(totp="123 456")
    state = EngineerState(tmp_path / "state")
    await _login(state, httpx.ASGITransport(app=stub.app), name="bob", answers=answers)
    assert answers.asked == [f"Password for bob at {URL}", "TOTP code for bob"]
    assert state.load_settings().engineer == "bob"


async def test_wrong_totp_is_refused_in_the_services_words(
    tmp_path: Path, stub: StubVendorAPI
) -> None:
    with pytest.raises(LoginRefused, match="wrong TOTP code"):
        await _login(
            EngineerState(tmp_path / "s"),
            httpx.ASGITransport(app=stub.app),
            name="bob",
            answers=Answers(totp="000000"),
        )


async def test_wrong_password_is_refused_and_nothing_is_stored(
    tmp_path: Path, stub: StubVendorAPI
) -> None:
    state = EngineerState(tmp_path / "state")
    with pytest.raises(LoginRefused) as caught:
        await _login(state, httpx.ASGITransport(app=stub.app), answers=Answers(password="nope"))
    assert str(caught.value) == (
        "the vendor service refused the login as alice: wrong name or password"
    )
    assert caught.value.exit_code == 1
    assert not state.token_path.exists()
    assert not state.settings_path.exists()


@pytest.mark.parametrize("ttl", [timedelta(days=7, seconds=1), timedelta(days=30)])
async def test_ttl_over_seven_days_is_bad_input(
    tmp_path: Path, stub: StubVendorAPI, ttl: timedelta
) -> None:
    with pytest.raises(BadInput, match="at most 7 days"):
        await _login(EngineerState(tmp_path / "s"), httpx.ASGITransport(app=stub.app), ttl=ttl)


async def test_unreachable_vendor_names_the_url(tmp_path: Path) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    with pytest.raises(VendorUnreachable) as caught:
        await _login(EngineerState(tmp_path / "s"), httpx.MockTransport(refuse))
    assert str(caught.value) == (
        f"cannot reach the vendor service at {URL} ([Errno 111] Connection refused); "
        "check the URL and your network"
    )


async def test_tls_failure_is_told_apart(tmp_path: Path) -> None:
    def tls(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] self-signed", request=request)

    with pytest.raises(VendorUnreachable, match=r"^TLS with the vendor service"):
        await _login(EngineerState(tmp_path / "s"), httpx.MockTransport(tls))


async def test_a_url_that_is_not_the_vendor_service(tmp_path: Path) -> None:
    def web_page(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>welcome</html>")

    with pytest.raises(NotReady, match="did not answer with JSON"):
        await _login(EngineerState(tmp_path / "s"), httpx.MockTransport(web_page))


async def test_certificate_for_another_key_is_not_stored(
    tmp_path: Path, stub: StubVendorAPI
) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").convert_to_public()

    async def wrong(name: str, key: asyncssh.SSHKey, ttl: timedelta) -> EngineerCertificate:
        return await _sign(name, other, ttl)

    stub.sign = wrong
    state = EngineerState(tmp_path / "s")
    with pytest.raises(NotReady, match="a certificate for another key"):
        await _login(state, httpx.ASGITransport(app=stub.app))
    assert not state.settings_path.exists()


# --- the client beyond login -----------------------------------------------------------


async def test_expired_session_tells_how_to_log_in_and_never_shows_the_token(
    stub: StubVendorAPI,
) -> None:
    token = "tok-" + "s3cr3t" * 5
    async with VendorClient(URL, token=token, transport=httpx.ASGITransport(app=stub.app)) as c:
        with pytest.raises(SessionExpired) as caught:
            await c.tethers()
    assert f"run `tether login --vendor {URL}` again" in str(caught.value)
    assert token not in str(caught.value)


async def test_token_travels_as_bearer_header_only() -> None:
    calls: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, json=[])

    async with VendorClient(URL, token="abc", transport=httpx.MockTransport(answer)) as client:
        assert await client.tethers() == []
    assert calls[0].headers["authorization"] == "Bearer abc"
    assert "abc" not in str(calls[0].url)


async def test_unknown_fields_from_a_newer_service_are_ignored() -> None:
    body = [
        {
            "serial": "M-1",
            "key_id": "k1",
            "relay_id": "r1",
            "since": "2030-06-01T12:00:00Z",
            "ports": [22],
            "expires_at": "2030-06-02T12:00:00Z",
            "description": None,
            "engineers": [],
            "new_field": 1,
        }
    ]
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=body))
    async with VendorClient(URL, token="t", transport=transport) as client:
        (tether,) = await client.tethers()
    assert tether.serial == "M-1"


async def test_server_messages_are_cleaned_of_control_characters() -> None:
    transport = httpx.MockTransport(
        lambda request: httpx.Response(403, json={"detail": "no\x1b[31m way\nreally"})
    )
    async with VendorClient(URL, token="t", transport=transport) as client:
        with pytest.raises(Exception, match=r"refused: no\?\[31m way really$"):
            await client.tethers()


@pytest.mark.parametrize(
    ("url", "normal", "warns"),
    [
        ("https://tether.example.com/", "https://tether.example.com", False),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080", False),
        ("http://localhost:8080/", "http://localhost:8080", False),
        ("http://[::1]:8080", "http://[::1]:8080", False),
        ("http://tether.example.com", "http://tether.example.com", True),
        ("http://10.0.0.5:8080", "http://10.0.0.5:8080", True),
    ],
)
def test_vendor_url_checks(url: str, normal: str, warns: bool) -> None:
    got, warning = check_vendor_url(url)
    assert got == normal
    assert (warning is not None) == warns
    if warning:
        assert "does not use TLS" in warning


@pytest.mark.parametrize(
    "url", ["tether.example.com", "ftp://x", "https://", "https://u:p@x", "http://x:99999"]
)
def test_bad_vendor_urls(url: str) -> None:
    with pytest.raises(BadInput, match="invalid vendor URL"):
        check_vendor_url(url)
