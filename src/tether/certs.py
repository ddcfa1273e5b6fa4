"""Engineer certificates: short-lived OpenSSH user certificates from the vendor CA (pure).

An engineer certificate names the engineer as its key id (so a machine's sshd logs
``ID alice``) and carries two principals: the engineer's name (what the relay checks
against the login name) and the support account (what the machine's
``AuthorizedPrincipalsFile`` lists). It is backdated one minute for clock skew and is
never valid for more than seven days.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tether.errors import BadInput
from tether.sshlib import asyncssh
from tether.wire import AGENT_USERNAME, DEFAULT_SUPPORT_ACCOUNT, PEER_USERNAME

DEFAULT_CERT_TTL = timedelta(hours=8)
MAX_CERT_TTL = timedelta(days=7)
BACKDATE = timedelta(minutes=1)

_ENGINEER = re.compile(r"^[a-z][a-z0-9._-]{0,31}$")
#: Names an engineer may not take: they are logins with another meaning on relay or machine.
RESERVED_NAMES = frozenset(
    {AGENT_USERNAME, PEER_USERNAME, DEFAULT_SUPPORT_ACCOUNT, "root", "admin", "tether"}
)


def check_engineer_name(name: str) -> str:
    """Return ``name`` if it can name an engineer, else raise :class:`BadInput`."""
    if not _ENGINEER.fullmatch(name):
        raise BadInput(
            f"invalid engineer name {name!r}: use 1-32 lower-case letters, digits, '.', '_' "
            "or '-', starting with a letter"
        )
    if name in RESERVED_NAMES:
        raise BadInput(f"{name!r} is reserved and cannot name an engineer")
    return name


@dataclass(frozen=True)
class EngineerCertificate:
    """A signed certificate and the facts about it a CLI shows."""

    certificate: asyncssh.SSHCertificate
    engineer: str
    principals: tuple[str, ...]
    serial: int
    valid_after: datetime
    valid_before: datetime

    def openssh(self) -> str:
        """The certificate as one ``*-cert.pub`` line."""
        return self.certificate.export_certificate().decode().strip()


def sign_engineer_certificate(
    ca_key: asyncssh.SSHKey,
    engineer_key: asyncssh.SSHKey,
    *,
    engineer: str,
    now: datetime,
    ttl: timedelta = DEFAULT_CERT_TTL,
    support_account: str = DEFAULT_SUPPORT_ACCOUNT,
) -> EngineerCertificate:
    """Sign ``engineer_key`` (a public key) as ``engineer`` for ``ttl``.

    Only the public half of ``engineer_key`` is certified. Raises :class:`BadInput`
    for a bad engineer name, a TTL that is not positive or longer than
    :data:`MAX_CERT_TTL`, or the CA's own key.
    """
    check_engineer_name(engineer)
    if ttl <= timedelta(0):
        raise BadInput("a certificate's lifetime must be longer than zero")
    if ttl > MAX_CERT_TTL:
        raise BadInput("an engineer certificate may be valid for at most 7 days")
    if engineer_key.public_data == ca_key.public_data:
        raise BadInput("refusing to sign the CA's own key")
    start = now.astimezone(UTC).replace(microsecond=0) - BACKDATE
    end = now.astimezone(UTC).replace(microsecond=0) + ttl
    serial = secrets.randbits(63)
    principals = (engineer, support_account)
    cert = ca_key.generate_user_certificate(
        engineer_key,
        engineer,
        serial=serial,
        principals=list(principals),
        valid_after=int(start.timestamp()),
        valid_before=int(end.timestamp()),
        permit_x11_forwarding=False,
        permit_agent_forwarding=False,
        # The relay carries engineers with direct-tcpip, which needs this extension;
        # the machine's sshd drop-in forbids forwarding for the support account itself.
        permit_port_forwarding=True,
        permit_pty=True,
        permit_user_rc=False,
    )
    return EngineerCertificate(cert, engineer, principals, serial, start, end)


def load_public_key(data: bytes | str, *, what: str = "public key") -> asyncssh.SSHKey:
    """Read an OpenSSH public key (one ``ssh-ed25519 AAAA… comment`` line).

    A private key is refused even though its public half could be derived: whoever
    passes one is about to send a secret where only the ``.pub`` file belongs.
    """
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    if "PRIVATE KEY" in text:
        raise BadInput(
            f"the {what} is a PRIVATE key: give the .pub file and keep the private key to yourself"
        )
    try:
        return asyncssh.import_public_key(data)
    except (asyncssh.KeyImportError, ValueError):
        raise BadInput(
            f"the {what} is not an OpenSSH public key (expected e.g. 'ssh-ed25519 AAAA…')"
        ) from None
