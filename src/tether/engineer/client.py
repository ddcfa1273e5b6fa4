"""A client of the vendor service's HTTP API (:mod:`tether.vendor_service.api_models`).

Only the four endpoints the engineer CLI needs: ``POST /api/login``, ``GET /api/me``,
``POST /api/certificates`` and ``GET /api/tethers``. Every failure becomes one of our
own errors with plain words: the service is unreachable (with the URL), the login was
refused (in the service's own words), the session ended (how to log in again), or
the URL does not lead to a Tether vendor service.

The bearer token is sent in the ``Authorization`` header only; it never appears in
an error message or a log line.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import BaseModel, ValidationError

from tether.errors import BadInput, NotReady, Refused
from tether.vendor_service.api_models import (
    CertificateRequest,
    CertificateResponse,
    LoginRequest,
    LoginResponse,
    Me,
    Tether,
)

ModelT = TypeVar("ModelT", bound=BaseModel)

#: How long one request may take before the service counts as unreachable.
DEFAULT_TIMEOUT = 15.0

#: Words in a refused login that mean "send a TOTP code as well".
_TOTP_WORDS = re.compile(r"totp|one[- ]time|two[- ]factor|2fa|authenticator", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_BREAKS = re.compile(r"\s*[\t\n\r]\s*")
_MAX_DETAIL = 300


class VendorUnreachable(NotReady):
    """The vendor service did not answer (exit 1)."""


class SessionExpired(NotReady):
    """The service no longer accepts our token (exit 1)."""


class LoginRefused(Refused):
    """The service refused the name, password or TOTP code (exit 1)."""


class TotpRequired(LoginRefused):
    """The service wants a TOTP code with the password."""


def check_vendor_url(url: str) -> tuple[str, str | None]:
    """Normalise a vendor URL; return it and a warning when it is not protected by TLS.

    Only ``http`` and ``https`` URLs with a host are accepted (:class:`BadInput`
    otherwise); a trailing ``/`` is dropped. Plain ``http://`` is accepted quietly for
    loopback hosts (a demo, a test, an SSH tunnel) and with a warning for any other
    host, since the password and the token would cross the network unencrypted.
    """
    text = url.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadInput(
            f"invalid vendor URL {url!r}: give the service's address, e.g. https://tether.example.com"
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise BadInput(f"invalid vendor URL {url!r}: give it without user, query or fragment")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise BadInput(f"invalid vendor URL {url!r}: the port is not a number 1-65535") from None
    normal = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
    warning = None
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        warning = (
            f"{normal} does not use TLS: your password and token cross the network "
            "unencrypted; use an https:// URL"
        )
    return normal, warning


def _is_loopback(host: str) -> bool:
    """Whether ``host`` names this computer (traffic to it never crosses a network)."""
    if host.lower() in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def clean_detail(text: str) -> str:
    """Make a message from the server safe to print: no control characters, bounded length."""
    cleaned = _CONTROL.sub("?", _BREAKS.sub(" ", text)).strip()
    return cleaned if len(cleaned) <= _MAX_DETAIL else cleaned[: _MAX_DETAIL - 1] + "…"


def _detail(response: httpx.Response) -> str:
    """The ``detail`` of an error body, in words (FastAPI's validation lists joined)."""
    try:
        body = response.json()
    except ValueError:
        return clean_detail(response.text) or response.reason_phrase
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str):
        return clean_detail(detail)
    if isinstance(detail, list):
        words = []
        for item in detail:
            if isinstance(item, dict):
                where = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
                words.append(f"{where}: {item.get('msg', '')}" if where else str(item.get("msg")))
        return clean_detail("; ".join(words)) or response.reason_phrase
    return response.reason_phrase


def _parse(model: type[ModelT], data: Any, *, url: str) -> ModelT:
    """Validate a response body, ignoring fields this client does not know (newer services)."""
    if isinstance(data, Mapping):
        data = {k: v for k, v in data.items() if k in model.model_fields}
    try:
        return model.model_validate(data)
    except ValidationError:
        raise NotReady(
            f"{url} did not answer like a Tether vendor service (unexpected {model.__name__}); "
            "check the URL"
        ) from None


