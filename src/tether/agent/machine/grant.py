"""Checking a :class:`~tether.agent.machine.effects.SupportGrant` before anything changes.

Every field is checked, and normalised where sshd is stricter than people are (a
network written with host bits set, ``192.0.2.7/24``, becomes ``192.0.2.0/24``, which
is what sshd's ``Match Address`` accepts). A refusal is a
:class:`~tether.agent.machine.effects.MachineBadInput` that says what to fix.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tether.agent.machine.account import conflict_message, expiry_date, is_ours, lookup
from tether.agent.machine.effects import MachineBadInput, RecorderSpec, SupportGrant
from tether.agent.machine.limits import Limits
from tether.sshlib import asyncssh

#: Account names Tether accepts (those of ``useradd`` without its odd corners).
ACCOUNT_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
#: Characters a path written into sshd_config must not contain (sshd splits on them).
_UNSAFE_PATH = re.compile(r"[\s\"'#\\]")


@dataclass(frozen=True)
class CheckedGrant:
    """A grant whose every field has been checked, ready to apply.

    :param sources: normalised ``allow_from`` (bare addresses, networks without host
        bits, no duplicates); empty means from anywhere.
    :param expires: the shadow expiry date (``YYYY-MM-DD``) or None for no expiry.
    :param exists: Tether's account of that name already exists (a repeated open).
    """

    account: str
    ca_line: str
    sources: tuple[str, ...]
    expires: str | None
    exists: bool
    password: str | None = field(default=None, repr=False)
    recorder: RecorderSpec | None = None
    limits: Limits = field(default_factory=Limits)


def check_account_name(account: str) -> None:
    """Refuse a name that is not a plain lower-case account name."""
    if not ACCOUNT_NAME.fullmatch(account):
        raise MachineBadInput(
            f"{account!r} is not a valid account name (lower-case letters, digits, '_' "
            "and '-', starting with a letter or '_', at most 32 characters)"
        )


def check_vendor_ca(text: str) -> str:
    """Return the vendor CA as one OpenSSH public-key line, or refuse it."""
    line = text.strip()
    if "PRIVATE KEY" in line:
        raise MachineBadInput("the vendor CA is a PRIVATE key: configure its public (.pub) line")
    if not line or "\n" in line or "\r" in line:
        raise MachineBadInput("the vendor CA must be exactly one OpenSSH public-key line")
    try:
        asyncssh.import_public_key(line)
    except (asyncssh.KeyImportError, ValueError):
        raise MachineBadInput(
            "the vendor CA is not an OpenSSH public key (expected e.g. 'ssh-ed25519 AAAA…')"
        ) from None
    return line


def check_sources(allow_from: Sequence[str]) -> tuple[str, ...]:
    """Return ``allow_from`` as sshd accepts it in ``Match Address``, or refuse it."""
    sources: list[str] = []
    for entry in allow_from:
        try:
            network = ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            raise MachineBadInput(
                f"allow_from entry {entry!r} is not an IP address or network (e.g. 192.0.2.0/24)"
            ) from None
        # sshd refuses a network with host bits set; a single address stays bare.
        text = str(network.network_address) if network.num_addresses == 1 else str(network)
        if text not in sources:
            sources.append(text)
    return tuple(sources)


def check_grant(grant: SupportGrant, config_paths: Sequence[Path]) -> CheckedGrant:
    """Check every field of ``grant``; ``config_paths`` are paths it puts in sshd_config.

    Raises:
        MachineBadInput: a field is invalid, or an account of that name exists and is
            not Tether's (its GECOS is not ``ACCOUNT_COMMENT``).
    """
    check_account_name(grant.account)
    ca_line = check_vendor_ca(grant.vendor_ca)
    sources = check_sources(grant.allow_from)
    if grant.expires_at is not None and grant.expires_at.tzinfo is None:
        raise MachineBadInput("expires_at must be a timezone-aware datetime")
    password = grant.password
    if password is not None and (not password or any(c in password for c in "\n\r\0")):
        raise MachineBadInput("the support password must be non-empty and on one line")
    for path in config_paths:
        if _UNSAFE_PATH.search(str(path)):
            raise MachineBadInput(f"path {path} cannot go into sshd_config (blank, quote, # or \\)")
    if grant.recorder is not None:
        if "\n" in grant.recorder.command or "\r" in grant.recorder.command:
            raise MachineBadInput("the session recorder's command must be one line")
        if _UNSAFE_PATH.search(str(grant.recorder.directory)):
            raise MachineBadInput(
                f"recordings directory {grant.recorder.directory} has a blank, quote, # or \\"
            )
    if grant.limits.needs_recorder and grant.recorder is None:
        raise MachineBadInput(
            "limits on shell, file transfer and session length are enforced by the session "
            "recorder, and recording is off: turn [recording] on in agent.toml, or open "
            "access without these limits"
        )
    existing = lookup(grant.account)
    if existing is not None and not is_ours(existing):
        raise MachineBadInput(conflict_message(grant.account))
    return CheckedGrant(
        account=grant.account,
        ca_line=ca_line,
        sources=sources,
        expires=None if grant.expires_at is None else expiry_date(grant.expires_at),
        exists=existing is not None,
        password=password,
        recorder=grant.recorder,
        limits=grant.limits,
    )
