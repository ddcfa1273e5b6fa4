"""A minimal vendor service for engineer CLI tests: exactly the api_models contract, 4 endpoints.

``POST /api/login``, ``GET /api/me``, ``POST /api/certificates`` and ``GET /api/tethers``,
with the request and response bodies of :mod:`tether.vendor_service.api_models`, bearer tokens,
and errors as ``{"detail": "..."}`` with the contract's status codes (400 bad input,
401 not logged in). A login of an account with TOTP and no code is answered 401
"TOTP code required".

It stands in for :mod:`tether.vendor_service.api` until that exists; the tests that use it are
written against the contract, so they can run against the real service unchanged
(see ``test_engineer_flow_against_real_vendor_service``).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from tether.certs import EngineerCertificate, load_public_key
from tether.errors import TetherError
from tether.sshlib import asyncssh
from tether.vendor_service.api_models import (
    CertificateRequest,
    CertificateResponse,
    LoginRequest,
    LoginResponse,
    Me,
    Tether,
)

Signer = Callable[[str, asyncssh.SSHKey, timedelta], Awaitable[EngineerCertificate]]
TetherSource = Callable[[], Awaitable[list[Tether]]]


async def _no_tethers() -> list[Tether]:
    return []


def _engineer(request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
    """The engineer a bearer token belongs to; 401 otherwise."""
    stub: StubVendorAPI = request.app.state.stub
    scheme, _, token = (authorization or "").partition(" ")
    name = stub.tokens.get(token) if scheme.lower() == "bearer" else None
    if name is None:
        raise HTTPException(401, "not logged in or the session expired")
    return name


Engineer = Annotated[str, Depends(_engineer)]


@dataclass
class Account:
    """An engineer of the stub: password, optional TOTP code (fixed), active flag."""

    password: str
    totp: str | None = None
    active: bool = True


@dataclass
class StubVendorAPI:
    """The stub service's state and its FastAPI app.

    :param sign: signs an engineer's public key (e.g. ``vendor.authority.sign``).
    :param relay: ``HOST:PORT`` returned to engineers.
    :param relay_host_key: the relay's host public key line.
    :param support_account: the machines' support account.
    :param tethers: returns the live tethers.
    """

    sign: Signer
    relay: str
    relay_host_key: str
    support_account: str = "tether-support"
    tethers: TetherSource = _no_tethers
    accounts: dict[str, Account] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)

    def add(self, name: str, password: str, *, totp: str | None = None) -> None:
        """Create an engineer account."""
        self.accounts[name] = Account(password, totp)

    @property
    def app(self) -> FastAPI:
        """The ASGI app."""
        return self._build()

    def _build(self) -> FastAPI:
        app = FastAPI(title="stub vendor service")
        app.state.stub = self

        @app.middleware("http")
        async def record(request: Request, call_next: Any) -> Any:
            self.requests.append((request.method, request.url.path))
            return await call_next(request)

        @app.exception_handler(RequestValidationError)
        async def bad_input(request: Request, exc: RequestValidationError) -> JSONResponse:
            words = "; ".join(str(e.get("msg")) for e in exc.errors())
            return JSONResponse({"detail": f"bad input: {words}"}, status_code=400)

        @app.post("/api/login")
        async def login(body: LoginRequest) -> LoginResponse:
            account = self.accounts.get(body.name)
            if account is None or not secrets.compare_digest(account.password, body.password):
                raise HTTPException(401, "wrong name or password")
            if account.totp is not None:
                if body.totp is None:
                    raise HTTPException(401, "TOTP code required")
                if body.totp != account.totp:
                    raise HTTPException(401, "wrong TOTP code")
            if not account.active:
                raise HTTPException(403, "this engineer is disabled")
            token = secrets.token_urlsafe(32)
            self.tokens[token] = body.name
            return LoginResponse(
                token=token,
                expires_at=datetime.now(UTC) + timedelta(hours=12),
                engineer=body.name,
                admin=False,
            )

        @app.get("/api/me")
        async def me(name: Engineer) -> Me:
            return Me(engineer=name, admin=False, totp_enabled=self.accounts[name].totp is not None)

        @app.post("/api/certificates")
        async def certificates(body: CertificateRequest, name: Engineer) -> CertificateResponse:
            try:
                key = load_public_key(body.public_key)
                cert = await self.sign(name, key, timedelta(hours=body.ttl_hours))
            except TetherError as exc:
                raise HTTPException(400, str(exc)) from None
            return CertificateResponse(
                certificate=cert.openssh(),
                valid_after=cert.valid_after,
                valid_before=cert.valid_before,
                principals=list(cert.principals),
                relay=self.relay,
                relay_host_key=self.relay_host_key,
                support_account=self.support_account,
            )

        @app.get("/api/tethers")
        async def tethers(name: Engineer) -> list[Tether]:
            return await self.tethers()

        return app


class _QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers (the test owns Ctrl-C)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1 (OS-picked port) in this event loop; yield its URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = _QuietServer(config)
    task = asyncio.get_running_loop().create_task(server.serve(), name="stub-vendor-api")
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the stub vendor service stopped at start-up")
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
