"""The vendor service's HTTP API, as data: request and response bodies (pydantic).

This module is the contract between the vendor service (:mod:`tether.vendor_service.api`)
and its clients (the engineer CLI, the console page, scripts). Every endpoint
documented in :data:`ENDPOINTS` uses only these models. Authentication: ``POST
/api/login`` returns a bearer token; send ``Authorization: Bearer <token>``.
Admin-only endpoints answer 403 to engineers. Errors are ``{"detail": "<words>"}``
with 400 (bad input), 401 (not logged in / token expired), 403 (not allowed),
404 (no such thing), 409 (conflict, e.g. already exists).
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from tether.keys import SERIAL_PATTERN

NAME = r"^[a-z][a-z0-9._-]{0,31}$"
#: Any case; the service stores and answers the canonical (upper-case) form.
SERIAL = SERIAL_PATTERN


class Strict(BaseModel):
    """Unknown fields are refused: a typo must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


# --- sessions ---------------------------------------------------------------------


class LoginRequest(Strict):
    name: str = Field(pattern=NAME)
    password: str = Field(min_length=1, max_length=1024)
    totp: str | None = Field(default=None, pattern=r"^[0-9]{6}$")


class LoginResponse(Strict):
    token: str
    expires_at: datetime
    engineer: str
    admin: bool


class Me(Strict):
    engineer: str
    admin: bool
    totp_enabled: bool


# --- certificates -----------------------------------------------------------------


class CertificateRequest(Strict):
    public_key: str = Field(min_length=16, max_length=16384, description="OpenSSH public key line")
    ttl_hours: float = Field(default=8, gt=0, le=168)


class CertificateResponse(Strict):
    certificate: str = Field(description="OpenSSH user certificate line (…-cert-v01@openssh.com)")
    valid_after: datetime
    valid_before: datetime
    principals: list[str]
    relay: str = Field(description="HOST:PORT engineers connect to")
    relay_host_key: str = Field(description="the relay's host public key line, for known_hosts")
    support_account: str


# --- tethers, keys, cases ---------------------------------------------------------


class Tether(Strict):
    serial: str
    key_id: str
    relay_id: str
    since: datetime
    ports: list[int]
    expires_at: datetime
    description: str | None
    engineers: list[str] = Field(description="engineers with a channel open to it now")
    limits: list[str] | None = Field(
        default=None,
        description="what the customer's grant allows, as the machine reported it "
        "([]: nothing limited; null: not reported)",
    )


class KeyIssueRequest(Strict):
    serial: str = Field(pattern=SERIAL)
    expires: str = Field(default="14d", max_length=16, description="e.g. 8h, 14d, 12w (≤ 12 weeks)")
    ports: list[int] | None = Field(default=None, max_length=16)
    relay: str | None = Field(default=None, max_length=260)


class KeyInfo(Strict):
    key_id: str
    serial: str
    kind: str
    issued_at: datetime
    expires_at: datetime
    ports: list[int]
    relay: str
    used: bool
    revoked: bool
    revoke_reason: str | None
    description: str | None


class IssuedKeyResponse(KeyInfo):
    key: str = Field(description="the tether key to send to the customer")


class RevokeRequest(Strict):
    reason: str = Field(default="revoked by vendor", min_length=1, max_length=500)


class Case(Strict):
    id: int
    serial: str
    machine_key: str = Field(description="SHA256 fingerprint of the machine key that asked")
    machine: str = Field(
        description="known: the serial is bound to this machine key; new: no machine is bound "
        "yet (approving binds it to this key); other: bound to another machine key "
        "(re-bind a replaced machine first)"
    )
    description: str
    status: str = Field(description="pending | issued | denied | cancelled")
    created_at: datetime
    decided_by: str | None
    decided_at: datetime | None
    key_id: str | None
    limits: list[str] | None = Field(
        default=None, description="what the customer's grant will allow (null: not said)"
    )


class DenyRequest(Strict):
    reason: str = Field(default="denied by vendor", min_length=1, max_length=500)


class RebindRequest(Strict):
    reason: str = Field(min_length=1, max_length=500)


class RevealedPassword(Strict):
    key_id: str
    serial: str
    account: str
    password: str


# --- engineers (admin) ------------------------------------------------------------


class EngineerCreate(Strict):
    name: str = Field(pattern=NAME)
    password: str = Field(min_length=12, max_length=1024)
    admin: bool = False


class EngineerInfo(Strict):
    name: str
    admin: bool
    active: bool
    totp_enabled: bool
    created_at: datetime


class TotpSetup(Strict):
    secret: str
    uri: str = Field(description="otpauth:// URI for an authenticator app")


class DisableRequest(Strict):
    reason: str = Field(default="disabled by vendor", min_length=1, max_length=500)


class AuditHeadInfo(Strict):
    """The audit chain head a machine last reported over its tether, and any mismatch."""

    serial: str
    machine_key: str = Field(description="SHA256 fingerprint of the machine key")
    seq: int
    hash: str
    received_at: datetime
    mismatches: int = Field(description="times the machine's log was found rewritten")
    mismatch: str | None = Field(description="the last mismatch, in words")
    mismatch_at: datetime | None


#: method, path, who, request model, response model — the whole API at a glance.
ENDPOINTS: tuple[tuple[str, str, str, str | None, str | None], ...] = (
    ("POST", "/api/login", "anyone", "LoginRequest", "LoginResponse"),
    ("POST", "/api/logout", "engineer", None, None),
    ("GET", "/api/me", "engineer", None, "Me"),
    ("POST", "/api/me/totp", "engineer", None, "TotpSetup"),
    ("POST", "/api/certificates", "engineer", "CertificateRequest", "CertificateResponse"),
    ("GET", "/api/tethers", "engineer", None, "list[Tether]"),
    ("GET", "/api/cases", "engineer", None, "list[Case]"),
    ("POST", "/api/cases/{id}/approve", "engineer", None, "Case"),
    ("POST", "/api/cases/{id}/deny", "engineer", "DenyRequest", "Case"),
    ("POST", "/api/keys/{key_id}/password", "engineer", None, "RevealedPassword"),
    ("GET", "/api/keys", "admin", None, "list[KeyInfo]"),
    ("POST", "/api/keys", "admin", "KeyIssueRequest", "IssuedKeyResponse"),
    ("POST", "/api/keys/{key_id}/revoke", "admin", "RevokeRequest", "KeyInfo"),
    ("POST", "/api/machines/{serial}/rebind", "admin", "RebindRequest", None),
    ("GET", "/api/engineers", "admin", None, "list[EngineerInfo]"),
    ("POST", "/api/engineers", "admin", "EngineerCreate", "EngineerInfo"),
    ("POST", "/api/engineers/{name}/disable", "admin", "DisableRequest", "EngineerInfo"),
    ("POST", "/api/engineers/{name}/enable", "admin", None, "EngineerInfo"),
    ("DELETE", "/api/engineers/{name}", "admin", None, None),
    ("GET", "/api/audit/heads", "admin", None, "list[AuditHeadInfo]"),
)
