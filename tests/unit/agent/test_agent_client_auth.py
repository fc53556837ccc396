"""The site-local API checks client tokens against the keys held in the store alone."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
from agent_fakes import doc, instance

from cloudlet.agent import desired, outbox
from cloudlet.agent.local_api import create_app
from cloudlet.agent.store import Store
from cloudlet.schemas import EventKind
from cloudlet.tokens import SigningKey

KEY = SigningKey.generate()
OPERATOR = "clt_local_operator-token-0123456789"


def call(
    store: Store,
    method: str,
    path: str,
    token: str | None = None,
    *,
    operator: str | None = OPERATOR,
    **kwargs: Any,
) -> httpx.Response:
    app = create_app(store, lambda: {"status": "ok"}, token=operator)
    headers = {"authorization": f"Bearer {token}"} if token else {}

    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
            return await client.request(method, path, headers=headers, **kwargs)

    return asyncio.run(main())


def _problem(r: httpx.Response, status: int, kind: str) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"].endswith(f"/{kind}")
    return str(r.json()["detail"])


def _site(store: Store, *, keys: bool = True) -> None:
    fire = instance("c1", app="maps").model_copy(update={"project": "fire"})
    other = instance("c2", app="maps", revision=2)  # the same app name in project admin
    held = doc(3, [fire, other], full=True)
    desired.apply_doc(
        store, held.model_copy(update={"client_keys": [KEY.public] if keys else None})
    )


def _token(apps: list[str] | None = None, project: str = "fire", **kw: Any) -> str:
    return KEY.sign(project, apps or ["maps"], 600, subject="tablet-7", **kw)[0]


def test_a_client_token_starts_its_app_metered_to_its_project(store: Store) -> None:
    _site(store)
    r = call(store, "POST", "/v1/local/instances", _token(), json={"app": "maps"})
    assert r.status_code == 202, r.text
    assert r.json()["project"] == "fire"
    entry = desired.entries(store)[r.json()["id"]]
    assert entry.instance.project == "fire" and entry.origin.value == "site"
    created = [e for e in outbox.pending(store) if e.kind is EventKind.INSTANCE_CREATED]
    assert created[0].data["project"] == "fire" and created[0].data["template"] == "c1"
    assert created[0].data["client"]["subject"] == "tablet-7"


def test_missing_expired_tampered_unknown_and_wrong_app_tokens_are_refused(store: Store) -> None:
    _site(store)
    start = {"app": "maps"}
    assert "needs a client token" in _problem(
        call(store, "POST", "/v1/local/instances", json=start), 401, "auth"
    )
    expired = _token(now=time.time() - 7200)
    _problem(call(store, "POST", "/v1/local/instances", expired, json=start), 401, "token-expired")
    head, body, sig = _token().split(".")
    tampered = f"{head}.{body}.{sig[:-4]}AAAA"
    _problem(call(store, "POST", "/v1/local/instances", tampered, json=start), 401, "auth")
    stranger = SigningKey.generate().sign("fire", ["maps"], 600)[0]
    detail = _problem(call(store, "POST", "/v1/local/instances", stranger, json=start), 401, "auth")
    assert "unknown key" in detail
    wrong_app = _token(["radio"])
    detail = _problem(
        call(store, "POST", "/v1/local/instances", wrong_app, json=start), 403, "forbidden"
    )
    assert "'maps'" in detail
    assert call(store, "GET", "/v1/local/instances").json() == []  # nothing was started


def test_on_loopback_a_bad_token_is_refused_and_no_token_is_the_operator(store: Store) -> None:
    _site(store)
    expired = _token(now=time.time() - 7200)
    r = call(store, "POST", "/v1/local/instances", expired, operator=None, json={"app": "maps"})
    _problem(r, 401, "token-expired")
    r = call(store, "POST", "/v1/local/instances", operator=None, json={"app": "maps"})
    assert r.status_code == 202


def test_the_operator_token_still_starts_and_changes_anything(store: Store) -> None:
    _site(store)
    r = call(store, "POST", "/v1/local/instances", OPERATOR, json={"app": "maps"})
    assert r.status_code == 202
    assert call(store, "POST", "/v1/local/instances/c2/stop", OPERATOR).status_code == 202


def test_a_client_changes_only_instances_of_its_project_and_apps(store: Store) -> None:
    _site(store)
    token = _token()
    mine = call(store, "POST", "/v1/local/instances", token, json={"app": "maps"}).json()["id"]
    assert call(store, "POST", f"/v1/local/instances/{mine}/stop", token).status_code == 202
    _problem(call(store, "POST", "/v1/local/instances/c2/stop", token), 403, "forbidden")
    _problem(call(store, "DELETE", "/v1/local/instances/c2", token), 403, "forbidden")
    radio = _token(["radio"])
    _problem(call(store, "DELETE", f"/v1/local/instances/{mine}", radio), 403, "forbidden")
    _problem(call(store, "DELETE", "/v1/local/instances/nope", token), 404, "not-found")
    assert call(store, "DELETE", f"/v1/local/instances/{mine}", token).status_code == 202


def test_a_project_without_a_definition_here_is_not_found(store: Store) -> None:
    _site(store)
    r = call(store, "POST", "/v1/local/instances", _token(project="police"), json={"app": "maps"})
    assert "of project 'police'" in _problem(r, 404, "not-found")


def test_a_site_without_keys_says_so(store: Store) -> None:
    _site(store, keys=False)
    r = call(store, "POST", "/v1/local/instances", _token(), json={"app": "maps"})
    assert "holds no client-token keys" in _problem(r, 401, "auth")


def test_keys_survive_a_restart_and_a_document_that_does_not_name_them(
    store: Store, tmp_path: Path
) -> None:
    _site(store)
    desired.apply_doc(store, doc(4, [], since=3))  # client_keys None: keep what is held
    store.close()
    reopened = Store.open(tmp_path / "agent.db")
    try:
        r = call(reopened, "POST", "/v1/local/instances", _token(), json={"app": "maps"})
        assert r.status_code == 202, r.text
        # A document with a new full set replaces the old one: the old key stops working.
        newer = SigningKey.generate()
        desired.apply_doc(
            reopened, doc(5, [], since=4).model_copy(update={"client_keys": [newer.public]})
        )
        r = call(reopened, "POST", "/v1/local/instances", _token(), json={"app": "maps"})
        assert "unknown key" in _problem(r, 401, "auth")
    finally:
        reopened.close()


def test_a_revoked_token_is_refused_until_a_document_lifts_it(store: Store) -> None:
    _site(store)
    token, claims = KEY.sign("fire", ["maps"], 600, subject="lost-tablet")
    other = _token()
    desired.apply_doc(
        store, doc(4, [], since=3).model_copy(update={"client_revoked": [claims.jti]})
    )
    r = call(store, "POST", "/v1/local/instances", token, json={"app": "maps"})
    assert claims.jti in _problem(r, 401, "token-revoked")
    assert (
        call(store, "POST", "/v1/local/instances", other, json={"app": "maps"}).status_code == 202
    )
    # A document that does not say keeps the list; one that does replaces it.
    desired.apply_doc(store, doc(5, [], since=4))
    _problem(
        call(store, "POST", "/v1/local/instances", token, json={"app": "maps"}),
        401,
        "token-revoked",
    )
    desired.apply_doc(store, doc(6, [], since=5).model_copy(update={"client_revoked": []}))
    assert (
        call(store, "POST", "/v1/local/instances", token, json={"app": "maps"}).status_code == 202
    )
