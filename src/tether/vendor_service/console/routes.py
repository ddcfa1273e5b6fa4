"""The console's pages and actions (see the package docstring)."""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException

from tether.agent.logins import describe_entry
from tether.audit import AuditEntry, Verification
from tether.errors import TetherError
from tether.keys import parse_ports
from tether.vendor_service import api, api_admin
from tether.vendor_service.api_auth import (
    ApiContext,
    Principal,
    api_context,
    current_admin,
    current_engineer,
)
from tether.vendor_service.api_errors import describe_validation
from tether.vendor_service.api_models import (
    DenyRequest,
    DisableRequest,
    EngineerCreate,
    KeyIssueRequest,
    LoginRequest,
    RevokeRequest,
)
from tether.vendor_service.authority import Authority
from tether.webui import STATIC_DIR
from tether.webui.security import (
    CSRF_REFUSED,
    csrf_ok,
    csrf_token,
    install_security_headers,
    set_session_cookie,
    templates,
)

logger = logging.getLogger("tether.vendor_service.console")

PREFIX = "/console"
COOKIE = "tether_console"
LOGIN_COOKIE = "tether_console_login"
FLASH_COOKIE = "tether_console_flash"
#: The CSRF token is an HMAC of the (secret, HttpOnly) session token: every vendor
#: service process derives the same one, so it works behind a load balancer too.
_CSRF_KEY = b"tether-console-csrf"
_TEMPLATES = templates(Path(__file__).parent / "templates")
AUDIT_SHOWN = 100


async def read_audit(
    authority: Authority, limit: int = AUDIT_SHOWN
) -> tuple[list[AuditEntry], Verification]:
    """The newest vendor audit entries and the chain check: the console's only audit read."""
    report = await authority.audit_report()
    return list(report.entries[-limit:]), report.verification


def problem(exc: Exception) -> str:
    """What went wrong, in the API's plain words."""
    if isinstance(exc, HTTPException):
        return exc.detail if isinstance(exc.detail, str) else "refused"
    if isinstance(exc, ValidationError):
        return describe_validation(exc.errors())
    return str(exc)


_ERRORS = (HTTPException, ValidationError, TetherError)


def _redirect(to: str = PREFIX + "/") -> RedirectResponse:
    return RedirectResponse(to, status_code=303)


