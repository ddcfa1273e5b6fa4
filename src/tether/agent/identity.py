"""The machine key: generated once at first start, it identifies this machine to relays."""

from __future__ import annotations

import os
from pathlib import Path

from tether.errors import NotReady
from tether.sshlib import asyncssh


def load_or_create_machine_key(path: Path) -> asyncssh.SSHKey:
    """Read the machine key at ``path``, creating an Ed25519 key (mode 0600) if missing."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = asyncssh.generate_private_key("ssh-ed25519", comment="tether machine key")
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key.export_private_key())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        return key
    try:
        return asyncssh.read_private_key(path)
    except (OSError, asyncssh.KeyImportError) as exc:
        raise NotReady(
            f"cannot read the machine key {path}: {exc}; move it away to make a new one"
        ) from None
