"""The dashboard's static files: served at /ui without a token (the data calls carry one),
with a policy that lets the page load nothing but its own files."""

from __future__ import annotations

import asyncio
import re

import httpx
from fastapi import FastAPI

from cloudlet.controller import ui


def get(*paths: str) -> list[httpx.Response]:
    """The answers of an app with only the dashboard installed, without a token."""
    app = FastAPI()
    ui.install(app)

    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ctl") as client:
            return [await client.get(p) for p in paths]

    return asyncio.run(main())


def test_ui_redirects_to_the_page() -> None:
    [answer] = get("/ui")
    assert answer.status_code == 307 and answer.headers["location"] == "/ui/"


def test_the_page_and_its_files_are_served_with_a_strict_policy() -> None:
    page, script, style, missing, outside = get(
        "/ui/", "/ui/app.js", "/ui/style.css", "/ui/missing.js", "/ui/%2e%2e/__init__.py"
    )
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert 'src="app.js"' in page.text
    for answer in (script, style):
        assert answer.status_code == 200 and answer.content
    assert missing.status_code == 404 and outside.status_code == 404


def test_the_page_loads_nothing_from_elsewhere() -> None:
    """No CDN, no tile server: every src and href is the page's own (or a fragment)."""
    for name in ("index.html", "app.js", "style.css"):
        text = (ui.STATIC_DIR / name).read_text()
        assert not re.search(r"(?:src|href)\s*=\s*[\"']?(?:https?:)?//", text), name
        assert "@import" not in text and "url(http" not in text, name
