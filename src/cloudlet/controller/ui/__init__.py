"""The operator's web dashboard: static files served at /ui.

The files are public; the page reads the JSON API with the token the operator signs
in with, so the dashboard sees exactly what that token may see and nothing more.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

__all__ = ["STATIC_DIR", "install"]

#: index.html, app.js and style.css: no build step, no third-party code.
STATIC_DIR = Path(__file__).parent / "static"

# Everything the page loads is its own: no inline script, no CDN, no frames.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class _DashboardFiles(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        for name, value in _HEADERS.items():
            response.headers.setdefault(name, value)
        return response


def install(app: FastAPI) -> None:
    """Serve the dashboard at /ui/ (and send /ui there)."""

    @app.get("/ui", include_in_schema=False)
    def dashboard() -> RedirectResponse:
        return RedirectResponse("/ui/")

    app.mount("/ui", _DashboardFiles(directory=STATIC_DIR, html=True), name="ui")
