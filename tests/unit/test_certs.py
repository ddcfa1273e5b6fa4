"""Engineer certificates: what sshd will see in them, and what signing refuses.

The certificate is read back with a small parser of the OpenSSH certificate format
(PROTOCOL.certkeys) written here, so the test does not trust the library that signed it.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tether.certs import (
    DEFAULT_CERT_TTL,
    MAX_CERT_TTL,
    check_engineer_name,
    load_public_key,
    sign_engineer_certificate,
)
from tether.errors import BadInput
from tether.sshlib import asyncssh

NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)
CA = asyncssh.generate_private_key("ssh-ed25519")
ENGINEER = asyncssh.generate_private_key("ssh-ed25519").convert_to_public()
SSH_CERT_TYPE_USER = 1


@dataclass
class ParsedCert:
    algorithm: str
    public_key: bytes
    serial: int
    cert_type: int
    key_id: str
    principals: list[str]
    valid_after: int
    valid_before: int
    critical_options: dict[str, bytes]
    extensions: dict[str, bytes]
    signature_key: bytes


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def string(self) -> bytes:
        (n,) = struct.unpack_from(">I", self.data, self.pos)
        value = self.data[self.pos + 4 : self.pos + 4 + n]
        self.pos += 4 + n
        return value

    def uint32(self) -> int:
        (v,) = struct.unpack_from(">I", self.data, self.pos)
        self.pos += 4
        return int(v)

    def uint64(self) -> int:
        (v,) = struct.unpack_from(">Q", self.data, self.pos)
        self.pos += 8
        return int(v)

    def strings(self) -> list[bytes]:
        inner = _Reader(self.string())
        out = []
        while inner.pos < len(inner.data):
            out.append(inner.string())
        return out

    def pairs(self) -> dict[str, bytes]:
        items = self.strings()
        return {items[i].decode(): items[i + 1] for i in range(0, len(items), 2)}


def parse_openssh_cert(line: str) -> ParsedCert:
    """Parse an ``ssh-ed25519-cert-v01@openssh.com AAAA…`` line."""
    algorithm, blob = line.split()[:2]
    r = _Reader(base64.b64decode(blob))
    assert r.string().decode() == algorithm
    r.string()  # nonce
    public_key = r.string()
    return ParsedCert(
        algorithm=algorithm,
        public_key=public_key,
        serial=r.uint64(),
        cert_type=r.uint32(),
        key_id=r.string().decode(),
        principals=[p.decode() for p in r.strings()],
        valid_after=r.uint64(),
        valid_before=r.uint64(),
        critical_options=r.pairs(),
        extensions=r.pairs(),
        signature_key=(r.string(), r.string())[1],  # reserved, then the CA key
    )


def ed25519_raw(key: asyncssh.SSHKey) -> bytes:
    """The 32 raw public bytes from an ssh-ed25519 public key blob."""
    r = _Reader(key.public_data)
    assert r.string() == b"ssh-ed25519"
    return r.string()


def sign(engineer: str = "alice", ttl: timedelta = DEFAULT_CERT_TTL, **kw: object):  # type: ignore[no-untyped-def]
    return sign_engineer_certificate(CA, ENGINEER, engineer=engineer, now=NOW, ttl=ttl, **kw)  # type: ignore[arg-type]


def test_certificate_names_the_engineer_and_the_support_account() -> None:
    cert = sign("alice")
    parsed = parse_openssh_cert(cert.openssh())

    assert parsed.algorithm == "ssh-ed25519-cert-v01@openssh.com"
    assert parsed.cert_type == SSH_CERT_TYPE_USER
    assert parsed.key_id == "alice"  # what sshd logs: "ID alice"
    assert parsed.principals == ["alice", "tether-support"]
    assert cert.engineer == "alice"
    assert cert.principals == ("alice", "tether-support")


def test_certificate_certifies_the_engineer_key_and_is_signed_by_the_ca() -> None:
    parsed = parse_openssh_cert(sign().openssh())

    assert parsed.public_key == ed25519_raw(ENGINEER)
    assert parsed.signature_key == CA.public_data


def test_certificate_is_backdated_one_minute_and_lasts_its_ttl() -> None:
    cert = sign(ttl=timedelta(hours=8))
    parsed = parse_openssh_cert(cert.openssh())

    assert parsed.valid_after == int((NOW - timedelta(seconds=60)).timestamp())
    assert parsed.valid_before == int((NOW + timedelta(hours=8)).timestamp())
    assert cert.valid_after == NOW - timedelta(minutes=1)
    assert cert.valid_before == NOW + timedelta(hours=8)
    assert parsed.serial == cert.serial


def test_default_ttl_is_eight_hours() -> None:
    cert = sign_engineer_certificate(CA, ENGINEER, engineer="alice", now=NOW)

    assert cert.valid_before - NOW == timedelta(hours=8)


def test_validity_ignores_sub_second_time_and_other_time_zones() -> None:
    tz = datetime(2030, 6, 1, 14, 0, 0, 999999).astimezone().tzinfo
    cert = sign_engineer_certificate(
        CA, ENGINEER, engineer="alice", now=NOW.replace(microsecond=999999).astimezone(tz)
    )

    assert cert.valid_after == NOW - timedelta(minutes=1)
    assert cert.valid_before == NOW + timedelta(hours=8)


def test_certificate_permits_pty_and_port_forwarding_only() -> None:
    parsed = parse_openssh_cert(sign().openssh())

    assert set(parsed.extensions) == {"permit-pty", "permit-port-forwarding"}
    assert "permit-agent-forwarding" not in parsed.extensions
    assert "permit-X11-forwarding" not in parsed.extensions
    assert "permit-user-rc" not in parsed.extensions
    assert parsed.critical_options == {}


def test_certificate_is_accepted_by_asyncssh_for_both_principals_only() -> None:
    signed = sign_engineer_certificate(CA, ENGINEER, engineer="alice", now=datetime.now(UTC))
    cert: Any = asyncssh.import_certificate(signed.openssh())  # validate() is untyped

    cert.validate(SSH_CERT_TYPE_USER, "alice")
    cert.validate(SSH_CERT_TYPE_USER, "tether-support")
    with pytest.raises(ValueError, match="principal"):
        cert.validate(SSH_CERT_TYPE_USER, "root")


def test_another_support_account_is_the_second_principal() -> None:
    parsed = parse_openssh_cert(sign(support_account="acme-support").openssh())

    assert parsed.principals == ["alice", "acme-support"]


def test_each_certificate_gets_its_own_serial() -> None:
    assert len({sign().serial for _ in range(5)}) == 5


def test_seven_days_is_allowed() -> None:
    cert = sign(ttl=MAX_CERT_TTL)

    assert cert.valid_before - NOW == timedelta(days=7)


@pytest.mark.parametrize(
    ("ttl", "message"),
    [
        (timedelta(days=7, seconds=1), "at most 7 days"),
        (timedelta(days=30), "at most 7 days"),
        (timedelta(0), "longer than zero"),
        (timedelta(seconds=-1), "longer than zero"),
    ],
)
def test_ttl_outside_zero_to_seven_days_is_refused(ttl: timedelta, message: str) -> None:
    with pytest.raises(BadInput, match=message) as info:
        sign(ttl=ttl)

    assert info.value.exit_code == 2


@pytest.mark.parametrize("name", ["root", "tether-agent", "tether-support", "admin", "tether"])
def test_reserved_names_cannot_be_engineers(name: str) -> None:
    with pytest.raises(BadInput, match="reserved"):
        sign(name)


@pytest.mark.parametrize(
    "name", ["Alice", "a b", "", "1alice", "-alice", "a" * 33, "alice;id", "al/ice"]
)
def test_invalid_engineer_names_are_refused(name: str) -> None:
    with pytest.raises(BadInput, match="invalid engineer name"):
        sign(name)


@pytest.mark.parametrize("name", ["a", "alice", "bob.smith", "j_doe-2", "a" * 32])
def test_valid_engineer_names(name: str) -> None:
    assert check_engineer_name(name) == name


def test_an_engineer_name_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(BadInput):
        check_engineer_name("alice\n")


@pytest.mark.parametrize("key", [CA, CA.convert_to_public()], ids=["private", "public"])
def test_the_ca_will_not_sign_its_own_key(key: asyncssh.SSHKey) -> None:
    with pytest.raises(BadInput, match="CA's own key"):
        sign_engineer_certificate(CA, key, engineer="alice", now=NOW)


def test_load_public_key() -> None:
    line = ENGINEER.export_public_key().decode()

    assert load_public_key(line).public_data == ENGINEER.public_data
    assert load_public_key(line.encode()).public_data == ENGINEER.public_data


@pytest.mark.parametrize("data", ["hello", "", "ssh-ed25519 AAAA"])
def test_load_public_key_refuses_garbage(data: str) -> None:
    with pytest.raises(BadInput, match="not an OpenSSH public key"):
        load_public_key(data, what="engineer key")