def _raw(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def _text(form: FormData, name: str) -> str:
    return _raw(form, name).strip()


def _key_id(form: FormData) -> str:
    key_id = _text(form, "key_id")
    if not re.fullmatch(api.KEY_ID_PATTERN, key_id):
        raise TetherError("that is not a key id")
    return key_id


async def _caller(request: Request, ctx: ApiContext) -> Principal | None:
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    try:
        return await current_engineer(
            ctx, HTTPAuthorizationCredentials(scheme="Bearer", credentials=token)
        )
    except HTTPException:
        return None


def _render(
    request: Request, name: str, csrf: str, status_code: int = 200, **context: Any
) -> HTMLResponse:
    flash = request.cookies.get(FLASH_COOKIE)
    context.update(root=PREFIX, csrf=csrf)
    if flash and not name.startswith("_"):
        bad, _, text = flash.partition(":")
        context.update(flash=text, flash_bad=bad == "bad")
    response = _TEMPLATES.TemplateResponse(request, name, context, status_code=status_code)
    if flash and not name.startswith("_"):
        response.delete_cookie(FLASH_COOKIE, path=PREFIX)
    return response


def _flash(response: Response, text: str, *, bad: bool = False) -> Response:
    value = ("bad:" if bad else "ok:") + " ".join(text.split())[:300]
    response.set_cookie(
        FLASH_COOKIE, value, max_age=60, httponly=True, samesite="strict", path=PREFIX
    )
    return response


def mount_console(app: FastAPI) -> None:
    """Add the console to the vendor service's ``app`` under ``/console``."""
    router = APIRouter(prefix=PREFIX, include_in_schema=False)
    install_security_headers(app, PREFIX)
    app.mount(PREFIX + "/static/ui", StaticFiles(directory=STATIC_DIR), name="console-ui")

    async def session(request: Request) -> tuple[ApiContext, Principal | None, str]:
        ctx = api_context(request)
        caller = await _caller(request, ctx)
        token = request.cookies.get(COOKIE, "")
        return ctx, caller, csrf_token(_CSRF_KEY, token) if caller else ""

    async def act(
        request: Request, do: Callable[[ApiContext, Principal, FormData], Awaitable[str]]
    ) -> Response:
        """Run one action as the logged-in engineer after the CSRF check; flash its outcome."""
        ctx, caller, csrf = await session(request)
        if not await csrf_ok(request, csrf):
            return _render(
                request, "refused.html", "", 403, message=CSRF_REFUSED, back=PREFIX + "/"
            )
        if caller is None:
            return _redirect(PREFIX + "/login")
        form = await request.form()
        try:
            message = await do(ctx, caller, form)
        except _ERRORS as exc:
            return _flash(_redirect(), problem(exc), bad=True)
        return _flash(_redirect(), message)

    # --- logging in ----------------------------------------------------------------

    @router.get("/login", response_class=HTMLResponse)
    async def login_form(request: Request) -> Response:
        pre = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(32)
        response = _render(request, "console_login.html", csrf_token(_CSRF_KEY, "login:" + pre))
        set_session_cookie(response, LOGIN_COOKIE, pre, max_age=3600)
        return response

    @router.post("/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        pre = request.cookies.get(LOGIN_COOKIE, "")
        expected = csrf_token(_CSRF_KEY, "login:" + pre) if pre else ""
        if not await csrf_ok(request, expected):
            return _render(
                request, "refused.html", "", 403, message=CSRF_REFUSED, back=PREFIX + "/login"
            )
        form = await request.form()
        name = _text(form, "name")
        try:
            body = LoginRequest(
                name=name, password=_raw(form, "password"), totp=_text(form, "totp") or None
            )
            done = await api.login(body, api_context(request), Response(), request)
        except _ERRORS as exc:
            return _render(
                request, "console_login.html", expected, 401, error=problem(exc), engineer=name
            )
        response = _redirect()
        set_session_cookie(response, COOKIE, done.token, max_age=12 * 3600)
        response.delete_cookie(LOGIN_COOKIE, path="/")
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        ctx, caller, csrf = await session(request)
        if not await csrf_ok(request, csrf):
            return _render(
                request, "refused.html", "", 403, message=CSRF_REFUSED, back=PREFIX + "/"
            )
        if caller is not None:
            await api.logout(caller, ctx)
        response = _redirect(PREFIX + "/login")
        response.delete_cookie(COOKIE, path="/")
        return response

    # --- pages -------------------------------------------------------------------------

    async def tethers_context(ctx: ApiContext, caller: Principal) -> dict[str, Any]:
        return {"tethers": await api.list_tethers(caller, ctx), "me": caller}

    @router.get("/", response_class=HTMLResponse)
    async def index(request: Request) -> Response:
        return await index_page(request)

    async def index_page(request: Request, status_code: int = 200, **extra: Any) -> Response:
        ctx, caller, csrf = await session(request)
        if caller is None:
            return _redirect(PREFIX + "/login")
        context = await tethers_context(ctx, caller)
        context["cases"] = await api.list_cases(caller, ctx)
        context["policy"] = str(ctx.config.request_policy)
        if caller.admin:
            context["keys"] = (await api_admin.list_keys(caller, ctx))[:50]
            context["engineers"] = await api_admin.list_engineers(caller, ctx)
            entries, check = await read_audit(ctx.authority)
            context["audit"] = [
                {"seq": e.seq, "at": f"{e.at:%Y-%m-%d %H:%M:%S}", "what": describe_entry(e)}
                for e in reversed(entries)
            ]
            context["audit_ok"] = check.ok
            context["audit_verdict"] = (
                f"chain intact: {check.entries} entries, none changed or missing"
                if check.ok
                else "CHAIN BROKEN: " + "; ".join(p.message for p in check.problems[:5])
            )
        context.setdefault("values", {})
        context.update(extra)
        return _render(request, "console.html", csrf, status_code, **context)

    @router.get("/fragment/tethers", response_class=HTMLResponse)
    async def fragment_tethers(request: Request) -> Response:
        ctx, caller, csrf = await session(request)
        if caller is None:
            return Response(status_code=401, headers={"HX-Redirect": PREFIX + "/login"})
        return _render(request, "_tethers.html", csrf, **await tethers_context(ctx, caller))

    # --- actions -----------------------------------------------------------------------

    @router.post("/keys", response_class=HTMLResponse)
    async def issue_key(request: Request) -> Response:
        ctx, caller, csrf = await session(request)
        if not await csrf_ok(request, csrf):
            return _render(
                request, "refused.html", "", 403, message=CSRF_REFUSED, back=PREFIX + "/"
            )
        if caller is None:
            return _redirect(PREFIX + "/login")
        form = await request.form()
        values = {k: _text(form, k) for k in ("serial", "expires", "ports", "relay")}
        try:
            admin = await current_admin(caller)
            body = KeyIssueRequest(
                serial=values["serial"],
                expires=values["expires"] or "14d",
                ports=list(parse_ports(values["ports"])) if values["ports"] else None,
                relay=values["relay"] or None,
            )
            issued = await api_admin.issue_key(body, admin, ctx)
        except _ERRORS as exc:
            # Next to the form for an admin; at the top for anyone else (who has no form).
            where = "issue_error" if caller.admin else "flash"
            extra = {where: problem(exc), "flash_bad": True}
            return await index_page(request, 400, values=values, **extra)
        return await index_page(request, 201, issued=issued)

    async def revoke(ctx: ApiContext, caller: Principal, form: FormData) -> str:
        admin = await current_admin(caller)
        key_id = _key_id(form)
        reason = _text(form, "reason") or "revoked in the vendor console"
        info = await api_admin.revoke_key(key_id, admin, ctx, RevokeRequest(reason=reason))
        return f"Key {info.key_id} for {info.serial} revoked; its tether is being dropped."

    async def approve(ctx: ApiContext, caller: Principal, form: FormData) -> str:
        case_id = _case_id(form)
        case = await api.approve_case(case_id, caller, ctx)
        return f"Case {case.id} approved; the key goes to {case.serial}."

    async def deny(ctx: ApiContext, caller: Principal, form: FormData) -> str:
        case_id = _case_id(form)
        reason = _text(form, "reason") or "denied in the vendor console"
        case = await api.deny_case(case_id, caller, ctx, DenyRequest(reason=reason))
        return f"Case {case.id} denied."

    async def add_engineer(ctx: ApiContext, caller: Principal, form: FormData) -> str:
        admin = await current_admin(caller)
        body = EngineerCreate(
            name=_text(form, "name"),
            password=_raw(form, "password"),
            admin=_text(form, "admin") == "yes",
        )
        added = await api_admin.add_engineer(body, admin, ctx)
        return f"Engineer {added.name} added."

    async def disable_engineer(ctx: ApiContext, caller: Principal, form: FormData) -> str:
        admin = await current_admin(caller)
        name = _text(form, "name")
        await api_admin.disable_engineer(
            name, admin, ctx, DisableRequest(reason="disabled in the vendor console")
        )
        return f"Engineer {name} disabled; their certificates stop working now."

    async def enable_engineer(ctx: ApiContext, caller: Principal, form: FormData) -> str:
        admin = await current_admin(caller)
        name = _text(form, "name")
        await api_admin.enable_engineer(name, admin, ctx)
        return f"Engineer {name} enabled."

    for path, action in (
        ("/keys/revoke", revoke),
        ("/cases/approve", approve),
        ("/cases/deny", deny),
        ("/engineers", add_engineer),
        ("/engineers/disable", disable_engineer),
        ("/engineers/enable", enable_engineer),
    ):

        async def endpoint(request: Request, action: Any = action) -> Response:
            return await act(request, action)

        router.add_api_route(path, endpoint, methods=["POST"], name=f"console{path}")

    @router.post("/keys/password", response_class=HTMLResponse)
    async def reveal(request: Request) -> Response:
        ctx, caller, csrf = await session(request)
        if not await csrf_ok(request, csrf):
            return _render(
                request, "refused.html", "", 403, message=CSRF_REFUSED, back=PREFIX + "/"
            )
        if caller is None:
            return _redirect(PREFIX + "/login")
        form = await request.form()
        try:
            revealed = await api.reveal_password(_key_id(form), caller, ctx, Response())
        except _ERRORS as exc:
            return _flash(_redirect(), problem(exc), bad=True)
        return _render(request, "console_password.html", csrf, revealed=revealed)

    app.include_router(router)

    @app.get(PREFIX, include_in_schema=False)
    async def bare() -> Response:
        return _redirect()


def _case_id(form: FormData) -> int:
    text = _text(form, "case_id")
    if not text.isdigit() or not 1 <= int(text) <= 2**31:
        raise TetherError("no such case")
    return int(text)
