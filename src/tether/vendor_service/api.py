"""The vendor service's HTTP API (FastAPI): what engineers and admins do over HTTP.

:func:`tether.vendor_service.app.create_app` mounts it, with the console, around an
:class:`~tether.vendor_service.authority.Authority`.
The contract — every endpoint, request and response — is :mod:`tether.vendor_service.api_models`;
this module implements the engineer endpoints (session, certificates, tethers, cases,
sealed passwords) and :mod:`tether.vendor_service.api_admin` the admin ones (keys, machines,
engineers). OpenAPI is served at ``/openapi.json``; there is no docs page, so nothing
is ever loaded from a CDN.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from tether import log
from tether.certs import load_public_key
from tether.errors import BadInput, NotReady, Refused
from tether.seal import unseal
from tether.sshlib import asyncssh
from tether.store import MAX_CASE_ID, CaseRecord, MachineRecord
from tether.vendor_service.api_auth import ApiContext, Caller, Ctx
from tether.vendor_service.api_credentials import (
    TOKEN_LIFETIME,
    new_token,
    new_totp_secret,
    totp_matches,
    totp_uri,
)
from tether.vendor_service.api_errors import (
    api_error,
    check_text,
)
from tether.vendor_service.api_models import (
    Case,
    CertificateRequest,
    CertificateResponse,
    DenyRequest,
    LoginRequest,
    LoginResponse,
    Me,
    RevealedPassword,
    Tether,
    TotpSetup,
)
from tether.vendor_service.authority import case_machine

__all__ = ["KEY_ID_PATTERN", "router"]

logger = logging.getLogger("tether.vendor_service.api")

#: What a key id in a path looks like (issued ids are 22 base64url characters).
KEY_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_CERT_SUFFIX = "-cert-v01@openssh.com"
_NO_STORE = {"Cache-Control": "no-store"}
#: Shortest certificate worth signing.
MIN_CERT_TTL = timedelta(minutes=1)

CaseId = Annotated[int, Path(ge=1, le=MAX_CASE_ID, description="the case number")]
KeyId = Annotated[str, Path(pattern=KEY_ID_PATTERN, description="the key id")]

router = APIRouter()


# --- sessions ---------------------------------------------------------------------


@router.post("/api/login", tags=["session"])
async def login(
    body: LoginRequest, ctx: Ctx, response: Response, request: Request
) -> LoginResponse:
    """Log in with name, password and (if enabled) a TOTP code; get a 12-hour bearer token.

    Failed logins are limited per name and source address (429 with ``Retry-After``).
    """
    name = body.name
    source = request.client.host if request.client else "unknown"
    limited = ctx.limiter.retry_after(name, source)
    if limited is not None:
        wait, who = limited
        log.event(logger, "login.limited", level=logging.WARNING, engineer=name, source=source)
        raise api_error(
            429,
            f"too many failed logins {who}; try again in {wait} s",
            {"Retry-After": str(wait)},
        )
    # Counted as a failure before checking, cleared on success: parallel guesses cannot
    # all slip past the limit while their password checks are still running.
    ctx.limiter.failed(name, source)
    creds = await ctx.store.engineers.credentials(name)
    stored = creds.password_hash if creds is not None else None
    if not await ctx.passwords.verify(stored, body.password) or creds is None:
        await _login_failed(ctx, name, "wrong name or password")
        raise api_error(401, "wrong engineer name or password")
    if creds.totp_secret is not None:
        if body.totp is None:
            await _login_failed(ctx, name, "one-time code missing")
            raise api_error(401, f"{name} uses one-time codes: send the current code as totp")
        if not totp_matches(creds.totp_secret, body.totp, ctx.now()):
            await _login_failed(ctx, name, "wrong one-time code")
            raise api_error(401, "wrong or outdated one-time code")
    if not creds.active:
        await _login_failed(ctx, name, "engineer disabled")
        raise api_error(403, f"engineer {name} is disabled; ask a vendor admin")
    ctx.limiter.succeeded(name, source)
    if stored is not None and ctx.passwords.needs_rehash(stored):
        await ctx.store.engineers.set_password(name, await ctx.passwords.hash(body.password))
    now = ctx.now()
    token, digest = new_token()
    await ctx.store.tokens.purge_expired(now)
    session = await ctx.store.tokens.create(name, digest, now, now + TOKEN_LIFETIME)
    log.event(logger, "login", engineer=name, admin=creds.admin)
    await ctx.authority.record("engineer.login", engineer=name)
    response.headers.update(_NO_STORE)
    return LoginResponse(
        token=token, expires_at=session.expires_at, engineer=name, admin=creds.admin
    )


async def _login_failed(ctx: ApiContext, name: str, reason: str) -> None:
    log.event(logger, "login.failed", level=logging.WARNING, engineer=name, reason=reason)
    await ctx.authority.record("engineer.login_failed", engineer=name, reason=reason)


@router.post("/api/logout", status_code=204, tags=["session"])
async def logout(caller: Caller, ctx: Ctx) -> Response:
    """End this session (the token stops working at once)."""
    await ctx.store.tokens.delete(caller.token_hash)
    log.event(logger, "logout", engineer=caller.name)
    return Response(status_code=204)


@router.get("/api/me", tags=["session"])
async def me(caller: Caller) -> Me:
    """Who is logged in."""
    return Me(engineer=caller.name, admin=caller.admin, totp_enabled=caller.totp_enabled)


@router.post("/api/me/totp", tags=["session"])
async def enable_totp(caller: Caller, ctx: Ctx, response: Response) -> TotpSetup:
    """Turn on one-time codes for yourself; the secret is shown this once.

    Already on: 409 (an admin resets it with ``tether vendor engineer totp NAME``).
    """
    if caller.totp_enabled:
        raise api_error(
            409,
            f"one-time codes are already on for {caller.name}; a vendor admin can reset them "
            f"with `tether vendor engineer totp {caller.name}`",
        )
    secret = new_totp_secret()
    await ctx.store.engineers.set_totp(caller.name, secret)
    await ctx.authority.record("engineer.totp_enabled", engineer=caller.name, by=caller.name)
    response.headers.update(_NO_STORE)
    issuer = f"{ctx.config.vendor} Tether"
    return TotpSetup(secret=secret, uri=totp_uri(secret, engineer=caller.name, issuer=issuer))


# --- certificates -----------------------------------------------------------------


def _public_key(text: str) -> asyncssh.SSHKey:
    check_text(text, "public_key", multiline=True)
    stripped = text.strip()
    first = stripped.split(maxsplit=1)[0] if stripped else ""
    if first.endswith(_CERT_SUFFIX):
        raise BadInput(
            "public_key is an SSH certificate; send the plain public key "
            "(e.g. the contents of ~/.ssh/id_ed25519.pub)"
        )
    try:
        key = load_public_key(stripped, what="public_key")
    except BadInput:
        raise
    except Exception:  # untrusted text: any parser failure means "not a public key"
        raise BadInput(
            "public_key is not an OpenSSH public key (expected e.g. 'ssh-ed25519 AAAA…')"
        ) from None
    if key.get_algorithm().endswith(_CERT_SUFFIX):
        raise BadInput("public_key is an SSH certificate; send the plain public key")
    return key


@router.post("/api/certificates", tags=["certificates"])
async def sign_certificate(
    body: CertificateRequest, caller: Caller, ctx: Ctx
) -> CertificateResponse:
    """Sign your own SSH public key: a certificate naming you (default 8 h, at most 7 days)."""
    key = _public_key(body.public_key)
    ttl = timedelta(hours=body.ttl_hours)
    if ttl < MIN_CERT_TTL:
        raise BadInput("ttl_hours: a certificate must be valid for at least one minute")
    try:
        cert = await ctx.authority.sign(caller.name, key, ttl=ttl)
    except Refused as exc:
        raise api_error(403, str(exc)) from None
    except (ValueError, asyncssh.KeyImportError) as exc:
        raise BadInput(f"cannot certify this public key: {exc}") from None
    return CertificateResponse(
        certificate=cert.openssh(),
        valid_after=cert.valid_after,
        valid_before=cert.valid_before,
        principals=list(cert.principals),
        relay=ctx.config.relay,
        relay_host_key=ctx.relay_host_key,
        support_account=ctx.config.support_account,
    )


# --- tethers and cases ------------------------------------------------------------


@router.get("/api/tethers", tags=["tethers"])
async def list_tethers(caller: Caller, ctx: Ctx) -> list[Tether]:
    """Live tethers, with the engineers connected to each right now."""
    tethers = await ctx.store.tethers.list()
    keys = await ctx.store.keys.get_many(t.key_id for t in tethers)
    engineers: dict[str, set[str]] = {}
    for channel in await ctx.store.channels.list():
        engineers.setdefault(channel.serial.lower(), set()).add(channel.engineer)
    out: list[Tether] = []
    for tether in tethers:
        key = keys.get(tether.key_id)
        if key is None:  # pragma: no cover - a foreign key guarantees it
            continue
        out.append(
            Tether(
                serial=tether.serial,
                key_id=tether.key_id,
                relay_id=tether.relay_id,
                since=tether.connected_at,
                ports=list(key.ports),
                expires_at=key.expires_at,
                description=key.description,
                engineers=sorted(engineers.get(tether.serial.lower(), ())),
                limits=tether.limit_lines(),
            )
        )
    return out


def case_model(case: CaseRecord, bound: MachineRecord | None) -> Case:
    """The API view of a case: the asking machine's key fingerprint, never the key text.

    ``bound`` is the serial's machine binding: it says whether approving the case serves
    a known machine, binds a new one, or would hand a key to a different machine.
    """
    machine = case_machine(case.machine_key, bound)
    return Case(
        id=case.id,
        serial=case.serial,
        machine_key=case.machine_key,
        machine=machine,
        description=case.description,
        status=case.status.value,
        created_at=case.created_at,
        decided_by=case.decided_by,
        decided_at=case.decided_at,
        key_id=case.key_id,
        limits=None if case.limits is None else list(case.limits),
    )


async def case_models(ctx: ApiContext, cases: list[CaseRecord]) -> list[Case]:
    """:func:`case_model` of each case, with the serials' bindings read in one query."""
    bound = await ctx.store.machines.get_many(c.serial for c in cases)
    return [case_model(c, bound.get(c.serial)) for c in cases]


