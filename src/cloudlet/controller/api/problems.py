"""Turning errors into RFC 9457 problem+json answers: one table, one place."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cloudlet import errors

PROBLEM_BASE = "https://cloudlet.dev/problems/"
MEDIA_TYPE = "application/problem+json"

# Most specific first: the first matching class decides.
ERROR_TABLE: list[tuple[type[errors.CloudletError], int, str, str]] = [
    (errors.TokenExpiredError, 401, "token-expired", "Token expired"),
    (errors.AuthError, 401, "auth", "Not authenticated"),
    (errors.NotFoundError, 404, "not-found", "Not found"),
    (errors.ConflictError, 409, "conflict", "Conflict"),
    (errors.PlacementError, 409, "no-placement", "No site fits"),
    (errors.InvalidInputError, 422, "invalid-input", "Invalid input"),
    (errors.IntegrityError, 422, "digest-mismatch", "Digest mismatch"),
    (errors.ConfigError, 422, "invalid-input", "Invalid input"),
]
_HTTP_SLUGS = {404: "not-found", 405: "method-not-allowed", 401: "auth", 413: "too-large"}


def problem(
    status: int, slug: str, title: str, detail: str | None, request: Request, **extra: Any
) -> JSONResponse:
    body = {
        "type": PROBLEM_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        **extra,
    }
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


async def _cloudlet_error(request: Request, exc: Exception) -> JSONResponse:
    for cls, status, slug, title in ERROR_TABLE:
        if isinstance(exc, cls):
            return problem(status, slug, title, str(exc), request)
    return problem(500, "internal", "Internal error", str(exc), request)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = jsonable_encoder(exc.errors(), exclude={"url", "ctx"})
    if any(d.get("type") == "json_invalid" for d in details):
        return problem(
            400, "malformed-json", "Malformed JSON", "the body is not valid JSON", request
        )
    first = details[0] if details else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    detail = f"{where}: {first.get('msg')}" if where else str(first.get("msg", "invalid input"))
    return problem(422, "invalid-input", "Invalid input", detail, request, errors=details)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    slug = _HTTP_SLUGS.get(exc.status_code, f"http-{exc.status_code}")
    return problem(exc.status_code, slug, str(exc.detail), None, request)


def install(app: FastAPI) -> None:
    app.add_exception_handler(errors.CloudletError, _cloudlet_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
