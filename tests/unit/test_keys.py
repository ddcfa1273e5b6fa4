"""Tether keys: issue, parse, every way a pasted key can be wrong, and PASETO interop.

SPEC invariant covered here: "A key works once, for its serial only; a tampered,
expired, reused or foreign key is refused with a clear message and changes nothing"
(the offline half: signature, serial, validity window, signer).
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pyseto
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tether.clock import FrozenClock
from tether.errors import BadInput
from tether.keys import (
    MAX_KEY_LIFETIME,
    KeyExpiredError,
    KeyGarbledError,
    KeyKind,
    KeyNotYetValidError,
    KeyTamperedError,
    KeyTruncatedError,
    SigningKey,
    TetherKeyClaims,
    TetherKeyError,
    UnknownSignerError,
    VerifyKey,
    WrongSerialError,
    check_serial,
    issue_key,
    parse_address,
    parse_key,
    parse_ports,
)

T0 = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)
FINGERPRINT = "SHA256:" + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456"
RELAY = "relay.example.com:2222"
HEADER = "v4.public."
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

# One signing key for the whole module: generating Ed25519 keys is cheap, but a
# fixed key keeps failures reproducible within a run.
VENDOR = SigningKey.generate()
OTHER_VENDOR = SigningKey.generate()


def issue(
    serial: str = "SN-1001",
    *,
    signing_key: SigningKey = VENDOR,
    now: datetime = T0,
    lifetime: timedelta = timedelta(days=14),
    **kw: Any,
) -> tuple[str, TetherKeyClaims]:
    args: dict[str, Any] = {
        "relay": RELAY,
        "relay_host_key": FINGERPRINT,
        "ports": (443, 22, 80),
        "vendor": "acme",
    }
    args.update(kw)
    return issue_key(signing_key, serial=serial, now=now, lifetime=lifetime, **args)


def parse(text: str, *, now: datetime = T0, **kw: Any) -> TetherKeyClaims:
    return parse_key(text, [VENDOR.verify_key()], now=now, **kw)


def split(token: str) -> tuple[bytes, bytes, str]:
    """(claims JSON, signature, footer text) of a token we issued."""
    body, _, footer = token[len(HEADER) :].partition(".")
    payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    return payload[:-64], payload[-64:], footer


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def join(message: bytes, signature: bytes, footer: str) -> str:
    return HEADER + b64(message + signature) + "." + footer


def public_pem(key: SigningKey) -> bytes:
    return key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def claims_json(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "jti": "key-from-pyseto",
        "sub": "SN-1001",
        "iss": "acme",
        "iat": "2030-06-01T12:00:00Z",
        "nbf": "2030-06-01T12:00:00Z",
        "exp": "2030-06-15T12:00:00Z",
        "ports": [22, 443],
        "relay": RELAY,
        "relay_hk": FINGERPRINT,
        "kind": "manual",
    }
    body.update(overrides)
    return body


def pyseto_sign(body: dict[str, Any], *, signing_key: SigningKey = VENDOR) -> str:
    """A token signed by the reference implementation, with our footer convention."""
    private = pyseto.Key.new(version=4, purpose="public", key=signing_key.to_pem())
    footer = json.dumps({"kid": signing_key.verify_key().key_id}).encode()
    token = pyseto.encode(private, json.dumps(body).encode(), footer=footer)
    return token.decode()


# --- issue → parse ------------------------------------------------------------------


def test_issued_key_parses_back_to_the_same_claims() -> None:
    token, claims = issue(ports=[443, 22, 80, 22], kind=KeyKind.REQUEST)

    parsed = parse(token, serial="SN-1001")

    assert parsed == claims
    assert token.startswith(HEADER)
    assert parsed.serial == "SN-1001"
    assert parsed.ports == (22, 80, 443)  # sorted, de-duplicated
    assert parsed.kind is KeyKind.REQUEST
    assert parsed.vendor == "acme"
    assert parsed.relay == RELAY
    assert parsed.relay_host_key == FINGERPRINT
    assert parsed.issued_at == parsed.not_before == T0
    assert parsed.expires_at == T0 + timedelta(days=14)


def test_issue_truncates_to_seconds_and_normalises_ipv6_relay() -> None:
    token, claims = issue(now=T0.replace(microsecond=987654), relay="[2001:db8::7]:2222")

    assert claims.issued_at == T0
    assert claims.relay == "[2001:db8::7]:2222"
    assert parse(token).relay == "[2001:db8::7]:2222"


def test_each_issued_key_gets_its_own_key_id_unless_one_is_given() -> None:
    _, first = issue()
    _, second = issue()
    _, chosen = issue(key_id="case-4711")

    assert first.key_id != second.key_id
    assert len(first.key_id) >= 22  # 128 random bits, base64url
    assert chosen.key_id == "case-4711"


def wrap(text: str, width: int) -> list[str]:
    return [text[i : i + width] for i in range(0, len(text), width)]


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda t: "\n".join(wrap(t, 76)), id="wrapped-at-76"),
        pytest.param(lambda t: "\r\n".join(wrap(t, 76)) + "\r\n", id="crlf-wrapped"),
        pytest.param(lambda t: "\n\t".join(wrap(t, 64)), id="wrapped-and-tab-indented"),
        pytest.param(lambda t: "   " + " ".join(wrap(t, 7)) + "  \n", id="spaces-everywhere"),
        pytest.param(lambda t: t[:5] + "\n" + t[5:12] + " \t " + t[12:], id="break-in-header"),
        pytest.param(lambda t: f'"{t}"', id="double-quoted"),
        pytest.param(lambda t: f"'{t}'", id="single-quoted"),
        pytest.param(lambda t: f"<{t}>", id="angle-brackets"),
        pytest.param(lambda t: '"' + "\n".join(wrap(t, 76)) + '"\n', id="quoted-and-wrapped"),
    ],
)
def test_what_email_does_to_a_key_is_harmless(mangle: Any) -> None:
    token, claims = issue()

    assert parse(mangle(token)) == claims


# --- each failure has its own error and says what to do ---------------------------


def assert_bad_input(exc: TetherKeyError) -> None:
    assert isinstance(exc, BadInput)
    assert exc.exit_code == 2


@pytest.mark.parametrize(
    ("text", "advice"),
    [
        ("", "paste the whole tether key"),
        ("   \n\t ", "paste the whole tether key"),
        ("hello", "copy it again"),
        ("https://vendor.example.com/keys/SN-1001", "copy it again"),
        ("k4.public.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "copy it again"),
        ("v2.public.eyJzdWIiOiJTTi0xMDAxIn0", "copy it again"),
    ],
)
def test_text_that_is_no_key_at_all_is_garbled(text: str, advice: str) -> None:
    with pytest.raises(KeyGarbledError) as info:
        parse(text)

    assert advice in str(info.value).lower()
    assert "v4.public." in str(info.value)
    assert_bad_input(info.value)


def test_characters_that_cannot_be_in_a_key_are_garbled() -> None:
    token, _ = issue()
    damaged = token[:40] + "!*" + token[42:]

    with pytest.raises(KeyGarbledError, match="copy it again"):
        parse(damaged)


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param(lambda t: t[:-10], id="last-10-chars-lost"),
        pytest.param(lambda t: t[:-1], id="last-char-lost"),
        pytest.param(lambda t: t[: t.rindex(".") + 20], id="cut-in-footer"),
        pytest.param(lambda t: t[: len(HEADER)], id="right-after-header"),
        pytest.param(lambda t: t[:7], id="inside-header"),
        pytest.param(lambda t: t[:9], id="header-without-dot"),
        pytest.param(lambda t: t[: len(HEADER) + 40], id="cut-early-in-claims"),
    ],
)
def test_a_key_cut_short_is_reported_as_incomplete(cut: Any) -> None:
    token, _ = issue()

    with pytest.raises(KeyTruncatedError) as info:
        parse(cut(token))

    assert "copy all of it" in str(info.value)
    assert_bad_input(info.value)


def test_losing_the_last_email_line_is_reported_as_incomplete() -> None:
    token, _ = issue()
    lines = wrap(token, 76)

    with pytest.raises(KeyTruncatedError):
        parse("\n".join(lines[:-1]))


def test_no_truncation_of_a_key_is_ever_accepted() -> None:
    token, _ = issue()

    for n in range(len(token)):
        with pytest.raises(TetherKeyError) as info:
            parse(token[:n])
        assert info.value.exit_code == 2, n


def test_a_key_cut_anywhere_in_the_claims_is_reported_as_incomplete() -> None:
    token, _ = issue()
    # 41 characters of claims: a length of 1 mod 4, which the parser takes for damage.
    # (A cut after 40 characters is reported correctly, see the test above.)

    with pytest.raises(KeyTruncatedError):
        parse(token[: len(HEADER) + 41])


@pytest.mark.parametrize("keep_dot", [False, True])
def test_a_key_that_lost_its_whole_footer_is_reported_as_incomplete(keep_dot: bool) -> None:
    token, _ = issue()
    dot = token.rindex(".")

    with pytest.raises(KeyTruncatedError):
        parse(token[: dot + 1 if keep_dot else dot])


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda c: {**c, "sub": "SN-1002"}, id="serial-same-length"),
        pytest.param(lambda c: {**c, "sub": "another-machine"}, id="serial-other-length"),
        pytest.param(lambda c: {**c, "exp": "2031-06-01T12:00:00Z"}, id="expiry-extended"),
        pytest.param(lambda c: {**c, "ports": [22, 80, 443, 3306]}, id="port-added"),
        pytest.param(lambda c: {**c, "relay": "evil.example.com:22"}, id="relay-changed"),
    ],
)
def test_a_key_whose_claims_were_changed_is_tampered(change: Any) -> None:
    token, _ = issue()
    message, signature, footer = split(token)
    claims = json.loads(message)
    forged = json.dumps(change(claims), separators=(",", ":"), sort_keys=True).encode()

    with pytest.raises(KeyTamperedError) as info:
        parse(join(forged, signature, footer))

    assert "ask the vendor for a new one" in str(info.value)
    assert_bad_input(info.value)


def test_a_flipped_character_in_the_signature_is_refused() -> None:
    token, _ = issue()
    body_end = token.index(".", len(HEADER))
    # A character well inside the signature (the last 86 characters of the body).
    i = body_end - 40
    flipped = B64URL[B64URL.index(token[i]) ^ 0b100000]

    with pytest.raises((KeyTamperedError, KeyTruncatedError)):
        parse(token[:i] + flipped + token[i + 1 :])


@pytest.mark.parametrize("part", ["signature", "footer"])
def test_every_single_character_change_in_signature_or_footer_is_refused(part: str) -> None:
    token, _ = issue()
    body_end = token.index(".", len(HEADER))
    # Spare the last character of each part: see the xfail test below.
    positions = (
        range(body_end - 85, body_end - 1)
        if part == "signature"
        else range(body_end + 1, len(token) - 1)
    )
    for i in positions:
        flipped = B64URL[B64URL.index(token[i]) ^ 1]
        with pytest.raises(TetherKeyError):
            parse(token[:i] + flipped + token[i + 1 :])


@pytest.mark.parametrize("part", ["signature", "footer"])
def test_changing_the_last_character_of_a_part_is_refused(part: str) -> None:
    # Pick claims whose base64 does not end on a 4-character boundary: the last
    # character then carries unused low bits (the footer always does: 82 characters).
    token = next(
        t
        for t, _ in (issue(vendor=v) for v in ("acme", "acme-", "acme-x"))
        if (t.index(".", len(HEADER)) - len(HEADER)) % 4
    )
    i = token.index(".", len(HEADER)) - 1 if part == "signature" else len(token) - 1
    flipped = B64URL[B64URL.index(token[i]) ^ 1]  # only the lowest bit, never used here
    altered = token[:i] + flipped + token[i + 1 :]
    assert altered != token

    with pytest.raises(TetherKeyError):
        parse(altered)


def test_a_key_signed_by_another_vendor_is_unknown_signer() -> None:
    token, _ = issue(signing_key=OTHER_VENDOR)

    with pytest.raises(UnknownSignerError) as info:
        parse(token)

    assert "vendor key" in str(info.value)
    assert "does not trust" in str(info.value)
    assert_bad_input(info.value)


def test_a_key_signed_by_another_vendor_but_naming_ours_as_signer_is_tampered() -> None:
    foreign, _ = issue(signing_key=OTHER_VENDOR)
    ours, _ = issue()
    message, signature, _ = split(foreign)
    our_footer = ours.rsplit(".", 1)[1]

    with pytest.raises(KeyTamperedError):
        parse(join(message, signature, our_footer))


@pytest.mark.parametrize("other_trusted", [False, True])
def test_a_key_with_another_signers_footer_is_refused(other_trusted: bool) -> None:
    token, _ = issue()
    other, _ = issue(signing_key=OTHER_VENDOR)
    swapped = token.rsplit(".", 1)[0] + "." + other.rsplit(".", 1)[1]
    trusted = [VENDOR.verify_key()] + ([OTHER_VENDOR.verify_key()] if other_trusted else [])

    with pytest.raises(KeyTamperedError if other_trusted else UnknownSignerError):
        parse_key(swapped, trusted, now=T0)


def test_keys_of_any_trusted_vendor_key_are_accepted() -> None:
    """Key rotation: an agent may trust the old and the new vendor key at once."""
    token, claims = issue(signing_key=OTHER_VENDOR)

    assert parse_key(token, [VENDOR.verify_key(), OTHER_VENDOR.verify_key()], now=T0) == claims


def test_an_expired_key_is_refused_with_its_expiry() -> None:
    token, claims = issue(lifetime=timedelta(days=1))
    clock = FrozenClock(T0)
    clock.advance(timedelta(days=1) - timedelta(seconds=1))
    assert parse(token, now=clock.now()) == claims

    clock.advance(timedelta(seconds=1))
    with pytest.raises(KeyExpiredError) as info:
        parse(token, now=clock.now())

    assert "2030-06-02T12:00:00Z" in str(info.value)
    assert "ask the vendor for a new one" in str(info.value)
    assert_bad_input(info.value)


def test_a_key_not_yet_valid_is_refused_beyond_one_minute_of_skew() -> None:
    token, _ = issue()

    with pytest.raises(KeyNotYetValidError) as info:
        parse(token, now=T0 - timedelta(seconds=61))

    assert "2030-06-01T12:00:00Z" in str(info.value)
    assert "clock" in str(info.value)
    assert_bad_input(info.value)


@pytest.mark.parametrize("early", [timedelta(seconds=30), timedelta(seconds=60)])
def test_a_key_a_little_early_is_accepted(early: timedelta) -> None:
    token, claims = issue()

    assert parse(token, now=T0 - early) == claims


def test_a_key_for_another_serial_names_both_serials() -> None:
    token, _ = issue("SN-1001")

    with pytest.raises(WrongSerialError) as info:
        parse(token, serial="SN-2002")

    assert "'SN-1001'" in str(info.value)
    assert "'SN-2002'" in str(info.value)
    assert_bad_input(info.value)


def test_a_signed_key_with_claims_that_are_not_a_tether_key_is_garbled() -> None:
    token = pyseto_sign({"sub": "SN-1001", "exp": "2030-06-15T12:00:00Z"})

    with pytest.raises(KeyGarbledError):
        parse(token)


def test_a_signed_key_claiming_more_than_12_weeks_is_refused() -> None:
    token = pyseto_sign(claims_json(exp="2030-09-01T12:00:00Z"))  # 13 weeks

    with pytest.raises(KeyGarbledError, match="12 weeks"):
        parse(token)


@pytest.mark.parametrize(
    "error",
    [
        KeyGarbledError,
        KeyTruncatedError,
        KeyTamperedError,
        UnknownSignerError,
        KeyExpiredError,
        KeyNotYetValidError,
        WrongSerialError,
    ],
)
def test_every_key_error_is_bad_input_with_exit_code_2(error: type[TetherKeyError]) -> None:
    exc = error("x")

    assert isinstance(exc, TetherKeyError)
    assert_bad_input(exc)


# --- issuing refuses bad requests ---------------------------------------------------


def test_a_key_may_live_exactly_12_weeks() -> None:
    token, claims = issue(lifetime=MAX_KEY_LIFETIME)

    assert claims.expires_at - claims.not_before == timedelta(weeks=12)
    assert parse(token, now=T0 + timedelta(weeks=12) - timedelta(seconds=1)) == claims


@pytest.mark.parametrize(
    "lifetime",
    [timedelta(weeks=12, seconds=1), timedelta(weeks=13), timedelta(0), timedelta(seconds=-1)],
)
def test_issuing_refuses_a_lifetime_outside_zero_to_12_weeks(lifetime: timedelta) -> None:
    with pytest.raises(BadInput) as info:
        issue(lifetime=lifetime)

    assert info.value.exit_code == 2


def test_refusing_a_too_long_lifetime_does_not_claim_the_maximum_was_asked() -> None:
    with pytest.raises(BadInput) as info:
        issue(lifetime=timedelta(weeks=12, hours=1))

    assert "84d was asked" not in str(info.value)


@pytest.mark.parametrize("serial", ["a b", "", "-x", "x" * 65, "x;rm", ".hidden", "a/b"])
def test_issuing_refuses_a_bad_serial(serial: str) -> None:
    with pytest.raises(BadInput, match="invalid serial"):
        issue(serial)


@pytest.mark.parametrize(
    "ports",
    [[0], [65536], [22, 0], list(range(1000, 1017)), [], [True]],
    ids=["zero", "65536", "zero-among-good", "17-ports", "none", "bool"],
)
def test_issuing_refuses_bad_ports(ports: list[int]) -> None:
    with pytest.raises(BadInput):
        issue(ports=ports)


def test_issuing_allows_16_ports() -> None:
    _, claims = issue(ports=range(1000, 1016))

    assert len(claims.ports) == 16


@pytest.mark.parametrize(
    "relay",
    ["relay.example.com", "relay.example.com:0", "relay:70000", "re lay:22", ":22", "::1:22"],
)
def test_issuing_refuses_a_bad_relay_address(relay: str) -> None:
    with pytest.raises(BadInput, match="relay address"):
        issue(relay=relay)


@pytest.mark.parametrize(
    "fingerprint",
    [
        "",
        "SHA256:short",
        "MD5:" + "a" * 43,
        FINGERPRINT + "A",
        FINGERPRINT[:-1] + "=",
        "ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89",
    ],
)
def test_issuing_refuses_a_bad_fingerprint(fingerprint: str) -> None:
    with pytest.raises(BadInput, match="fingerprint"):
        issue(relay_host_key=fingerprint)


@pytest.mark.parametrize(
    "kw",
    [
        {"serial": "SN-1\n"},
        {"relay": "relay\n:2222"},
        {"relay_host_key": FINGERPRINT + "\n"},
    ],
    ids=["serial", "relay", "fingerprint"],
)
def test_issuing_refuses_values_with_a_trailing_newline(kw: dict[str, Any]) -> None:
    with pytest.raises(BadInput):
        issue(**kw)


# --- interop with the reference implementation (pyseto) ----------------------------


def test_our_key_verifies_with_pyseto_and_carries_our_claims() -> None:
    token, claims = issue()
    public = pyseto.Key.new(version=4, purpose="public", key=public_pem(VENDOR))

    decoded = pyseto.decode(public, token)

    assert isinstance(decoded.payload, bytes)
    body = json.loads(decoded.payload)
    assert body["sub"] == "SN-1001"
    assert body["jti"] == claims.key_id
    assert body["exp"] == "2030-06-15T12:00:00Z"
    assert body["nbf"] == body["iat"] == "2030-06-01T12:00:00Z"
    assert body["ports"] == [22, 80, 443]
    assert body["relay"] == RELAY
    assert body["relay_hk"] == FINGERPRINT
    assert body["iss"] == "acme"
    assert isinstance(decoded.footer, bytes)
    assert json.loads(decoded.footer) == {"kid": VENDOR.verify_key().key_id}


def test_pyseto_refuses_our_key_under_another_public_key() -> None:
    token, _ = issue()
    other = pyseto.Key.new(version=4, purpose="public", key=public_pem(OTHER_VENDOR))

    with pytest.raises(pyseto.VerifyError):
        pyseto.decode(other, token)


def test_a_key_signed_by_pyseto_parses() -> None:
    token = pyseto_sign(claims_json(kind="request"))

    claims = parse(token, serial="SN-1001")

    assert claims.key_id == "key-from-pyseto"
    assert claims.serial == "SN-1001"
    assert claims.expires_at == datetime(2030, 6, 15, 12, tzinfo=UTC)
    assert claims.ports == (22, 443)
    assert claims.kind is KeyKind.REQUEST


def test_a_key_without_footer_is_refused_as_incomplete() -> None:
    # Every Tether key names its signer in a footer: without one, the end was cut off.
    private = pyseto.Key.new(version=4, purpose="public", key=VENDOR.to_pem())
    token = pyseto.encode(private, json.dumps(claims_json()).encode()).decode()

    with pytest.raises(KeyTruncatedError, match="incomplete"):
        parse(token)


def test_paserk_and_key_id_match_pyseto() -> None:
    ours = VENDOR.verify_key()
    reference = pyseto.Key.new(version=4, purpose="public", key=public_pem(VENDOR))

    assert ours.to_paserk() == reference.to_paserk()
    assert ours.key_id == reference.to_paserk_id()
    assert ours.key_id.startswith("k4.pid.")
    assert VerifyKey.from_paserk(reference.to_paserk()).raw() == ours.raw()


# --- vendor key files ---------------------------------------------------------------


def test_verify_key_paserk_round_trip_tolerates_line_breaks() -> None:
    text = VENDOR.verify_key().to_paserk()

    assert VerifyKey.from_paserk(text[:20] + "\n  " + text[20:]).raw() == VENDOR.verify_key().raw()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("k4.secret.AAAA", "must start with 'k4.public.'"),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI", "must start with 'k4.public.'"),
        ("k4.public.AAAA", "damaged"),
        ("k4.public.!!!!", "damaged"),
    ],
)
def test_a_bad_vendor_public_key_is_refused(text: str, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        VerifyKey.from_paserk(text)


def test_signing_key_pem_round_trip() -> None:
    again = SigningKey.from_pem(VENDOR.to_pem())

    assert again.verify_key().key_id == VENDOR.verify_key().key_id


def test_signing_key_must_be_an_ed25519_pem() -> None:
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )

    with pytest.raises(BadInput, match="Ed25519"):
        SigningKey.from_pem(ec_pem)
    with pytest.raises(BadInput, match="not a PEM private key"):
        SigningKey.from_pem(b"hello")


# --- helpers shared with config and CLI ---------------------------------------------


@pytest.mark.parametrize(
    ("text", "ports"),
    [
        ("22,80,443", (22, 80, 443)),
        (" 443 , 22 ", (22, 443)),
        ("22,22,", (22,)),
        ("65535", (65535,)),
    ],
)
def test_parse_ports(text: str, ports: tuple[int, ...]) -> None:
    assert parse_ports(text) == ports


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "at least one port"),
        ("ssh", "use numbers separated by commas"),
        ("22;80", "use numbers separated by commas"),
        ("0", "invalid port 0"),
        ("65536", "invalid port 65536"),
        (",".join(str(p) for p in range(1, 18)), "at most 16 ports"),
    ],
)
def test_parse_ports_refuses(text: str, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        parse_ports(text)


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("relay.example.com:2222", ("relay.example.com", 2222)),
        (" 10.0.0.1:22 ", ("10.0.0.1", 22)),
        ("[::1]:2222", ("::1", 2222)),
        ("[2001:db8::1]:65535", ("2001:db8::1", 65535)),
    ],
)
def test_parse_address(text: str, address: tuple[str, int]) -> None:
    assert parse_address(text) == address


@pytest.mark.parametrize(
    "text",
    [
        "relay.example.com",
        "relay:",
        ":2222",
        "relay:0",
        "relay:70000",
        "relay:-1",
        "::1:22",
        "[::1]",
        "a b:22",
    ],
)
def test_parse_address_refuses(text: str) -> None:
    with pytest.raises(BadInput, match=r"use HOST:PORT") as info:
        parse_address(text, what="listen address")

    assert "invalid listen address" in str(info.value)


@pytest.mark.parametrize("serial", ["SN-1001", "a", "A1.b_c-d", "x" * 64, "0abc"])
def test_check_serial_accepts_and_returns_the_canonical_upper_case_form(serial: str) -> None:
    assert check_serial(serial) == serial.upper()
    assert check_serial(check_serial(serial)) == check_serial(serial)


@pytest.mark.parametrize(
    "serial",
    [
        "",
        "a b",
        "-x",
        "_x",
        "x" * 65,
        "x;rm",
        "ümlaut",
        "a\tb",
        # Look-alikes of ACME-1: a trailing dot is the same host to DNS and OpenSSH;
        # trailing separators, spaces and non-ASCII letters or digits that render alike.
        "ACME-1.",
        "ACME-1-",
        "ACME-1_",
        " ACME-1",
        "ACME-1 ",
        "ACME-\uff11",
        "\u0410CME-1",
    ],
)
def test_check_serial_refuses(serial: str) -> None:
    with pytest.raises(BadInput, match="1-64 letters"):
        check_serial(serial)


def test_check_serial_refuses_a_trailing_newline() -> None:
    with pytest.raises(BadInput):
        check_serial("SN-1\n")


def test_a_key_names_its_serial_in_the_one_canonical_form() -> None:
    """Security review, defect 21: a look-alike serial is the same machine, or refused."""
    token, claims = issue("acme-1")
    assert claims.serial == "ACME-1"
    assert parse(token, serial="Acme-1").serial == "ACME-1"  # the machine's config, any case
    with pytest.raises(WrongSerialError):
        parse(token, serial="ACME-2")
    for lookalike in ("ACME-1.", "ACME-1-", "ACME-\uff11"):
        with pytest.raises(BadInput, match="invalid serial"):
            issue(lookalike)