@router.get("/api/cases", tags=["cases"])
async def list_cases(caller: Caller, ctx: Ctx) -> list[Case]:
    """One-click support requests, newest first, each with the asking machine's fingerprint."""
    return await case_models(ctx, await ctx.store.cases.list())


async def _existing_case(ctx: ApiContext, case_id: int) -> CaseRecord:
    case = await ctx.store.cases.get(case_id)
    if case is None:
        raise api_error(404, f"no case {case_id}")
    return case


@router.post("/api/cases/{id}/approve", tags=["cases"])
async def approve_case(id: CaseId, caller: Caller, ctx: Ctx) -> Case:
    """Approve a pending case: a ``request`` key is issued and handed to the machine.

    An unbound serial is bound to the machine key the case names (its fingerprint is in
    the case); a serial bound to another machine is refused (409) until an admin re-binds it.
    """
    await _existing_case(ctx, id)
    decided = await ctx.authority.approve_case(id, by=caller.name)
    return (await case_models(ctx, [decided]))[0]


@router.post("/api/cases/{id}/deny", tags=["cases"])
async def deny_case(
    id: CaseId,
    caller: Caller,
    ctx: Ctx,
    body: DenyRequest | None = None,
) -> Case:
    """Deny a pending case; the customer's machine is told the reason."""
    reason = check_text((body or DenyRequest()).reason, "reason")
    await _existing_case(ctx, id)
    decided = await ctx.authority.deny_case(id, by=caller.name, reason=reason)
    return (await case_models(ctx, [decided]))[0]


