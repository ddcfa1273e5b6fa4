"""The customer's admin page: open and close support access, watch it, end sessions.

:func:`create_app` builds a FastAPI app around the running agent (:class:`~tether.agent.web.host.AgentHost`:
the daemon). Every change goes through the same functions the ``tether access`` CLI
uses (:class:`~tether.agent.access.AccessManager`, the daemon's reconcile), and the
page shows state in the CLI's words (:func:`tether.agent.status.describe_access`,
:meth:`~tether.agent.status.TunnelStatus.describe`).

Order of checks on every request: the client address (the one a trusted proxy names,
``[web] trusted_proxies``) against ``[web] allowed_clients`` (403, nothing else
happens); then the session; then, for a POST, the CSRF token (403, nothing changed).
Logins are throttled per browser or source (:mod:`tether.agent.web.auth`). Errors a
customer can cause (a bad key, a missing prerequisite) are shown in plain words next to
the field, never as a trace.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import FormData

from tether import log
from tether.agent.access import PasswordChoice
from tether.agent.machine.limits import FileTransfer, Limits
from tether.agent.machine.sessions import end_session, list_sessions
from tether.agent.recording.catalog import RecordingInfo
from tether.agent.recording.follow import live_sessions
from tether.agent.state import AccessMode, CloseReason
from tether.agent.web.auth import AdminPassword, DeviceCookies, Session, Sessions, Throttle
from tether.agent.web.host import AgentHost
from tether.agent.web.live import LiveStreams, add_consent_routes, add_live_routes, watchable
from tether.agent.web.oneclick import AccessOptions, OneClick
from tether.agent.web.recordings import add_recording_routes, recordings_view
from tether.agent.web.views import audit_view, status_view
from tether.durations import parse_duration
from tether.errors import BadInput, NotReady, TetherError
from tether.keys import TetherKeyError
from tether.tasks import TaskSet
from tether.webui import STATIC_DIR
from tether.webui.security import (
    CSRF_REFUSED,
    MAX_REQUEST_BODY,
    client_allowed,
    csrf_ok,
    csrf_token,
    from_the_machine,
    install_security_headers,
    install_trusted_proxies,
    is_loopback,
    loopback_host_header,
    parse_networks,
    set_session_cookie,
    templates,
)

logger = logging.getLogger("tether.agent.web")

COOKIE = "tether_agent_session"
#: Marks a browser that logged in before (:class:`~tether.agent.web.auth.DeviceCookies`).
DEVICE_COOKIE = "tether_agent_device"
DEVICE_MAX_AGE = 90 * 24 * 3600
_HERE = Path(__file__).parent
_TEMPLATES = templates(_HERE / "templates")


class AgentPage:
    """The page's state: sessions, throttle, the pending one-click request."""

    def __init__(self, host: AgentHost, tasks: TaskSet) -> None:
        self.host = host
        self.config = host.config
        self.password = AdminPassword(host.config.web_password_path)
        self.sessions = Sessions()
        self.throttle = Throttle()
        self.networks = parse_networks(host.config.web.allowed_clients)
        self.proxies = parse_networks(host.config.web.trusted_proxies)
        self.devices = DeviceCookies(self.password)
        self.secret = secrets.token_bytes(32)
        self.one_click = OneClick(host.access, tasks, host.reconcile)
        self.live_streams = LiveStreams()

    def csrf(self, session: Session | None) -> str:
        return csrf_token(self.secret, session.sid) if session else ""

    def render(
        self,
        request: Request,
        name: str,
        session: Session | None,
        status_code: int = 200,
        **context: Any,
    ) -> HTMLResponse:
        flash = session.flash if session else None
        if session is not None and not name.startswith("_"):
            session.flash = None
        context.update(
            root="",
            csrf=self.csrf(session),
            serial=self.config.serial,
            flash=flash[0] if flash else None,
            flash_bad=flash[1] if flash else False,
            logged_in=bool(session and session.admin),
        )
        return _TEMPLATES.TemplateResponse(request, name, context, status_code=status_code)

    def refuse(self, request: Request, status_code: int, message: str) -> HTMLResponse:
        return self.render(request, "refused.html", None, status_code, message=message, back="/")

    def local(self, request: Request) -> bool:
        """Whether ``request`` comes from the machine itself (loopback, not via a proxy)."""
        return from_the_machine(_source(request), request.headers.get("host"), self.proxies)

    def login_client(self, request: Request) -> tuple[str, str]:
        """Whose login attempts these are: ``(throttle key, words for a person)``.

        A browser that logged in before with this password is its own client; anyone
        else is counted by source address. A new password forgets every lockout.
        """
        if self.devices.password_changed():
            self.throttle.clear()
        device = self.devices.device(request.cookies.get(DEVICE_COOKIE))
        source = _source(request)
        return (f"device:{device}", "this browser") if device else (f"source:{source}", source)

    def remember_device(self, response: Response) -> None:
        """Give the browser a device cookie (it logged in with the password)."""
        value = self.devices.issue()
        if value is not None:
            set_session_cookie(response, DEVICE_COOKIE, value, max_age=DEVICE_MAX_AGE)