class VendorClient:
    """An async client of one vendor service.

    :param base_url: the service's URL (see :func:`check_vendor_url`).
    :param token: the bearer token, for every endpoint but login.
    :param transport: an httpx transport (tests inject one; ``None`` is the network).
    :param timeout: seconds a request may take.

    Use as ``async with VendorClient(url) as client: ...``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """Prepare the connection pool; nothing is sent yet."""
        self.base_url = base_url
        self._token = token
        self._http = httpx.AsyncClient(
            base_url=base_url,
            transport=transport,
            timeout=timeout,
            follow_redirects=False,
            headers={"Accept": "application/json", "User-Agent": "tether-engineer-cli"},
        )

    async def __aenter__(self) -> VendorClient:
        """Use the client in ``async with``."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the connection pool."""
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    def set_token(self, token: str) -> None:
        """Use ``token`` for the following requests."""
        self._token = token

    # --- endpoints -----------------------------------------------------------------

    async def login(self, name: str, password: str, totp: str | None = None) -> LoginResponse:
        """``POST /api/login``: raise :class:`TotpRequired` when a code is needed but not sent."""
        try:
            request = LoginRequest(name=name, password=password, totp=totp)
        except ValidationError:
            raise BadInput(
                "cannot send that login: the name must be a valid engineer name, the password "
                "1-1024 characters and a TOTP code 6 digits"
            ) from None
        body = request.model_dump(exclude_none=True)
        response = await self._send("POST", "/api/login", json=body, auth=False)
        if response.status_code in (400, 401, 403):
            detail = _detail(response)
            if totp is None and _TOTP_WORDS.search(detail):
                raise TotpRequired(detail)
            raise LoginRefused(f"the vendor service refused the login as {name}: {detail}")
        return _parse(LoginResponse, self._json(response), url=self.base_url)

    async def me(self) -> Me:
        """``GET /api/me``: who the token belongs to."""
        response = await self._send("GET", "/api/me")
        return _parse(Me, self._json(response), url=self.base_url)

    async def certificate(self, public_key: str, ttl_hours: float) -> CertificateResponse:
        """``POST /api/certificates``: have ``public_key`` signed for ``ttl_hours``."""
        body = CertificateRequest(public_key=public_key, ttl_hours=ttl_hours).model_dump()
        response = await self._send("POST", "/api/certificates", json=body)
        return _parse(CertificateResponse, self._json(response), url=self.base_url)

    async def tethers(self) -> list[Tether]:
        """``GET /api/tethers``: the live tethers."""
        response = await self._send("GET", "/api/tethers")
        data = self._json(response)
        if not isinstance(data, list):
            raise NotReady(f"{self.base_url} did not answer like a Tether vendor service")
        return [_parse(Tether, item, url=self.base_url) for item in data]

    # --- plumbing ------------------------------------------------------------------

    async def _send(
        self, method: str, path: str, *, json: Any = None, auth: bool = True
    ) -> httpx.Response:
        """Send one request; turn transport failures and error statuses into our errors.

        Login's 400/401/403 are returned to :meth:`login`, which words them itself.
        """
        headers = {}
        if auth:
            if not self._token:
                raise SessionExpired("not logged in to the vendor service: run `tether login`")
            headers["Authorization"] = f"Bearer {self._token}"
        url = f"{self.base_url}{path}"
        try:
            response = await self._http.request(method, path, json=json, headers=headers)
        except httpx.TimeoutException:
            raise VendorUnreachable(
                f"the vendor service at {self.base_url} did not answer in time; "
                "check the URL and your network (VPN?)"
            ) from None
        except httpx.ConnectError as exc:
            raise VendorUnreachable(_connect_error(self.base_url, exc)) from None
        except httpx.HTTPError as exc:
            raise VendorUnreachable(
                f"talking to the vendor service at {self.base_url} failed: {clean_detail(str(exc))}"
            ) from None
        status = response.status_code
        if status < 300:
            return response
        if not auth and status in (400, 401, 403):
            return response
        detail = _detail(response)
        if status == 401:
            raise SessionExpired(
                f"the vendor service no longer accepts your login ({detail}): "
                f"run `tether login --vendor {self.base_url}` again"
            )
        if status == 403:
            raise Refused(f"the vendor service refused: {detail}")
        if status in (400, 409, 422):
            raise BadInput(f"the vendor service refused the request: {detail}")
        if status == 404 or 300 <= status < 400:
            raise NotReady(
                f"{url} answered HTTP {status}: is {self.base_url} the Tether vendor service?"
            )
        raise NotReady(f"the vendor service at {self.base_url} failed (HTTP {status}): {detail}")

    def _json(self, response: httpx.Response) -> Any:
        """The JSON body, or :class:`NotReady` saying the URL is not the vendor service."""
        try:
            return response.json()
        except ValueError:
            raise NotReady(
                f"{self.base_url} did not answer with JSON: is it the Tether vendor service?"
            ) from None


def _connect_error(base_url: str, exc: httpx.ConnectError) -> str:
    """Words for a connection that failed: TLS problems are told apart from refusals."""
    text = clean_detail(str(exc)) or type(exc).__name__
    if "SSL" in text or "certificate" in text.lower() or "TLS" in text:
        return (
            f"TLS with the vendor service at {base_url} failed ({text}); "
            "check the URL and that this computer trusts the service's certificate"
        )
    return f"cannot reach the vendor service at {base_url} ({text}); check the URL and your network"


__all__ = [
    "LoginRefused",
    "SessionExpired",
    "TotpRequired",
    "VendorClient",
    "VendorUnreachable",
    "check_vendor_url",
    "clean_detail",
]