# --- sealed passwords -------------------------------------------------------------


@router.post("/api/keys/{key_id}/password", tags=["keys"])
async def reveal_password(
    key_id: KeyId, caller: Caller, ctx: Ctx, response: Response
) -> RevealedPassword:
    """Show the support-account password the machine sealed to the vendor (audited)."""
    sealed = await ctx.store.passwords.get(key_id)
    if sealed is None:
        raise api_error(
            404,
            f"no password was sent for key {key_id} (the customer chose it, or the machine "
            "has not connected)",
        )
    if ctx.seal_key is None:
        raise NotReady(
            "this vendor service has no password seal key (password_seal_key.pem); "
            "it cannot open sealed passwords"
        )
    try:
        password = unseal(sealed.sealed, ctx.seal_key, serial=sealed.serial, grant_id=key_id)
    except BadInput as exc:
        raise api_error(409, str(exc)) from None
    # Audited before it is shown: no entry, no password.
    await ctx.authority.record(
        "password.revealed",
        required=True,
        engineer=caller.name,
        key_id=key_id,
        serial=sealed.serial,
    )
    log.event(logger, "password.revealed", engineer=caller.name, key=key_id, serial=sealed.serial)
    response.headers.update(_NO_STORE)
    return RevealedPassword(
        key_id=key_id, serial=sealed.serial, account=ctx.config.support_account, password=password
    )