def _source(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _redirect(to: str) -> Response:
    return RedirectResponse(to, status_code=303)


def create_app(host: AgentHost, tasks: TaskSet) -> FastAPI:
    """The page's app around the running agent ``host``; background work goes to ``tasks``."""
    page = AgentPage(host, tasks)
    on_loopback = is_loopback(host.config.web.listen[0])
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, max_body_size=MAX_REQUEST_BODY)
    app.state.page = page

    @app.middleware("http")
    async def allowed_clients(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if not client_allowed(request.client.host if request.client else None, page.networks):
            log.event(logger, "web.client_refused", level=logging.WARNING, client=_source(request))
            return HTMLResponse(
                "403 Forbidden: this address may not use the Tether admin page "
                "(see [web] allowed_clients in the agent's configuration).\n",
                status_code=403,
            )
        if on_loopback and not loopback_host_header(request.headers.get("host")):
            log.event(logger, "web.host_refused", level=logging.WARNING, client=_source(request))
            return HTMLResponse(
                "403 Forbidden: open this page as http://127.0.0.1:PORT/ or http://localhost:PORT/ "
                "(it does not answer to other host names).\n",
                status_code=403,
            )
        return await call_next(request)

    install_security_headers(app)
    install_trusted_proxies(app, host.config.web.trusted_proxies)  # outermost: first to run
    app.mount("/static/ui", StaticFiles(directory=STATIC_DIR), name="ui")
    app.mount("/static/agent", StaticFiles(directory=_HERE / "static"), name="agent")

    def session_of(request: Request) -> Session | None:
        return page.sessions.get(request.cookies.get(COOKIE))

    async def guard(request: Request, *, admin: bool = True) -> Session | Response:
        """The session of a POST, or the response refusing it (nothing is changed)."""
        session = session_of(request)
        if not await csrf_ok(request, page.csrf(session)):
            log.event(logger, "web.csrf_refused", level=logging.WARNING, client=_source(request))
            return page.refuse(request, 403, CSRF_REFUSED)
        if session is None or (admin and not session.admin):
            return _redirect("/login")
        return session

    def with_cookie(response: Response, session: Session) -> Response:
        set_session_cookie(response, COOKIE, session.sid, max_age=12 * 3600)
        return response

    # --- logging in ----------------------------------------------------------------

    @app.get("/login", response_class=HTMLResponse)
    async def login_form(request: Request) -> Response:
        if not page.password.is_set():
            return _redirect("/setup")
        session = session_of(request) or page.sessions.new(admin=False)
        if session.admin:
            return _redirect("/")
        return with_cookie(page.render(request, "login.html", session), session)

    @app.post("/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        guarded = await guard(request, admin=False)
        if isinstance(guarded, Response):
            return guarded
        source = _source(request)
        client, who = page.login_client(request)
        # Counted before the password is checked: parallel guesses cannot slip past.
        wait = page.throttle.attempt(client)
        if wait is not None:
            log.event(logger, "web.login_limited", level=logging.WARNING, client=source)
            return page.render(
                request,
                "login.html",
                guarded,
                429,
                error=f"too many wrong passwords from {who}; try again in {wait} s "
                "(or set a new password on the machine: tether agent web-password)",
            )
        form = await request.form()
        password = _text(form, "password")
        if not await asyncio.to_thread(page.password.verify, password):
            log.event(logger, "web.login_failed", level=logging.WARNING, client=source)
            await page.throttle.failed(client)
            return page.render(request, "login.html", guarded, 401, error="wrong password")
        page.throttle.succeeded(client)
        page.sessions.drop(guarded.sid)  # a new id after login: no session fixation
        session = page.sessions.new(admin=True)
        log.event(logger, "web.login", client=source)
        response = with_cookie(_redirect("/"), session)
        page.remember_device(response)
        return response

    @app.get("/setup", response_class=HTMLResponse)
    async def setup_form(request: Request) -> Response:
        if page.password.is_set():
            return _redirect("/login")
        session = session_of(request) or page.sessions.new(admin=False)
        local = page.local(request)
        return with_cookie(page.render(request, "setup.html", session, local=local), session)

    @app.post("/setup", response_class=HTMLResponse)
    async def setup(request: Request) -> Response:
        guarded = await guard(request, admin=False)
        if isinstance(guarded, Response):
            return guarded
        if page.password.is_set():
            return _redirect("/login")
        if not page.local(request):
            return page.refuse(
                request,
                403,
                "The admin password can only be set from this machine itself "
                "(or with `tether agent install --web-password`).",
            )
        form = await request.form()
        try:
            await asyncio.to_thread(
                page.password.set, _text(form, "password"), _text(form, "confirm")
            )
        except BadInput as exc:
            return page.render(request, "setup.html", guarded, 400, local=True, error=str(exc))
        host.access.audit.append("web.password_set", by="web")
        page.sessions.drop(guarded.sid)
        response = with_cookie(_redirect("/"), page.sessions.new(admin=True))
        page.remember_device(response)
        return response

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        guarded = await guard(request)
        if isinstance(guarded, Response):
            return guarded
        page.sessions.drop(guarded.sid)
        response = _redirect("/login")
        response.delete_cookie(COOKIE, path="/")
        return response

    # --- the page --------------------------------------------------------------------

    def admin_or_login(request: Request) -> Session | Response:
        session = session_of(request)
        if session is None or not session.admin:
            target = "/login" if page.password.is_set() else "/setup"
            if request.headers.get("HX-Request"):
                return Response(status_code=401, headers={"HX-Redirect": target})
            return _redirect(target)
        return session

    add_recording_routes(app, page.config, admin_or_login, page.render)
    add_live_routes(
        app,
        page.config,
        admin_or_login,
        page.render,
        lambda: list_sessions(page.config),
        page.live_streams,
    )
    add_consent_routes(app, page.config, guard)

    async def status_context() -> dict[str, Any]:
        return await asyncio.to_thread(status_view, host, page.one_click)

    def sessions_now() -> dict[str, Any]:
        live = list_sessions(page.config)
        watch: dict[int, str] = {}
        waiting: list[RecordingInfo] = []
        if live:  # (the recordings are read only while someone is logged in)
            try:
                running = live_sessions(page.config.recordings_dir)
                watch = watchable(page.config.recordings_dir, running, live)
                waiting = [i for i in running if (i.consent or {}).get("state") == "waiting"]
            except OSError:
                pass  # listed all the same, without a live view or decisions
        return {"sessions": live, "watch": watch, "waiting": waiting, "sessions_error": None}

    async def sessions_context() -> dict[str, Any]:
        try:
            return await asyncio.to_thread(sessions_now)
        except (OSError, TetherError) as exc:
            return {
                "sessions": [],
                "watch": {},
                "waiting": [],
                "sessions_error": f"cannot list sessions: {exc}",
            }

    async def index_page(
        request: Request, session: Session, status_code: int = 200, **extra: Any
    ) -> HTMLResponse:
        context = await status_context()
        context.update(await sessions_context())
        context.update(await asyncio.to_thread(audit_view, host.access))
        context.update(await asyncio.to_thread(recordings_view, page.config))
        context.setdefault("errors", {})
        context.setdefault("values", {})
        context.update(extra)
        context["allowed_ports"] = page.config.allowed_ports
        return page.render(request, "index.html", session, status_code, **context)

    @app.get("/", response_class=HTMLResponse)
    async def index(request: Request) -> Response:
        session = admin_or_login(request)
        if isinstance(session, Response):
            return session
        return await index_page(request, session)

    @app.get("/fragment/status", response_class=HTMLResponse)
    async def fragment_status(request: Request) -> Response:
        session = admin_or_login(request)
        if isinstance(session, Response):
            return session
        return page.render(request, "_status.html", session, **await status_context())

    @app.get("/fragment/sessions", response_class=HTMLResponse)
    async def fragment_sessions(request: Request) -> Response:
        session = admin_or_login(request)
        if isinstance(session, Response):
            return session
        return page.render(request, "_sessions.html", session, **await sessions_context())

    # --- changing things ---------------------------------------------------------------

    @app.post("/access/enable", response_class=HTMLResponse)
    async def enable(request: Request) -> Response:
        guarded = await guard(request)
        if isinstance(guarded, Response):
            return guarded
        form = await request.form()
        mode = _text(form, "mode")
        values = {k: v for k, v in form.items() if isinstance(v, str) and "password" not in k}
        errors: dict[str, str] = {}
        options = _options(form, mode, errors, page.config.allowed_ports)
        if mode == "key" and not _text(form, "key").strip():
            errors["key"] = "paste the tether key the vendor sent you"
        if mode == "request" and not _text(form, "description").strip():
            errors["description"] = "describe the problem in a few words"
        allow_from = _allow_from(form, errors) if mode == "direct" else ()
        if mode not in ("key", "request", "direct"):
            errors["form"] = "choose how to open access"
        if errors or options is None:
            return await index_page(request, guarded, 400, errors=errors, values=values, mode=mode)
        try:
            if mode == "key":
                await asyncio.to_thread(
                    host.access.enable_with_key,
                    _text(form, "key"),
                    by="web",
                    duration=options.duration,
                    password=options.password,
                    ports=options.ports,
                    limits=options.limits,
                )
            elif mode == "direct":
                await asyncio.to_thread(
                    host.access.enable_direct,
                    by="web",
                    duration=options.duration,
                    allow_from=allow_from,
                    password=options.password,
                    limits=options.limits,
                )
            else:
                page.one_click.start(_text(form, "description").strip(), options)
        except TetherKeyError as exc:
            errors["key"] = str(exc)
        except TetherError as exc:
            errors["form"] = str(exc)
        if errors:
            return await index_page(request, guarded, 400, errors=errors, values=values, mode=mode)
        await host.reconcile()
        guarded.flash = (
            ("Support request sent; waiting for the vendor.", False)
            if mode == "request"
            else ("Support access opened.", False)
        )
        return _redirect("/")

    @app.post("/access/disable")
    async def disable(request: Request) -> Response:
        guarded = await guard(request)
        if isinstance(guarded, Response):
            return guarded
        before = host.access.state()
        withdrawn = page.one_click.cancel()  # closing also means: no key is wanted any more
        await asyncio.to_thread(host.access.close, CloseReason.CUSTOMER, by="web")
        await host.reconcile()
        guarded.flash = (
            ("Support access closed.", False)
            if before.is_open or before.in_transition or withdrawn
            else ("Support access was already closed.", False)
        )
        return _redirect("/")

    @app.post("/access/reset")
    async def reset(request: Request) -> Response:
        guarded = await guard(request)
        if isinstance(guarded, Response):
            return guarded
        state = host.access.state()
        if state.is_open and state.mode == AccessMode.TETHER and host.reset_tether():
            guarded.flash = ("Reconnecting the tether now.", False)
        else:
            guarded.flash = ("No tether is open; there is nothing to reconnect.", True)
        return _redirect("/")

    @app.post("/access/request/cancel")
    async def cancel_request(request: Request) -> Response:
        guarded = await guard(request)
        if isinstance(guarded, Response):
            return guarded
        cancelled = page.one_click.cancel()
        guarded.flash = (
            ("Support request withdrawn.", False)
            if cancelled
            else ("No support request was waiting.", True)
        )
        return _redirect("/")

    @app.post("/sessions/{pid}/end")
    async def end(request: Request, pid: int) -> Response:
        guarded = await guard(request)
        if isinstance(guarded, Response):
            return guarded
        try:
            ended = await asyncio.to_thread(end_session, page.config, pid)
        except NotReady as exc:
            guarded.flash = (str(exc), True)
            return _redirect("/")
        who = ended.engineer or "unknown engineer"
        host.access.audit.append(
            "session.ended",
            by="web",
            engineer=ended.engineer,
            pid=pid,
            source=ended.source,
            source_port=ended.source_port,
        )
        log.event(logger, "web.session_ended", engineer=ended.engineer, pid=pid)
        guarded.flash = (f"Ended the session of {who}.", False)
        return _redirect("/")

    return app


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def _options(
    form: FormData, mode: str, errors: dict[str, str], allowed: tuple[int, ...]
) -> AccessOptions | None:
    duration = None
    if text := _text(form, "duration").strip():
        try:
            duration = parse_duration(text)
        except BadInput as exc:
            errors["duration"] = str(exc)
    ports: tuple[int, ...] | None = None
    if mode != "direct":
        chosen = {p for p in form.getlist("ports") if isinstance(p, str) and p.isdigit()}
        ports = tuple(sorted(int(p) for p in chosen if int(p) in allowed))
        if not ports:
            errors["ports"] = "choose at least one port the engineers may reach"
    password = PasswordChoice()
    if _text(form, "password_choice") == "own":
        own, confirm = _text(form, "password"), _text(form, "password_confirm")
        # The field's name, not a secret:
        if len(own) < 12:
            errors["password"] = "the support account's password must have at least 12 characters"  # noqa: S105
        elif own != confirm:
            errors["password"] = "the two passwords differ; type the same password twice"  # noqa: S105
        password = PasswordChoice(own=own)
    limits = _limits(form, errors)
    return None if errors or limits is None else AccessOptions(duration, password, ports, limits)


def _limits(form: FormData, errors: dict[str, str]) -> Limits | None:
    """The grant's limits and consent as the form chose them (None, with errors, if bad)."""
    durations: dict[str, timedelta | None] = {}
    for name in ("max_session", "consent_timeout"):
        durations[name] = None
        if text := _text(form, name).strip():
            try:
                durations[name] = parse_duration(text)
            except BadInput as exc:
                errors[name] = str(exc)
    try:
        files = FileTransfer(_text(form, "files") or FileTransfer.BOTH.value)
    except ValueError:
        errors["limits"] = "choose how files may be transferred"
        return None
    ask = _text(form, "consent") == "ask"
    wait = durations["consent_timeout"]
    if _text(form, "no_shell") and files == FileTransfer.OFF:
        errors["limits"] = (
            "no shell and no file transfer would allow nothing: allow a shell or a way "
            "to transfer files"
        )
    if errors:
        return None
    try:
        return Limits(
            shell=not _text(form, "no_shell"),
            files=files,
            sudo=not _text(form, "no_sudo"),
            max_session=durations["max_session"],
            consent=ask,
            auto_admit=ask and _text(form, "consent_on_timeout") == "admit",
            **({"consent_timeout": wait} if ask and wait is not None else {}),
        )
    except BadInput as exc:
        errors["limits"] = (
            str(exc)
            .replace("--max-session", "a session's length")
            .replace("--consent-timeout", "the time to answer")
        )
        return None


def _allow_from(form: FormData, errors: dict[str, str]) -> tuple[str, ...]:
    sources = tuple(a.strip() for a in _text(form, "allow_from").split(",") if a.strip())
    for source in sources:
        try:
            ipaddress.ip_network(source, strict=False)
        except ValueError:
            errors["allow_from"] = (
                f"{source!r} is not an address or network (e.g. 192.0.2.7 or 192.0.2.0/24)"
            )
    return sources
