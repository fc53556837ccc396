"""Turning errors into RFC 9457 problem+json answers: one table, one place.

No answer ever echoes the request's input back: a 50 MB field must not come back
as a 50 MB error, and a non-finite number in it could not even be serialised.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException

from cloudlet import errors
from cloudlet.schemas.common import PROBLEM_MEDIA_TYPE, problem_body

log = logging.getLogger(__name__)

MEDIA_TYPE = PROBLEM_MEDIA_TYPE
#: Per-field errors listed in a 422 at most; the rest are counted.
MAX_FIELD_ERRORS = 20

# Most specific first: the first matching class decides.
ERROR_TABLE: list[tuple[type[errors.CloudletError], int, str, str]] = [
    (errors.TokenExpiredError, 401, "token-expired", "Token expired"),
    (errors.TokenRevokedError, 401, "token-revoked", "Token revoked"),
    (errors.AuthError, 401, "auth", "Not authenticated"),
    (errors.QuotaExceededError, 403, "quota-exceeded", "Quota exceeded"),
    (errors.ForbiddenError, 403, "forbidden", "Forbidden"),
    (errors.NotFoundError, 404, "not-found", "Not found"),
    (errors.ConflictError, 409, "conflict", "Conflict"),
    (errors.PlacementError, 409, "no-placement", "No site fits"),
    (errors.TooLargeError, 413, "too-large", "Too large"),
    (errors.InvalidInputError, 422, "invalid-input", "Invalid input"),
    (errors.IntegrityError, 422, "digest-mismatch", "Digest mismatch"),
    (errors.SignatureError, 400, "bad-signature", "Bad signature"),
    (errors.ConfigError, 422, "invalid-input", "Invalid input"),
    (errors.BlobStoreError, 503, "blob-store", "Artifact store unavailable"),
]
_HTTP_SLUGS = {
    400: "malformed-body",
    401: "auth",
    404: "not-found",
    405: "method-not-allowed",
    413: "too-large",
}


def problem(
    status: int,
    slug: str,
    title: str,
    detail: str | None,
    request: Request,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = problem_body(status, slug, title, detail, request.url.path, **extra)
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


async def _cloudlet_error(request: Request, exc: Exception) -> JSONResponse:
    for cls, status, slug, title in ERROR_TABLE:
        if isinstance(exc, cls):
            return problem(status, slug, title, str(exc), request, **_extensions(exc))
    return await _internal_error(request, exc)


def _extensions(exc: Exception) -> dict[str, Any]:
    """RFC 9457 extension members some problems carry besides their detail."""
    if isinstance(exc, errors.QuotaExceededError):
        return {
            "quota": exc.quota,
            "limit": exc.limit,
            "used": exc.used,
            "requested": exc.requested,
        }
    return {}


def field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Where and why each field failed, without the offending input."""
    return jsonable_encoder(exc.errors(), exclude={"input", "url", "ctx"})


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = field_errors(exc)
    if any(d.get("type") == "json_invalid" for d in details):
        return problem(
            400, "malformed-json", "Malformed JSON", "the body is not valid JSON", request
        )
    first = details[0] if details else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    detail = f"{where}: {first.get('msg')}" if where else str(first.get("msg", "invalid input"))
    if len(details) > 1:
        detail += f" (and {len(details) - 1} more)"
    return problem(
        422, "invalid-input", "Invalid input", detail, request, errors=details[:MAX_FIELD_ERRORS]
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    slug = _HTTP_SLUGS.get(exc.status_code, f"http-{exc.status_code}")
    headers = dict(exc.headers or {})
    detail = None
    if exc.status_code == 405:
        # Starlette names only the first route of the path; list every one.
        allowed = _allowed_methods(request)
        headers["Allow"] = ", ".join(allowed)
        detail = f"{request.method} is not allowed here; use {' or '.join(allowed)}"
    return problem(exc.status_code, slug, str(exc.detail), detail, request, headers=headers)


def _allowed_methods(request: Request) -> list[str]:
    """The methods the OpenAPI document lists for this path (the document is the
    one list of routes that FastAPI's nested routers do not hide)."""
    methods: set[str] = set()
    for template, ops in request.app.openapi().get("paths", {}).items():
        if re.fullmatch(re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(template)), request.url.path):
            methods |= {m.upper() for m in ops if m in _METHODS}
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


_METHODS = frozenset({"get", "put", "post", "patch", "delete", "head", "options"})


async def _db_conflict(request: Request, exc: Exception) -> JSONResponse:
    # Services check what they can first; this is the net for races between requests.
    log.info("integrity error on %s %s: %s", request.method, request.url.path, exc)
    return problem(
        409, "conflict", "Conflict", "the change conflicts with data stored meanwhile", request
    )


#: What a 500 says: the cause is in the log, never in the answer.
INTERNAL = (500, "internal", "Internal error", "an unexpected error; see the log")


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(*INTERNAL, request)


def install(app: FastAPI) -> None:
    app.add_exception_handler(errors.CloudletError, _cloudlet_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(DBIntegrityError, _db_conflict)
    app.add_exception_handler(Exception, _internal_error)
