"""Errors of the vendor API: one shape, ``{"detail": "<plain words>"}``, never a 500 on bad input.

Our own exceptions map to status codes here (:class:`~tether.errors.BadInput` 400,
:class:`~tether.errors.Refused` 409, :class:`~tether.errors.NotReady` and database
trouble 503); request bodies and paths that do not match the contract become 400
with a sentence naming the field. Anything else is a bug: 500, logged with its
traceback (never with request bodies, which may hold passwords).
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from tether import log
from tether.errors import BadInput, NotReady, Refused, TetherError
from tether.store import ENGINEER_NAME_RULE, StoreConflict, StoreError

__all__ = [
    "ERROR_RESPONSES",
    "ErrorBody",
    "api_error",
    "check_text",
    "install_error_handlers",
]

logger = logging.getLogger("tether.vendor_service.api")

_SERIAL_RULE = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
_KEY_ID_RULE = "a key id: 1-64 letters, digits, '_' or '-'"
_RULES = {
    "name": f"use {ENGINEER_NAME_RULE}",
    "serial": f"use {_SERIAL_RULE}",
    "key_id": _KEY_ID_RULE,
}


class ErrorBody(BaseModel):
    """Every error response: what went wrong, in words a person can act on."""

    detail: str


#: Documented on every operation (so clients and schemathesis know the error shape).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {
        "model": ErrorBody,
        "description": (
            "400 bad input · 401 not logged in or session expired · 403 not allowed · "
            "404 no such thing · 409 conflict · 429 too many failed logins (Retry-After)"
        ),
    },
    503: {"model": ErrorBody, "description": "the database or a vendor file is unavailable"},
}


class ApiError(StarletteHTTPException):
    """An HTTP error with a plain-words detail (and optional headers)."""


def api_error(status: int, detail: str, headers: Mapping[str, str] | None = None) -> ApiError:
    """Build the error to raise for ``status`` with ``detail``."""
    return ApiError(status_code=status, detail=detail, headers=dict(headers or {}))


def check_text(value: str, what: str, *, multiline: bool = False) -> str:
    """Return ``value`` if it is storable plain text, else raise :class:`BadInput`.

    Refuses NUL and other control characters (tab and, with ``multiline``, line
    breaks excepted) and broken Unicode (lone surrogates), which neither PostgreSQL
    nor the audit log could keep.
    """
    allowed = {"\t", "\n", "\r"} if multiline else {"\t"}
    for char in value:
        if char in allowed:
            continue
        if unicodedata.category(char) in ("Cc", "Cs"):
            raise BadInput(f"{what} holds a control character or broken text; use plain text")
    return value


def _field(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "path", "query", "header")]
    return ".".join(parts)


def describe_validation(errors: Sequence[Any]) -> str:
    """Turn pydantic's error list into one sentence (without the values sent)."""
    sentences: list[str] = []
    for error in list(errors)[:3]:
        if not isinstance(error, Mapping):
            continue
        kind = str(error.get("type", ""))
        loc = error.get("loc", ())
        field = _field(loc if isinstance(loc, Sequence) else ())
        if kind == "json_invalid":
            sentences.append("the request body is not valid JSON")
        elif kind == "missing" and not field:
            sentences.append("a JSON request body is required")
        elif kind == "string_pattern_mismatch" and field.rsplit(".", 1)[-1] in _RULES:
            sentences.append(f"{field}: {_RULES[field.rsplit('.', 1)[-1]]}")
        elif kind == "extra_forbidden":
            sentences.append(f"{field}: unknown field (check its spelling)")
        else:
            message = str(error.get("msg", "invalid value"))
            sentences.append(f"{field}: {message}" if field else message)
    if not sentences:
        return "the request does not match the API"
    more = len(errors) - len(sentences)
    return "; ".join(sentences) + (f" (and {more} more)" if more > 0 else "")


def _json(status: int, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=dict(headers or {}))


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    return _json(400, describe_validation(errors))


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, StarletteHTTPException):  # pragma: no cover - registration
        raise exc
    detail = exc.detail if isinstance(exc.detail, str) else "request refused"
    return _json(exc.status_code, detail, exc.headers)


async def _on_tether(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, StoreConflict):
        return _json(409, "that conflicts with what is already stored")
    if isinstance(exc, StoreError):
        log.event(logger, "api.database_error", level=logging.ERROR, error=str(exc))
        return _json(503, "the database is not available right now; try again shortly")
    if isinstance(exc, NotReady):
        return _json(503, str(exc))
    if isinstance(exc, Refused):
        return _json(409, str(exc))
    if isinstance(exc, BadInput | TetherError):
        return _json(400, str(exc))
    raise exc  # pragma: no cover - registration


async def _on_bug(request: Request, exc: Exception) -> JSONResponse:
    logger.error(
        "api.internal_error method=%s path=%s", request.method, request.url.path, exc_info=exc
    )
    return _json(500, "internal error in the vendor service; see its log")


def install_error_handlers(app: FastAPI) -> None:
    """Make every error of ``app`` answer ``{"detail": "<plain words>"}``."""
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(TetherError, _on_tether)
    app.add_exception_handler(Exception, _on_bug)
