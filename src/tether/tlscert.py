"""A self-signed TLS certificate for a relay's port (the demo's, and tests').

The relay's certificate is not what agents trust (they pin the relay's SSH host key),
so a self-signed one is enough for a tether to pass HTTPS-only networks; a vendor may
configure a certificate from a public CA instead, which HTTPS-inspecting proxies that
refuse unknown issuers then accept.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tether.wire import RELAY_TLS_BANNER


def write_self_signed(name: str, certificate: Path, key: Path, *, days: int = 825) -> None:
    """Write a new EC P-256 key (mode 0600) and a certificate for ``name`` (a host or IP)."""
    private = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    try:
        alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        alt = x509.DNSName(name)
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
        .sign(private, hashes.SHA256())
    )
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    certificate.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


#: The longest issuer shown; a certificate's names are the presenter's to choose.
ISSUER_MAX = 200


def issuer_of(der: bytes | None) -> str:
    """The issuer of a DER certificate in RFC 4514 form (``""`` if none or unreadable).

    Whoever presents the certificate (a proxy, anyone on the path) writes its names, and
    the issuer is printed to a terminal: control characters become ``?`` and it is cut
    at :data:`ISSUER_MAX` characters.
    """
    if not der:
        return ""
    try:
        text = x509.load_der_x509_certificate(der).issuer.rfc4514_string()
    except ValueError:
        return ""
    shown = "".join(ch if ch.isprintable() else "?" for ch in text)
    return shown if len(shown) <= ISSUER_MAX else shown[: ISSUER_MAX - 1] + "…"


def fingerprint_of(der: bytes | None) -> str:
    """The SHA-256 of a DER certificate, in hex (``""`` if none)."""
    return hashlib.sha256(der).hexdigest() if der else ""


def identity_of(certificate: Path) -> tuple[str, str]:
    """``(SHA-256 hex, issuer)`` of the first certificate in a PEM file.

    The relay tells agents these inside the pinned SSH login, so that an agent can tell
    a TLS-inspecting proxy's certificate from the relay's own. Raises ``OSError`` or
    ``ValueError`` when the file cannot be read as PEM.
    """
    cert = x509.load_pem_x509_certificate(certificate.read_bytes())
    der = cert.public_bytes(serialization.Encoding.DER)
    return fingerprint_of(der), issuer_of(der)


def relay_tls_banner(certificate: Path | None) -> str | None:
    """The SSH auth banner by which a relay names its TLS certificate to agents.

    ``None`` without a certificate, or when it cannot be read (the relay's start then
    says why, when it loads the certificate for TLS).
    """
    if certificate is None:
        return None
    try:
        fingerprint, issuer = identity_of(certificate)
    except (OSError, ValueError):
        return None
    return f"{RELAY_TLS_BANNER}{fingerprint} {issuer}\n"
