"""Sealing the support account's password to the vendor (HPKE, pure).

When the customer lets the machine choose the support account's password, the agent
generates it, seals it to the vendor's X25519 public key with HPKE (RFC 9180:
X25519, HKDF-SHA256, ChaCha20-Poly1305) and sends only the sealed form over the
tether. The context (``info``) binds the sealed blob to the machine's serial and the
key id, so a blob replayed for another machine or grant does not open. Only the
vendor service, holding the private key, can unseal it for an engineer.

Text forms: public key ``x25519:<base64url>``; sealed value ``hpke1.<base64url>``.
"""

from __future__ import annotations

import base64
import secrets
import string
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from tether.errors import BadInput

_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
_PUBLIC_PREFIX = "x25519:"
_SEALED_PREFIX = "hpke1."
_INFO = b"tether support-account password v1"
#: Letters and digits that cannot be confused when read aloud or typed from a screen.
_ALPHABET = "".join(c for c in string.ascii_letters + string.digits if c not in "Il1O0o")


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _info(serial: str, grant_id: str) -> bytes:
    return b"|".join((_INFO, serial.encode(), grant_id.encode()))


@dataclass(frozen=True)
class SealPublicKey:
    """The vendor's public key that passwords are sealed to (in agent.toml)."""

    key: X25519PublicKey

    @classmethod
    def parse(cls, text: str) -> SealPublicKey:
        text = text.strip()
        try:
            if not text.startswith(_PUBLIC_PREFIX):
                raise ValueError("prefix")
            return cls(X25519PublicKey.from_public_bytes(_b64d(text[len(_PUBLIC_PREFIX) :])))
        except ValueError:
            raise BadInput(
                "the vendor's password seal key must look like x25519:<base64> (from agent-trust.toml)"
            ) from None

    def text(self) -> str:
        raw = self.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return _PUBLIC_PREFIX + _b64e(raw)


@dataclass(frozen=True)
class SealPrivateKey:
    """The vendor's private unsealing key (vendor data directory, mode 0600)."""

    key: X25519PrivateKey

    @classmethod
    def generate(cls) -> SealPrivateKey:
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, pem: bytes) -> SealPrivateKey:
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, X25519PrivateKey):
            raise BadInput("the password seal key must be an X25519 private key")
        return cls(key)

    def to_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def public(self) -> SealPublicKey:
        return SealPublicKey(self.key.public_key())


def seal(secret: str, to: SealPublicKey, *, serial: str, grant_id: str) -> str:
    """Seal ``secret`` to the vendor for this machine and grant."""
    return _SEALED_PREFIX + _b64e(
        _SUITE.encrypt(secret.encode(), to.key, info=_info(serial, grant_id))
    )


def unseal(sealed: str, key: SealPrivateKey, *, serial: str, grant_id: str) -> str:
    """Open a sealed secret; raise :class:`BadInput` if it is damaged or for another grant."""
    try:
        if not sealed.startswith(_SEALED_PREFIX):
            raise ValueError("prefix")
        data = _b64d(sealed[len(_SEALED_PREFIX) :])
        return _SUITE.decrypt(data, key.key, info=_info(serial, grant_id)).decode()
    except (ValueError, InvalidTag, UnicodeDecodeError):
        raise BadInput(
            "this sealed password is damaged or belongs to another machine or grant"
        ) from None


def generate_password(length: int = 20) -> str:
    """A random password (~115 bits for 20 characters), easy to read and type."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))
