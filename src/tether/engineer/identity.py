"""The engineer's SSH key: the one they bring (``--key``), or one generated for them.

Only the public half ever leaves the laptop (to be signed). A key the engineer brings
stays where it is; a generated one is ``id_ed25519`` in the state directory, 0600.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tether.certs import load_public_key
from tether.engineer.state import PUBLIC_MODE, SECRET_MODE, EngineerState
from tether.errors import BadInput, NotReady
from tether.sshlib import asyncssh

_ENCRYPTED = "passphrase"


@dataclass(frozen=True)
class EngineerKey:
    """An engineer key pair on disk.

    :param path: the private key file (what ssh's ``IdentityFile`` names).
    :param public_line: the OpenSSH public key line sent for signing.
    :param generated: whether this run just created it.
    """

    path: Path
    public_line: str
    generated: bool = False


def ensure_key(state: EngineerState, key_path: Path | None, *, comment: str) -> EngineerKey:
    """Return the engineer's key: ``key_path`` if given, else the state's ``id_ed25519``.

    The state's key is generated (Ed25519) when it does not exist yet. A key given
    with ``--key`` must be a private key file; its public half is read from
    ``PATH.pub`` when that exists, else derived from the private key (which then must
    not need a passphrase). Raises :class:`BadInput` with what to do otherwise.
    """
    if key_path is not None:
        return _existing_key(key_path.expanduser().absolute())
    path = state.default_key_path
    if path.exists():
        return _existing_key(path)
    key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
    state.write(path, key.export_private_key(), SECRET_MODE)
    public = key.export_public_key().decode().strip()
    state.write(path.with_name(path.name + ".pub"), (public + "\n").encode(), PUBLIC_MODE)
    return EngineerKey(path, public, generated=True)


def _existing_key(path: Path) -> EngineerKey:
    """An engineer's own key file: its public line, or what to do when it cannot be read."""
    if path.name.endswith(".pub"):
        raise BadInput(
            f"{path} is a public key or certificate: give the private key file "
            f"({path.with_suffix('')}), which never leaves this computer"
        )
    if not path.is_file():
        raise BadInput(f"no key file at {path}")
    pub = path.with_name(path.name + ".pub")
    if pub.is_file():
        key = load_public_key(pub.read_bytes(), what=f"public key in {pub}")
        if key.get_algorithm().endswith("-cert-v01@openssh.com"):
            raise BadInput(f"{pub} holds a certificate, not the plain public key")
        return EngineerKey(path, key.export_public_key().decode().strip())
    try:
        private = asyncssh.read_private_key(path)
    except asyncssh.KeyImportError as exc:
        if _ENCRYPTED in str(exc).lower():
            raise BadInput(
                f"{path} is protected by a passphrase and has no {pub.name} next to it: "
                f"create it with `ssh-keygen -y -f {path} > {pub}`"
            ) from None
        raise BadInput(f"{path} is not an OpenSSH private key") from None
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror}") from None
    return EngineerKey(path, private.export_public_key().decode().strip())


def load_client_identity(
    key_path: Path,
    certificate_path: Path,
    *,
    ask_passphrase: Callable[[Path], str] | None = None,
) -> tuple[asyncssh.SSHKey, asyncssh.SSHCertificate]:
    """Load the private key and its certificate, for an asyncssh client connection.

    ``ask_passphrase(path)`` is called once if the key is encrypted; without it an
    encrypted key is refused with what to do. Raises :class:`NotReady` when a file is
    missing and :class:`BadInput` when one is not what it should be.
    """
    try:
        try:
            key = asyncssh.read_private_key(key_path)
        except asyncssh.KeyImportError as exc:
            if _ENCRYPTED not in str(exc).lower():
                raise BadInput(f"{key_path} is not an OpenSSH private key") from None
            if ask_passphrase is None:
                raise BadInput(
                    f"{key_path} needs its passphrase; run this from a terminal"
                ) from None
            try:
                key = asyncssh.read_private_key(key_path, ask_passphrase(key_path))
            except asyncssh.KeyEncryptionError as exc:
                raise BadInput(f"cannot decrypt {key_path}: {exc}") from None
        certificate = asyncssh.read_certificate(certificate_path)
    except FileNotFoundError as exc:
        raise NotReady(f"{exc.filename} is missing: run `tether login` again") from None
    except (asyncssh.KeyImportError, ValueError):
        raise BadInput(f"{certificate_path} is not an OpenSSH certificate") from None
    except OSError as exc:
        raise NotReady(f"cannot read {exc.filename}: {exc.strerror}") from None
    if certificate.key.public_data != key.public_data:
        raise BadInput(
            f"{certificate_path} does not belong to {key_path}: run `tether login` again"
        )
    return key, certificate
