"""Users, roles, signing in and API keys against a real controller process."""

from __future__ import annotations

import httpx
import pytest

from cloudlet.testbed.local import LocalController, wait_for

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"


def _problem(response: httpx.Response, status: int, slug: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["type"].endswith(f"/{slug}"), body
    return body


def _login(ctl: LocalController, user: str, password: str = PASSWORD, **extra: object):
    return httpx.post(
        f"{ctl.url}/v1/auth/tokens", json={"user": user, "password": password, **extra}
    )


def test_a_user_signs_in_to_a_project_and_acts_there_with_their_role(
    api: httpx.Client, controller: LocalController
) -> None:
    assert api.post("/v1/projects", json={"name": "tenant-a"}).status_code == 201
    assert api.post("/v1/projects", json={"name": "tenant-b"}).status_code == 201
    _problem(api.post("/v1/projects", json={"name": "tenant-a"}), 409, "conflict")
    made = api.post("/v1/users", json={"name": "alice", "password": PASSWORD})
    assert made.status_code == 201, made.text
    assert made.json()["roles"] == [] and "password" not in made.text
    _problem(api.post("/v1/users", json={"name": "alice", "password": PASSWORD}), 409, "conflict")
    _problem(api.post("/v1/users", json={"name": "bob", "password": "short"}), 422, "invalid-input")
    # No role yet: the right password still gets no token.
    _problem(_login(controller, "alice"), 403, "forbidden")
    granted = api.post("/v1/users/alice/roles", json={"project": "tenant-a", "role": "member"})
    assert granted.json()["roles"] == [{"project": "tenant-a", "role": "member"}]
    api.post("/v1/users/alice/roles", json={"project": "tenant-b", "role": "reader"})

    # Two projects: she must name one.
    _problem(_login(controller, "alice"), 422, "invalid-input")
    _problem(_login(controller, "alice", "wrong password"), 401, "auth")
    _problem(_login(controller, "nobody"), 401, "auth")
    signed = _login(controller, "alice", project="tenant-a")
    assert signed.status_code == 201, signed.text
    token = signed.json()
    assert (token["project"], token["role"], token["user"]) == ("tenant-a", "member", "alice")
    with controller.client(token["token"]) as alice:
        me = alice.get("/v1/auth/tokens/current").json()
        assert (me["kind"], me["user"], me["project"]) == ("login", "alice", "tenant-a")
        assert alice.post("/v1/apps", json=_app("web")).status_code == 201
        assert [p["name"] for p in alice.get("/v1/projects").json()] == ["tenant-a"]
        _problem(alice.get("/v1/projects/tenant-b"), 404, "not-found")
        assert [u["name"] for u in alice.get("/v1/users").json()] == ["alice"]
        assert alice.get("/v1/users").json()[0]["roles"] == [
            {"project": "tenant-a", "role": "member"}
        ]
        _problem(alice.post("/v1/projects", json={"name": "mine"}), 403, "forbidden")
        _problem(
            alice.post("/v1/users", json={"name": "eve", "password": PASSWORD}), 403, "forbidden"
        )

    with controller.client(_login(controller, "alice", project="tenant-b").json()["token"]) as r:
        assert r.get("/v1/apps").json() == []
        _problem(r.post("/v1/apps", json=_app("web")), 403, "forbidden")
        # A reader signs out too.
        assert r.delete("/v1/auth/tokens/current").status_code == 204
        _problem(r.get("/v1/apps"), 401, "auth")

    # Revoking her role ends her tokens at once.
    assert api.delete("/v1/users/alice/roles/tenant-a").status_code == 200
    with controller.client(token["token"]) as alice:
        _problem(alice.get("/v1/apps"), 401, "auth")
    _problem(api.delete("/v1/users/alice/roles/tenant-a"), 404, "not-found")
    # The bootstrap admin token is a key: signing it out is refused, it keeps working.
    _problem(api.delete("/v1/auth/tokens/current"), 409, "conflict")
    assert api.get("/v1/auth/tokens/current").json()["role"] == "admin"


def test_a_login_token_expires_with_a_clear_answer(
    api: httpx.Client, controller: LocalController
) -> None:
    api.post("/v1/users", json={"name": "carol", "password": PASSWORD})
    api.post("/v1/users/carol/roles", json={"project": "admin", "role": "admin"})
    signed = _login(controller, "carol", ttl_s=1).json()
    assert signed["role"] == "admin"
    with controller.client(signed["token"]) as carol:
        wait_for(lambda: carol.get("/v1/sites").status_code == 401, 30, "the token to expire")
        body = _problem(carol.get("/v1/sites"), 401, "token-expired")
        assert "expired" in str(body["detail"])
    # An admin signs in to any project, as admin.
    api.post("/v1/projects", json={"name": "tenant-c"})
    assert _login(controller, "carol", project="tenant-c").json()["role"] == "admin"
    _problem(_login(controller, "carol", project="nowhere"), 404, "not-found")


def test_api_keys_admins_make_any_members_their_own(
    api: httpx.Client, controller: LocalController
) -> None:
    api.post("/v1/projects", json={"name": "tenant-a"})
    api.post("/v1/projects", json={"name": "tenant-b"})
    api.post("/v1/users", json={"name": "dave", "password": PASSWORD})
    api.post("/v1/users/dave/roles", json={"project": "tenant-a", "role": "member"})
    dave_token = _login(controller, "dave").json()["token"]
    with controller.client(dave_token) as dave:
        key = dave.post(
            "/v1/api-keys", json={"name": "ci", "project": "tenant-a", "role": "reader"}
        )
        assert key.status_code == 201, key.text
        assert key.json()["created_by"] == "dave"
        for body in (
            {"name": "ci", "project": "tenant-b", "role": "member"},
            {"name": "ci", "project": "tenant-a", "role": "admin"},
        ):
            _problem(dave.post("/v1/api-keys", json=body), 403, "forbidden")
        listed = dave.get("/v1/api-keys").json()
        assert [k["name"] for k in listed] == ["ci"] and "token" not in listed[0]
    with controller.client(key.json()["token"]) as ci:
        assert ci.get("/v1/auth/tokens/current").json()["role"] == "reader"
        assert ci.get("/v1/apps").status_code == 200
        _problem(ci.post("/v1/apps", json=_app("x")), 403, "forbidden")
    admin_key = api.post(
        "/v1/api-keys", json={"name": "ops", "project": "tenant-b", "role": "admin"}
    ).json()
    with controller.client(dave_token) as dave:
        _problem(dave.delete(f"/v1/api-keys/{admin_key['id']}"), 404, "not-found")
        assert dave.delete(f"/v1/api-keys/{key.json()['id']}").status_code == 204
    with controller.client(key.json()["token"]) as ci:
        _problem(ci.get("/v1/apps"), 401, "auth")
    every = api.get("/v1/api-keys").json()
    assert {k["name"] for k in every} == {"admin", "ops"}
    bootstrap = next(k for k in every if k["name"] == "admin")
    _problem(api.delete(f"/v1/api-keys/{bootstrap['id']}"), 409, "conflict")
    assert api.delete(f"/v1/api-keys/{admin_key['id']}").status_code == 204


def _app(name: str) -> dict[str, object]:
    return {"name": name, "components": [{"name": "main", "kind": "process", "command": ["true"]}]}
