"""The vendor service's web app: the HTTP API and the console, around one authority.

The console's forms call the API's own endpoint functions, so both see the same rules;
this module composes them (and nothing imports it back).
"""

from __future__ import annotations

from fastapi import FastAPI

from tether import __version__
from tether.clock import SYSTEM_CLOCK, Clock
from tether.errors import NotReady
from tether.seal import SealPrivateKey
from tether.vendor_service.api import router as api_router
from tether.vendor_service.api_admin import router as admin_router
from tether.vendor_service.api_auth import ApiContext, LoginLimiter
from tether.vendor_service.api_credentials import Passwords
from tether.vendor_service.api_errors import ERROR_RESPONSES, install_error_handlers
from tether.vendor_service.authority import Authority
from tether.vendor_service.console import mount_console
from tether.vendor_service.metrics import RequestMetrics, VendorMetrics
from tether.webui.security import MAX_REQUEST_BODY, install_trusted_proxies


def _relay_host_key_line(authority: Authority) -> str:
    path = authority.config.relay_host_key_path.with_name(
        authority.config.relay_host_key_path.name + ".pub"
    )
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise NotReady(f"cannot read the relay host key {path}: {exc.strerror}") from None


def create_app(
    authority: Authority,
    *,
    clock: Clock = SYSTEM_CLOCK,
    seal_key: SealPrivateKey | None,
    passwords: Passwords | None = None,
    metrics: VendorMetrics | None = None,
) -> FastAPI:
    """Build the vendor API around ``authority`` (its config, store and keys).

    Every route, the console's included, reads at most
    :data:`~tether.webui.security.MAX_REQUEST_BODY` of a request body (413 beyond).

    :param clock: the time used for sessions, logins and decisions.
    :param seal_key: opens sealed support passwords; ``None``: reveals answer 503.
    :param passwords: the argon2 hasher (argon2-cffi's defaults when ``None``).
    :param metrics: where to count requests (by route template and status), if anywhere.
    """
    app = FastAPI(
        title=f"Tether vendor service ({authority.config.vendor})",
        version=__version__,
        description=(
            "Engineers log in (POST /api/login) and send `Authorization: Bearer <token>`. "
            'Errors are {"detail": "<plain words>"}.'
        ),
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
        responses=ERROR_RESPONSES,
        max_body_size=MAX_REQUEST_BODY,
    )
    app.state.tether = ApiContext(
        authority=authority,
        clock=clock,
        seal_key=seal_key,
        passwords=passwords or Passwords(),
        limiter=LoginLimiter(clock),
        relay_host_key=_relay_host_key_line(authority),
    )
    install_error_handlers(app)
    app.include_router(api_router)
    app.include_router(admin_router)
    mount_console(app)
    if metrics is not None:
        app.add_middleware(RequestMetrics, metrics=metrics)
    install_trusted_proxies(app, authority.config.trusted_proxies)  # last: runs first
    return app
