"""The OpenAPI document says what the API answers: its errors, their media type, auth.

FastAPI documents the success answer of each operation and a 422 in its own shape.
Every error here is problem+json, so one pass over the generated document adds the
error answers each operation can give, by what the operation is: one that needs a
token may answer 401 and 403, one that takes a body 400 and 413, any 404, 409 and
422, one that reads or writes the artifact store 503. Generated clients and fuzzers
can then rely on the document.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from cloudlet.controller.api.problems import MEDIA_TYPE
from cloudlet.schemas.common import Problem

#: Operations anyone may call (everything else needs a bearer token).
PUBLIC = frozenset(
    {
        ("post", "/v1/agent/enroll"),
        ("get", "/healthz"),
        # Open to any caller who knows the app's name; client tokens gate starting an
        # app at a site, not (yet) asking where it runs (#12).
        ("get", "/v1/discover"),
        # Public keys: what sites and app backends check client tokens with.
        ("get", "/v1/client-tokens/keys"),
        # Signing in: the password is the credential.
        ("post", "/v1/auth/tokens"),
        # The CA certificate: what clients verify the controller and sites with.
        ("get", "/v1/ca"),
    }
)
#: Public operations that may still refuse (403): a user with no role in the project.
_PUBLIC_FORBIDS = frozenset({("post", "/v1/auth/tokens")})
_REASONS = {
    400: "The body is not well-formed (malformed JSON, invalid UTF-8).",
    401: "Missing, unknown or expired token or site credential.",
    403: "The caller's role or project may not do this (type forbidden), or the project's "
    "quota has no room for what it creates (type quota-exceeded: `quota`, `limit`, `used` "
    "and `requested` say which and by how much).",
    404: "A named site, app, instance, image, overlay, upload or project does not exist.",
    409: "The request conflicts with the current state (name taken, state forbids it).",
    413: "The body is larger than this endpoint accepts.",
    416: "The requested range is not satisfiable.",
    422: "A field is invalid; `errors` lists each.",
    503: "The artifact store (an S3 bucket) failed or could not be reached; retry.",
}
#: Operations that read or write the artifact store, besides blob downloads.
_STORE_WRITES = frozenset(
    {("post", "/v1/uploads/{upload_id}/complete"), ("post", "/v1/agent-packages")}
)
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def _error_codes(method: str, path: str, operation: dict[str, Any]) -> list[int]:
    codes = {401, 404, 422}  # enroll answers 401 to a bad join token too
    if (method, path) not in PUBLIC or (method, path) in _PUBLIC_FORBIDS:
        codes.add(403)
    if "requestBody" in operation:
        codes |= {400, 413}
    if method in ("post", "put", "patch", "delete"):
        codes.add(409)
    if path.endswith("/blob"):
        codes |= {416, 503}
    if (method, path) in _STORE_WRITES:
        codes.add(503)
    return sorted(codes)


def _declare(document: dict[str, Any]) -> dict[str, Any]:
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    document["components"]["securitySchemes"] = {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API token; on /v1/agent/* a site credential (with the "
            "site's client certificate, unless the controller runs --insecure).",
        }
    }
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            if method not in ("get", "put", "post", "patch", "delete"):
                continue
            if (method, path) not in PUBLIC:
                operation["security"] = [{"bearer": []}]
            responses = operation.setdefault("responses", {})
            for code in _error_codes(method, path, operation):
                responses[str(code)] = {
                    "description": _REASONS[code],
                    "content": {MEDIA_TYPE: {"schema": _PROBLEM_REF}},
                }
            if path.endswith("/blob"):
                ok = responses.get("200", {})
                responses["206"] = {
                    "description": "The requested range (HTTP Range).",
                    "content": ok.get("content", {"application/octet-stream": {}}),
                }
    return document


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` return the document with every error declared."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _declare(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
