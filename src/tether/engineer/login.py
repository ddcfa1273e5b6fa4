"""``tether login``: authenticate to the vendor service and get a short-lived certificate.

The flow follows the API contract (:mod:`tether.vendor_service.api_models`):

1. ``POST /api/login`` with name and password. A refusal whose words ask for a TOTP
   code (the contract's ``LoginRequest.totp``) makes us ask for the code and retry once.
2. The bearer token is stored (0600) at once.
3. ``POST /api/certificates`` with the engineer's public key (generated if they have
   none) and the requested lifetime.
4. The certificate, the relay's host key (as ``known_hosts``) and ``engineer.toml``
   are stored; the relay, support account and certificate are checked first, so a
   wrong answer cannot leave a half-written login behind.
"""

from __future__ import annotations

import getpass
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import httpx

from tether.certs import MAX_CERT_TTL, check_engineer_name, load_public_key
from tether.clock import Clock
from tether.durations import format_duration
from tether.engineer.client import TotpRequired, VendorClient, check_vendor_url
from tether.engineer.identity import EngineerKey, ensure_key
from tether.engineer.state import (
    PUBLIC_MODE,
    CertificateInfo,
    EngineerState,
    NotLoggedIn,
    Settings,
    format_utc,
)
from tether.errors import BadInput, ConfigError, NotReady
from tether.keys import parse_address
from tether.sshlib import asyncssh
from tether.vendor_service.api_models import CertificateResponse

_TOTP = re.compile(r"^[0-9]{6}$")
_ACCOUNT = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")


@dataclass(frozen=True)
class Prompts:
    """How login asks the engineer for secrets (the CLI prompts; tests answer directly).

    :param password: called with a prompt text, returns the password.
    :param totp: called with a prompt text, returns the TOTP code.
    """

    password: Callable[[str], str]
    totp: Callable[[str], str]


@dataclass(frozen=True)
class LoginResult:
    """A completed login.

    :param settings: what was stored in ``engineer.toml``.
    :param certificate: the new certificate's facts.
    :param key: the key that was certified.
    :param now: the time the login completed (for "in 7h 59m").
    """

    settings: Settings
    certificate: CertificateInfo
    key: EngineerKey
    now: datetime

    def summary(self) -> str:
        """``Logged in as NAME; certificate valid until HH:MM UTC (in 7h 59m)``."""
        end = self.certificate.valid_before
        return (
            f"Logged in as {self.settings.engineer}; certificate valid until "
            f"{format_utc(end)} (in {format_duration(end - self.now)})"
        )


def previous_settings(state: EngineerState) -> Settings | None:
    """The settings of an earlier login, if any (a damaged file counts as none)."""
    try:
        return state.load_settings()
    except (NotLoggedIn, ConfigError, NotReady):
        return None


def default_name(previous: Settings | None) -> str:
    """The engineer name to use without ``--name``: the last one, else the login user."""
    if previous is not None:
        return previous.engineer
    user = getpass.getuser()
    try:
        return check_engineer_name(user)
    except BadInput:
        raise BadInput(
            f"your user name {user!r} cannot name an engineer: give yours with --name"
        ) from None


def check_ttl(ttl: timedelta) -> float:
    """Return ``ttl`` in hours; refuse a lifetime over :data:`MAX_CERT_TTL` (7 days)."""
    if ttl <= timedelta(0):
        raise BadInput("a certificate's lifetime must be longer than zero")
    if ttl > MAX_CERT_TTL:
        raise BadInput("an engineer certificate may be valid for at most 7 days (--ttl 7d)")
    return ttl.total_seconds() / 3600


def check_totp(code: str) -> str:
    """A TOTP code, six digits (spaces allowed, as authenticator apps show them)."""
    compact = code.replace(" ", "").strip()
    if not _TOTP.fullmatch(compact):
        raise BadInput("a TOTP code is 6 digits, as your authenticator app shows it")
    return compact


async def login(
    state: EngineerState,
    *,
    vendor: str,
    name: str,
    key_path: Path | None,
    ttl: timedelta,
    prompts: Prompts,
    clock: Clock,
    transport: httpx.AsyncBaseTransport | None = None,
) -> LoginResult:
    """Log in to ``vendor`` as ``name``, get a certificate for the key, store everything.

    Raises our own errors with plain words for every failure a user can meet (bad
    input exit 2; refused, unreachable or not ready exit 1). ``transport`` lets a test
    talk to an in-process service.
    """
    url, _ = check_vendor_url(vendor)
    check_engineer_name(name)
    ttl_hours = check_ttl(ttl)
    key = ensure_key(state, key_path, comment=f"{name}@tether")
    password = prompts.password(f"Password for {name} at {url}")
    if not password:
        raise BadInput("no password given")
    async with VendorClient(url, transport=transport) as client:
        try:
            session = await client.login(name, password)
        except TotpRequired:
            code = check_totp(prompts.totp(f"TOTP code for {name}"))
            session = await client.login(name, password, code)
        state.save_token(session.token)
        client.set_token(session.token)
        engineer = session.engineer if session.engineer else name
        check_engineer_name(engineer)
        response = await client.certificate(key.public_line, ttl_hours)
    relay_host, relay_port, info = _check_certificate_response(response, key, url)
    certificate_path = state.certificate_path_for(key.path)
    state.write(certificate_path, response.certificate.strip().encode() + b"\n", PUBLIC_MODE)
    state.save_known_hosts(relay_host, relay_port, response.relay_host_key)
    settings = Settings(
        vendor=url,
        engineer=engineer,
        relay_host=relay_host,
        relay_port=relay_port,
        support_account=response.support_account,
        key=key.path,
        certificate=certificate_path,
        token_expires_at=session.expires_at,
    )
    state.save_settings(settings)
    return LoginResult(settings, info, key, clock.now())


def _check_certificate_response(
    response: CertificateResponse, key: EngineerKey, url: str
) -> tuple[str, int, CertificateInfo]:
    """Check what the service sent before anything is stored; return relay and cert facts."""
    odd = f"the vendor service at {url} sent"
    try:
        relay_host, relay_port = parse_address(response.relay, what="relay address")
    except BadInput:
        raise NotReady(f"{odd} a relay address that cannot be used: {response.relay!r}") from None
    host_key_words = response.relay_host_key.split()
    try:
        if len(host_key_words) < 2:
            raise BadInput("short")
        load_public_key(" ".join(host_key_words[:2]), what="relay host key")
    except BadInput:
        raise NotReady(f"{odd} a relay host key that is not an OpenSSH public key") from None
    if not _ACCOUNT.fullmatch(response.support_account):
        raise NotReady(f"{odd} a support account that is not an account name")
    try:
        info = CertificateInfo.parse(response.certificate.encode(), where="the certificate")
        certified = asyncssh.import_certificate(response.certificate.strip())
        ours = asyncssh.import_public_key(key.public_line)
    except (ConfigError, asyncssh.KeyImportError, ValueError):
        raise NotReady(f"{odd} something that is not an OpenSSH user certificate") from None
    if certified.key.public_data != ours.public_data:
        raise NotReady(f"{odd} a certificate for another key than {key.path}")
    return relay_host, relay_port, info
