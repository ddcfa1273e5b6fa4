"""Admin-only endpoints of the vendor API: tether keys, machine re-binds, engineers, audit.

Every endpoint here depends on :data:`~tether.vendor_service.api_auth.Admin` (403 for an
engineer who is not an admin). Disabling or removing an engineer writes the
revocation that every relay polls, so their certificates stop working and their live
channels are cut; it also ends their vendor-service sessions.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from tether.certs import check_engineer_name
from tether.durations import parse_duration
from tether.errors import Refused
from tether.keys import check_ports, check_serial
from tether.store import Engineer, IssuedKey
from tether.vendor_service.api_auth import Admin, ApiContext, Ctx
from tether.vendor_service.api_credentials import check_password
from tether.vendor_service.api_errors import api_error, check_text
from tether.vendor_service.api_models import (
    NAME,
    SERIAL,
    AuditHeadInfo,
    DisableRequest,
    EngineerCreate,
    EngineerInfo,
    IssuedKeyResponse,
    KeyInfo,
    KeyIssueRequest,
    RebindRequest,
    RevokeRequest,
)

__all__ = ["engineer_info", "key_info", "router"]

router = APIRouter()

KeyId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="the key id")]
Serial = Annotated[str, Path(pattern=SERIAL, description="the machine's serial")]
Name = Annotated[str, Path(pattern=NAME, description="the engineer's name")]


def key_info(key: IssuedKey) -> KeyInfo:
    """The API view of an issued key."""
    return KeyInfo(
        key_id=key.key_id,
        serial=key.serial,
        kind=key.kind.value,
        issued_at=key.issued_at,
        expires_at=key.expires_at,
        ports=list(key.ports),
        relay=key.relay,
        used=key.used,
        revoked=key.revoked,
        revoke_reason=key.revoke_reason,
        description=key.description,
    )


def engineer_info(engineer: Engineer) -> EngineerInfo:
    """The API view of an engineer (never their password hash or TOTP secret)."""
    return EngineerInfo(
        name=engineer.name,
        admin=engineer.admin,
        active=engineer.active,
        totp_enabled=engineer.totp_enabled,
        created_at=engineer.created_at,
    )


# --- keys -------------------------------------------------------------------------


@router.get("/api/keys", tags=["keys"])
async def list_keys(admin: Admin, ctx: Ctx) -> list[KeyInfo]:
    """Every issued tether key, newest first."""
    return [key_info(k) for k in await ctx.store.keys.list()]


@router.post("/api/keys", status_code=201, tags=["keys"])
async def issue_key(body: KeyIssueRequest, admin: Admin, ctx: Ctx) -> IssuedKeyResponse:
    """Issue a tether key for a serial (at most 12 weeks); the response holds the key text."""
    lifetime = parse_duration(body.expires)
    ports = check_ports(body.ports) if body.ports is not None else None
    relay = check_text(body.relay, "relay") if body.relay is not None else None
    token, claims = await ctx.authority.issue_key(
        body.serial, lifetime=lifetime, ports=ports, relay=relay, issued_by=admin.name
    )
    issued = await ctx.store.keys.get(claims.key_id)
    if issued is None:  # pragma: no cover - just recorded
        raise api_error(503, "the key was issued but cannot be read back; list the keys")
    return IssuedKeyResponse(key=token, **key_info(issued).model_dump())


@router.post("/api/keys/{key_id}/revoke", tags=["keys"])
async def revoke_key(
    key_id: KeyId, admin: Admin, ctx: Ctx, body: RevokeRequest | None = None
) -> KeyInfo:
    """Revoke a key: every relay drops its tether within a second."""
    reason = check_text((body or RevokeRequest()).reason, "reason")
    if await ctx.store.keys.get(key_id) is None:
        raise api_error(404, f"no key {key_id}")
    return key_info(await ctx.authority.revoke_key(key_id, reason=reason, by=admin.name))


# --- machines ---------------------------------------------------------------------


@router.post("/api/machines/{serial}/rebind", status_code=204, tags=["machines"])
async def rebind_machine(serial: Serial, body: RebindRequest, admin: Admin, ctx: Ctx) -> Response:
    """Forget the machine key bound to a serial: its next key or approved case binds anew."""
    reason = check_text(body.reason, "reason")
    if await ctx.store.machines.get(serial) is None:
        raise api_error(404, f"no machine is bound to serial {check_serial(serial)}")
    await ctx.authority.rebind_machine(serial, by=admin.name, reason=reason)
    return Response(status_code=204)


# --- engineers --------------------------------------------------------------------


async def _existing(ctx: ApiContext, name: str) -> Engineer:
    engineer = await ctx.store.engineers.get(name)
    if engineer is None:
        raise api_error(404, f"no engineer {name}")
    return engineer


def _not_yourself(admin: Admin, name: str, doing: str) -> None:
    if admin.name == name:
        raise api_error(409, f"you cannot {doing} your own account; ask another admin")


@router.get("/api/engineers", tags=["engineers"])
async def list_engineers(admin: Admin, ctx: Ctx) -> list[EngineerInfo]:
    """Every engineer account, by name."""
    return [engineer_info(e) for e in await ctx.store.engineers.list()]


@router.post("/api/engineers", status_code=201, tags=["engineers"])
async def add_engineer(body: EngineerCreate, admin: Admin, ctx: Ctx) -> EngineerInfo:
    """Add an engineer with a password (at least 12 characters)."""
    check_engineer_name(body.name)
    check_password(body.password)
    if await ctx.store.engineers.get(body.name) is not None:
        raise api_error(409, f"engineer {body.name} already exists")
    password_hash = await ctx.passwords.hash(body.password)
    try:
        added = await ctx.store.engineers.add(
            body.name, ctx.now(), admin=body.admin, password_hash=password_hash
        )
    except Refused as exc:
        raise api_error(409, str(exc)) from None
    await ctx.authority.record(
        "engineer.added", engineer=body.name, admin=body.admin, by=admin.name
    )
    return engineer_info(added)


@router.post("/api/engineers/{name}/disable", tags=["engineers"])
async def disable_engineer(
    name: Name, admin: Admin, ctx: Ctx, body: DisableRequest | None = None
) -> EngineerInfo:
    """Disable an engineer: relays refuse their certificates and cut their channels."""
    reason = check_text((body or DisableRequest()).reason, "reason")
    _not_yourself(admin, name, "disable")
    await _existing(ctx, name)
    disabled = await ctx.store.engineers.disable(name, reason=reason, now=ctx.now())
    await ctx.store.tokens.delete_engineer(name)
    await ctx.authority.record("engineer.disabled", engineer=name, by=admin.name, reason=reason)
    return engineer_info(disabled)


@router.post("/api/engineers/{name}/enable", tags=["engineers"])
async def enable_engineer(name: Name, admin: Admin, ctx: Ctx) -> EngineerInfo:
    """Enable a disabled engineer again."""
    await _existing(ctx, name)
    enabled = await ctx.store.engineers.enable(name)
    await ctx.authority.record("engineer.enabled", engineer=name, by=admin.name)
    return engineer_info(enabled)


@router.delete("/api/engineers/{name}", status_code=204, tags=["engineers"])
async def remove_engineer(name: Name, admin: Admin, ctx: Ctx) -> Response:
    """Remove an engineer: like disabling, and the account is gone."""
    _not_yourself(admin, name, "remove")
    await _existing(ctx, name)
    await ctx.store.engineers.remove(name, now=ctx.now())
    await ctx.authority.record("engineer.removed", engineer=name, by=admin.name)
    return Response(status_code=204)


# --- audit ------------------------------------------------------------------------


@router.get("/api/audit/heads", tags=["audit"])
async def audit_heads(admin: Admin, ctx: Ctx, mismatched: bool = False) -> list[AuditHeadInfo]:
    """Machines' audit chain heads as reported over their tethers, by serial.

    A head with ``mismatches > 0`` belongs to a machine whose audit log no longer holds
    what it reported before (rewritten, truncated or replaced); ``mismatched=true``
    lists only those.
    """
    return [
        AuditHeadInfo(
            serial=head.serial,
            machine_key=head.machine_key,
            seq=head.seq,
            hash=head.hash,
            received_at=head.received_at,
            mismatches=head.mismatches,
            mismatch=head.mismatch,
            mismatch_at=head.mismatch_at,
        )
        for head in await ctx.store.audit.heads(mismatched=mismatched)
    ]
