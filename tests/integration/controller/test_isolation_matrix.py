"""The isolation matrix: every route of the controller by every kind of caller, against a
real controller process holding two projects.

The routes come from the FastAPI app's own route table, so a route added later is in
the matrix by itself, and the matrix fails until the route is classified below (one
line). Projects A and B each have an app, an instance, an image, an overlay, an upload,
a rollout, a client token and an API key; site-b holds B's instance and a checkpoint
of it, and a handoff of it runs from site-b to site-c. The callers: the bootstrap
admin, a member of A (signed in with a password, and an API key of A), a reader of A,
site-a's credential, an expired login token and no token. Every call aims at B's
things. What must hold:

* a member (or reader) of A can neither see nor change anything of B: 403 or 404 on
  B's things, and no answer that lists something of B;
* a reader writes nothing (403);
* a site credential reaches its own agent endpoints (and the artifact blobs agents
  fetch), nothing of another site's, and no user endpoint; a user token reaches no
  agent endpoint;
* no call answers 5xx.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute, _IncludedRouter
from starlette.routing import BaseRoute, Mount, Route

from cloudlet.signing import PublisherKey
from cloudlet.testbed.local import LocalController, wait_for

pytestmark = pytest.mark.integration

A, B = "tenant-a", "tenant-b"
PASSWORD = "a long enough password"
READS = {"GET", "HEAD"}

# -- the route table ------------------------------------------------------------------------


def _walk(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str]]:
    for route in routes:
        if isinstance(route, _IncludedRouter):
            yield from _walk(route.original_router.routes, prefix + route.include_context.prefix)
        elif isinstance(route, APIRoute):
            for method in sorted(route.methods):
                yield method, prefix + route.path
        elif isinstance(route, Mount):
            yield "GET", prefix + route.path + "/{path}"
        elif isinstance(route, Route):
            # Starlette adds HEAD beside GET on its own routes: the GET stands for both.
            for method in sorted((route.methods or set()) - {"HEAD"}):
                yield method, prefix + route.path


def app_routes() -> list[tuple[str, str]]:
    """Every (method, path template) the controller's app serves."""
    from cloudlet.controller.app import create_app
    from cloudlet.settings import ControllerSettings

    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(ControllerSettings(data_dir=Path(tmp)))
        try:
            return sorted(set(_walk(app.routes)))
        finally:
            app.state.cloudlet.close()


#: public: anyone. agent: a site credential only (the site from the credential).
#: admin: the admin role only. tenant: aims at one of B's things (403/404 for A's
#: member). read: a list or a provider-wide read, open to every user and scoped by
#: project (checked for B's things in the answer). blob: artifact bytes, for users
#: (scoped) and for sites (agents fetch with their credential). self: the caller's own
#: token.
KINDS: dict[tuple[str, str], str] = {
    ("GET", "/openapi.json"): "public",
    ("GET", "/docs"): "public",
    ("GET", "/docs/oauth2-redirect"): "public",
    ("GET", "/redoc"): "public",
    ("GET", "/healthz"): "public",
    ("GET", "/ui"): "public",
    ("GET", "/ui/{path}"): "public",
    ("GET", "/v1/discover"): "public",
    ("GET", "/v1/client-tokens/keys"): "public",
    ("GET", "/v1/ca"): "public",
    ("POST", "/v1/agent/enroll"): "public",
    ("POST", "/v1/auth/tokens"): "public",
    ("GET", "/v1/agent/desired"): "agent",
    ("POST", "/v1/agent/report"): "agent",
    ("POST", "/v1/agent/certificate"): "agent",
    ("PUT", "/v1/agent/handoffs/{handoff_id}/state"): "agent",
    ("GET", "/v1/agent/handoffs/{handoff_id}/state"): "agent",
    ("POST", "/v1/agent/handoffs/{handoff_id}/ready"): "agent",
    ("POST", "/v1/agent/handoffs/{handoff_id}/sent"): "agent",
    ("POST", "/v1/agent/handoffs/{handoff_id}/fail"): "agent",
    ("PUT", "/v1/agent/checkpoints/{checkpoint_id}"): "agent",
    ("GET", "/v1/agent/checkpoints/{checkpoint_id}/blob"): "agent",
    ("POST", "/v1/sites"): "admin",
    ("PATCH", "/v1/sites/{name}"): "admin",
    ("POST", "/v1/sites/{name}/join-tokens"): "admin",
    ("POST", "/v1/sites/{name}/decommission"): "admin",
    ("POST", "/v1/sites/{name}/drain"): "admin",
    ("POST", "/v1/sites/{name}/images"): "admin",
    ("DELETE", "/v1/sites/{name}/images/{ref}"): "admin",
    ("PUT", "/v1/sites/{name}/agent-target"): "admin",
    ("GET", "/metrics"): "admin",
    ("POST", "/v1/agent-packages"): "admin",
    ("GET", "/v1/agent-packages"): "admin",
    ("POST", "/v1/upgrades/agents"): "admin",
    ("DELETE", "/v1/client-tokens/keys/{kid}"): "admin",
    ("POST", "/v1/projects"): "admin",
    ("POST", "/v1/users"): "admin",
    ("POST", "/v1/users/{name}/roles"): "admin",
    ("DELETE", "/v1/users/{name}/roles/{project}"): "admin",
    ("PUT", "/v1/projects/{name}/signing-policy"): "admin",
    ("PUT", "/v1/projects/{name}/quota"): "admin",
    ("PUT", "/v1/prices/default"): "admin",
    ("DELETE", "/v1/prices/default"): "admin",
    ("PUT", "/v1/prices/projects/{project}"): "admin",
    ("DELETE", "/v1/prices/projects/{project}"): "admin",
    ("PUT", "/v1/prices/projects/{project}/apps/{app}"): "admin",
    ("DELETE", "/v1/prices/projects/{project}/apps/{app}"): "admin",
    ("GET", "/v1/sites"): "read",
    ("GET", "/v1/sites/{name}"): "read",
    ("GET", "/v1/sites/{name}/images"): "read",
    ("GET", "/v1/alarms"): "read",
    ("GET", "/v1/events"): "read",
    ("GET", "/v1/handoffs"): "read",
    ("GET", "/v1/rollouts"): "read",
    ("GET", "/v1/apps"): "read",
    ("GET", "/v1/instances"): "read",
    ("GET", "/v1/uploads"): "read",
    ("GET", "/v1/images"): "read",
    ("GET", "/v1/overlays"): "read",
    ("GET", "/v1/client-tokens"): "read",
    ("GET", "/v1/api-keys"): "read",
    ("GET", "/v1/projects"): "read",
    ("GET", "/v1/users"): "read",
    ("GET", "/v1/publisher-keys"): "read",
    ("GET", "/v1/prices"): "read",
    ("GET", "/v1/prices/default"): "read",
    ("POST", "/v1/apps"): "tenant",
    ("GET", "/v1/apps/{name}"): "tenant",
    ("DELETE", "/v1/apps/{name}"): "tenant",
    ("POST", "/v1/apps/{name}/versions"): "tenant",
    ("POST", "/v1/instances"): "tenant",
    ("GET", "/v1/instances/{ref}"): "tenant",
    ("DELETE", "/v1/instances/{ref}"): "tenant",
    ("POST", "/v1/instances/{ref}/stop"): "tenant",
    ("POST", "/v1/instances/{ref}/start"): "tenant",
    ("POST", "/v1/instances/{ref}/suspend"): "tenant",
    ("POST", "/v1/instances/{ref}/resume"): "tenant",
    ("POST", "/v1/instances/{ref}/restart"): "tenant",
    ("POST", "/v1/instances/{ref}/move"): "tenant",
    ("PUT", "/v1/instances/{ref}/client"): "tenant",
    ("GET", "/v1/instances/{ref}/checkpoints"): "tenant",
    ("POST", "/v1/uploads"): "tenant",
    ("GET", "/v1/uploads/{upload_id}"): "tenant",
    ("PUT", "/v1/uploads/{upload_id}"): "tenant",
    ("POST", "/v1/uploads/{upload_id}/complete"): "tenant",
    ("DELETE", "/v1/uploads/{upload_id}"): "tenant",
    ("GET", "/v1/images/{ref}"): "tenant",
    ("DELETE", "/v1/images/{ref}"): "tenant",
    ("GET", "/v1/overlays/{ref}"): "tenant",
    ("DELETE", "/v1/overlays/{ref}"): "tenant",
    ("GET", "/v1/rollouts/{rollout_id}"): "tenant",
    ("POST", "/v1/client-tokens"): "tenant",
    ("POST", "/v1/client-tokens/revocations"): "tenant",
    ("POST", "/v1/api-keys"): "tenant",
    ("DELETE", "/v1/api-keys/{key_id}"): "tenant",
    ("GET", "/v1/projects/{name}"): "tenant",
    ("GET", "/v1/users/{name}"): "tenant",
    ("POST", "/v1/publisher-keys"): "tenant",
    ("POST", "/v1/publisher-keys/revocations"): "tenant",
    ("POST", "/v1/images/{ref}/signatures"): "tenant",
    ("GET", "/v1/images/{ref}/signatures"): "tenant",
    ("POST", "/v1/overlays/{ref}/signatures"): "tenant",
    ("GET", "/v1/overlays/{ref}/signatures"): "tenant",
    ("GET", "/v1/projects/{name}/signing-policy"): "tenant",
    ("GET", "/v1/projects/{name}/quota"): "tenant",
    ("GET", "/v1/prices/projects/{project}"): "tenant",
    ("GET", "/v1/prices/projects/{project}/apps/{app}"): "tenant",
    ("GET", "/v1/usage"): "tenant",
    ("GET", "/v1/images/{ref}/blob"): "blob",
    ("HEAD", "/v1/images/{ref}/blob"): "blob",
    ("GET", "/v1/overlays/{ref}/blob"): "blob",
    ("HEAD", "/v1/overlays/{ref}/blob"): "blob",
    ("GET", "/v1/agent-packages/{version}/blob"): "blob",
    ("GET", "/v1/auth/tokens/current"): "self",
    ("DELETE", "/v1/auth/tokens/current"): "self",
}

ROUTES = app_routes()
#: In the order they run: the admin last (it may delete B's things), and each
#: caller's signing-out last of its calls.
CALLERS = ["none", "expired", "site", "reader", "member-key", "member", "admin"]


def _order(route: tuple[str, str]) -> tuple[int, str, str]:
    method, path = route
    return (route == ("DELETE", "/v1/auth/tokens/current")) * 2 + (method == "DELETE"), path, method


CASES = [(caller, route) for caller in CALLERS for route in sorted(ROUTES, key=_order)]


def test_every_route_is_classified() -> None:
    unclassified = [f"{m} {p}" for m, p in ROUTES if (m, p) not in KINDS]
    assert not unclassified, f"classify these routes in KINDS: {unclassified}"
    stale = [f"{m} {p}" for m, p in KINDS if (m, p) not in ROUTES]
    assert not stale, f"KINDS names routes the app no longer has: {stale}"


# -- the world: two projects and their things ---------------------------------------------


@dataclass
class World:
    ctl: LocalController
    tokens: dict[str, str | None]
    #: What to put in each path parameter, by (path prefix, parameter).
    ids: dict[str, str]
    #: Strings that name something of B: none may appear in an answer to A's callers.
    markers: set[str]
    counts: dict[str, int] = field(default_factory=lambda: {"calls": 0, "5xx": 0})
    #: caller -> status -> calls, printed at the end.
    statuses: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))


def _ok(response: httpx.Response, *codes: int) -> Any:
    assert response.status_code in (codes or (200, 201)), response.text
    return response.json() if response.content else None


def _app(name: str, project: str) -> dict[str, Any]:
    return {
        "name": name,
        "project": project,
        "components": [{"name": "main", "kind": "process", "command": ["sleep", "600"]}],
    }


def _upload(api: httpx.Client, kind: str, name: str, data: bytes, project: str) -> Any:
    body = {"kind": kind, "name": name, "size": len(data), "project": project}
    uid = _ok(api.post("/v1/uploads", json=body))["id"]
    _ok(api.put(f"/v1/uploads/{uid}", params={"offset": 0}, content=data))
    return _ok(api.post(f"/v1/uploads/{uid}/complete"))


def _site(api: httpx.Client, ctl: LocalController, name: str) -> str:
    join = _ok(api.post("/v1/sites", json={"name": name}))["join_token"]["token"]
    capacity = {"vcpus": 16, "memory_mib": 16384, "disk_gib": 100}
    enrolled = httpx.post(
        f"{ctl.url}/v1/agent/enroll", json={"join_token": join, "capacity": capacity}
    )
    credential = _ok(enrolled)["credential"]
    report = {"applied_revision": 0, "capacity": capacity}
    headers = {"Authorization": f"Bearer {credential}"}
    _ok(httpx.post(f"{ctl.url}/v1/agent/report", json=report, headers=headers))
    return str(credential)


def _login(ctl: LocalController, user: str, **extra: Any) -> str:
    body = {"user": user, "password": PASSWORD, **extra}
    return str(_ok(httpx.post(f"{ctl.url}/v1/auth/tokens", json=body))["token"])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from cloudlet.synthesis import create_overlay

    tmp = tmp_path_factory.mktemp("isolation")
    # --insecure: the site caller is a bare credential, as a hand-made agent request;
    # that agent endpoints also want the site's own client certificate is fleet/test_tls.py's.
    ctl = LocalController(tmp / "ctl", insecure=True).start()
    try:
        yield _build(ctl, tmp, create_overlay)
    finally:
        ctl.stop()


def _build(ctl: LocalController, tmp: Path, create_overlay: Any) -> World:
    api = ctl.client()
    for project in (A, B):
        _ok(api.post("/v1/projects", json={"name": project}))
    site_a = _site(api, ctl, "site-a")
    site_b = _site(api, ctl, "site-b")
    _site(api, ctl, "site-c")
    # The people: alice is a member of A, rita a reader of A, bob a member of B.
    people = (("alice", A, "member"), ("rita", A, "reader"), ("bob", B, "member"))
    for user, project, role in people:
        _ok(api.post("/v1/users", json={"name": user, "password": PASSWORD}))
        _ok(api.post(f"/v1/users/{user}/roles", json={"project": project, "role": role}))
    things = {
        project: _things(ctl, tmp, create_overlay, project, tag, owner)
        for project, tag, owner in ((A, "ay", "alice"), (B, "bee", "bob"))
    }
    b = things[B]
    # Site-b reports a usage event of B's instance and uploads a checkpoint of it; then
    # the instance moves to site-c (a handoff site-a has no part in).
    headers_b = {"Authorization": f"Bearer {site_b}"}
    at = "2026-12-04T10:00:00Z"
    event = {"seq": 1, "kind": "usage", "instance": b["instance"], "at": at, "data": {"s": 60}}
    report = {"applied_revision": 0, "events": [event]}
    _ok(httpx.post(f"{ctl.url}/v1/agent/report", json=report, headers=headers_b))
    checkpoint = "bee-checkpoint-1"
    query = {"instance": b["instance"], "epoch": 0, "kind": "process", "taken_at": at}
    url = f"{ctl.url}/v1/agent/checkpoints/{checkpoint}"
    _ok(httpx.put(url, params=query, content=b"state", headers=headers_b), 204)
    with ctl.client(_login(ctl, "bob")) as bob:
        move = bob.post(f"/v1/instances/{b['instance']}/move", json={"to": "site-c"})
        handoff = _ok(move, 202)

    _ok(api.put(f"/v1/prices/projects/{B}", json=PLAN))
    _ok(api.put(f"/v1/prices/projects/{B}/apps/{b['app']}", json=PLAN))

    expired = _login(ctl, "alice", ttl_s=1)
    with ctl.client(expired) as late:
        wait_for(lambda: late.get("/v1/apps").status_code == 401, 30, "the login to expire")
    tokens: dict[str, str | None] = {
        "none": None,
        "expired": expired,
        "site": site_a,
        "reader": _login(ctl, "rita"),
        "member-key": things[A]["key_token"],
        "member": _login(ctl, "alice"),
        "admin": ctl.token,
    }
    # Sanity: A's member does see A's things (the matrix would pass on a broken token).
    with ctl.client(tokens["member"]) as alice:
        assert [a["name"] for a in _ok(alice.get("/v1/apps"))] == [things[A]["app"]]
        assert len(_ok(alice.get("/v1/instances"))) == 1
    ids = {**b, "handoff": handoff["id"], "checkpoint": checkpoint}
    markers = {B, "bob", *(v for k, v in ids.items() if k != "key_token")}
    api.close()
    return World(ctl=ctl, tokens=tokens, ids=ids, markers=markers)


def _things(
    ctl: LocalController, tmp: Path, create_overlay: Any, project: str, tag: str, owner: str
) -> dict[str, str]:
    """A project's app, instance, image, overlay (signed), pending upload, rollout, client
    token, API key and publisher key, made by a member of it."""
    member = ctl.client(_login(ctl, owner))
    app = f"{tag}-app"
    _ok(member.post("/v1/apps", json=_app(app, project)))
    site = "site-a" if project == A else "site-b"
    instance = _ok(member.post("/v1/instances", json={"app": app, "site": site}))
    base, changed, overlay_file = (tmp / f"{tag}-{n}" for n in ("base", "new", "overlay"))
    base.write_bytes(os.urandom(128 * 1024) + bytes(128 * 1024))
    data = bytearray(base.read_bytes())
    data[4096:8192] = os.urandom(4096)
    changed.write_bytes(bytes(data))
    create_overlay(base, changed, overlay_file, level=1)
    image = _upload(member, "image", f"{tag}-image", base.read_bytes(), project)
    overlay = _upload(member, "overlay", f"{tag}-overlay", overlay_file.read_bytes(), project)
    pending = {"kind": "image", "name": f"{tag}-pending", "size": 8, "project": project}
    upload = _ok(member.post("/v1/uploads", json=pending))
    version = {"components": _app(app, project)["components"]}
    rollout = _ok(member.post(f"/v1/apps/{app}/versions", json=version))
    minted = _ok(member.post("/v1/client-tokens", json={"project": project, "apps": [app]}))
    key_body = {"name": f"{tag}-key", "project": project, "role": "member"}
    key = _ok(member.post("/v1/api-keys", json=key_body))
    publisher = PublisherKey.generate()
    key_body = {"name": f"{tag}-publisher", "project": project, "public_key": publisher.x}
    _ok(member.post("/v1/publisher-keys", json=key_body))
    signature = {"kid": publisher.kid, "signature": publisher.sign("overlay", overlay["id"])}
    _ok(member.post(f"/v1/overlays/{overlay['id']}/signatures", json=signature))
    member.close()
    return {
        "publisher": publisher.kid,
        # Another signature by B's key, well formed: only the handler can refuse it.
        "signature": publisher.sign("image", image["digest"]),
        "app": app,
        "instance": instance["instance"]["id"] if "instance" in instance else instance["id"],
        "image": image["digest"],
        "overlay": overlay["id"],
        "upload": upload["id"],
        "rollout": rollout["id"],
        "jti": minted["jti"],
        "key": key["id"],
        "key_token": key["token"],
    }


# -- one call --------------------------------------------------------------------------------


def _path(world: World, path: str) -> str:
    ids = world.ids
    values = {
        "{name}": "site-b",
        "{ref}": ids["instance"],
        "{upload_id}": ids["upload"],
        "{rollout_id}": ids["rollout"],
        "{key_id}": ids["key"],
        "{kid}": "no-such-key",
        "{project}": B,
        "{app}": ids["app"],
        "{version}": "9.9.9",
        "{handoff_id}": ids["handoff"],
        "{checkpoint_id}": ids["checkpoint"],
        "{path}": "index.html",
    }
    if path.startswith("/v1/apps/"):
        values["{name}"] = ids["app"]
    elif path.startswith("/v1/users/"):
        values["{name}"] = "bob"
    elif path.startswith("/v1/projects/"):
        values["{name}"] = B
    if path.startswith(("/v1/images/", "/v1/sites/{name}/images/")):
        values["{ref}"] = ids["image"]
    elif path.startswith("/v1/overlays/"):
        values["{ref}"] = ids["overlay"]
    if path == "/v1/agent/checkpoints/{checkpoint_id}":
        values["{checkpoint_id}"] = "probe-checkpoint-2"
    for param, value in values.items():
        path = path.replace(param, value)
    assert "{" not in path, f"no value for a parameter of {path}"
    return path


SENT = {"bytes": 0, "downtime_s": 0, "rounds": 0}
PLAN = {"currency": "EUR", "instance_hour": "0.05"}
CHECKPOINT_QUERY = {"epoch": 1, "kind": "process", "taken_at": "2026-12-04T11:00:00Z"}


def _request(world: World, method: str, template: str) -> dict[str, Any]:
    """A well-formed request at B's things, so that the handler (not validation) answers."""
    ids = world.ids
    components = [{"name": "main", "kind": "process", "command": ["true"]}]
    bodies: dict[tuple[str, str], Any] = {
        ("POST", "/v1/apps"): {"name": "probe", "project": B, "components": components},
        ("POST", "/v1/apps/{name}/versions"): {"components": components},
        ("POST", "/v1/instances"): {"app": ids["app"]},
        ("POST", "/v1/instances/{ref}/move"): {"to": "site-a"},
        ("PUT", "/v1/instances/{ref}/client"): {"latitude": 1.0, "longitude": 2.0},
        ("POST", "/v1/uploads"): {"kind": "image", "name": "probe", "size": 8, "project": B},
        ("POST", "/v1/client-tokens"): {"project": B, "apps": [ids["app"]]},
        ("POST", "/v1/client-tokens/revocations"): {"jti": ids["jti"]},
        ("POST", "/v1/api-keys"): {"name": "probe", "project": B, "role": "member"},
        ("POST", "/v1/publisher-keys"): {
            "name": "probe",
            "project": B,
            "public_key": PublisherKey.generate().x,
        },
        ("POST", "/v1/publisher-keys/revocations"): {"kid": ids["publisher"]},
        ("POST", "/v1/images/{ref}/signatures"): {
            "kid": ids["publisher"],
            "signature": ids["signature"],
        },
        ("POST", "/v1/overlays/{ref}/signatures"): {
            "kid": ids["publisher"],
            "signature": ids["signature"],
        },
        ("PUT", "/v1/projects/{name}/signing-policy"): {"require_signatures": False},
        ("PUT", "/v1/projects/{name}/quota"): {"instances": 1000},
        ("PUT", "/v1/prices/default"): PLAN,
        ("PUT", "/v1/prices/projects/{project}"): PLAN,
        ("PUT", "/v1/prices/projects/{project}/apps/{app}"): PLAN,
        ("POST", "/v1/sites"): {"name": "probe-site"},
        ("PATCH", "/v1/sites/{name}"): {"region": "elsewhere"},
        ("POST", "/v1/sites/{name}/join-tokens"): {"ttl_s": 60},
        ("POST", "/v1/sites/{name}/images"): {"image": ids["image"]},
        ("PUT", "/v1/sites/{name}/agent-target"): {"version": "9.9.9"},
        ("POST", "/v1/upgrades/agents"): {"to": "9.9.9"},
        ("POST", "/v1/projects"): {"name": "probe-project"},
        ("POST", "/v1/users"): {"name": "probe-user", "password": PASSWORD},
        # A member trying to make themselves admin.
        ("POST", "/v1/users/{name}/roles"): {"project": A, "role": "admin"},
        ("POST", "/v1/auth/tokens"): {"user": "bob", "password": "not bob's password"},
        ("POST", "/v1/agent/enroll"): {"join_token": "clt_join_no-such-token"},
        ("POST", "/v1/agent/report"): {"applied_revision": 0},
        ("POST", "/v1/agent/certificate"): {"csr": "not a CSR"},
        ("POST", "/v1/agent/handoffs/{handoff_id}/ready"): {"address": "127.0.0.1:1"},
        ("POST", "/v1/agent/handoffs/{handoff_id}/sent"): SENT,
    }
    params: dict[tuple[str, str], dict[str, Any]] = {
        ("PUT", "/v1/uploads/{upload_id}"): {"offset": 0},
        ("GET", "/v1/agent/desired"): {"since": 0, "wait": 0},
        ("POST", "/v1/agent/handoffs/{handoff_id}/fail"): {"reason": "probe"},
        ("POST", "/v1/agent-packages"): {"filename": "cloudlet-9.9.9-py3-none-any.whl"},
        ("PUT", "/v1/agent/checkpoints/{checkpoint_id}"): {
            **CHECKPOINT_QUERY,
            "instance": ids["instance"],
        },
        ("GET", "/v1/discover"): {"app": ids["app"]},
        ("GET", "/v1/usage"): {"project": B, "from": "2026-12-01", "to": "2026-12-02"},
    }
    octets = {
        ("PUT", "/v1/uploads/{upload_id}"),
        ("POST", "/v1/agent-packages"),
        ("PUT", "/v1/agent/handoffs/{handoff_id}/state"),
        ("PUT", "/v1/agent/checkpoints/{checkpoint_id}"),
    }
    request: dict[str, Any] = {
        "method": method,
        "url": _path(world, template),
        "params": params.get((method, template), {}),
    }
    if KINDS.get((method, template)) == "read":
        # Lists that take a project: ask for B's outright.
        request["params"] = {**request["params"], "project": B}
    if (method, template) in bodies:
        request["json"] = bodies[(method, template)]
    elif (method, template) in octets:
        request["content"] = b"probe123"
        request["headers"] = {"Content-Type": "application/octet-stream"}
    return request


def _denied(status: int) -> bool:
    return status in (403, 404)


def _check(world: World, caller: str, method: str, template: str, response: httpx.Response) -> None:
    kind = KINDS[(method, template)]
    status = response.status_code
    what = f"{caller} {method} {template} -> {status}: {response.text[:300]}"
    assert status < 500, what
    if kind == "public":
        return
    if caller == "none":
        assert status == 401, what
        return
    if caller == "expired":
        assert status == 401, what
        if kind != "agent" and method != "HEAD":
            assert response.json()["type"].endswith("/token-expired"), what
        return
    if caller == "site":
        if kind == "agent":
            assert status not in (401, 403), what
            if "{handoff_id}" in template or "{checkpoint_id}" in template:
                # Another site's handoff, a checkpoint of an instance placed elsewhere.
                assert status in (404, 409), what
        elif kind == "blob":
            assert status not in (401, 403), what
        else:
            assert status == 401, what
        return
    # A user's token, from here on.
    if kind == "agent":
        assert status == 401, what
        return
    if caller == "admin":
        return
    if caller == "reader" and method not in READS and kind != "self":
        assert status == 403, what
        return
    if kind == "admin":
        assert status == 403, what
    elif kind in ("tenant", "blob"):
        assert _denied(status), what
    elif kind == "self":
        assert status in (200, 204, 409), what
    if 200 <= status < 300 and response.content:
        leaked = sorted(m for m in world.markers if m in response.text)
        assert not leaked, f"{what}\nB's things in the answer: {leaked}"


def test_an_admin_reaches_another_project_s_instance_by_id(world: World) -> None:
    """Before the matrix (whose admin deletes B's instance): the provider's operators act
    on every project, so B's instance is theirs to see by id; by name only the admin
    project's answers, names being unique per project alone."""
    with world.ctl.client() as admin:
        shown = _ok(admin.get(f"/v1/instances/{world.ids['instance']}"))
        assert shown["project"] == B
        _ok(admin.get(f"/v1/instances/{world.ids['instance']}/checkpoints"))
        assert admin.get(f"/v1/instances/{shown['name']}").status_code == 404


@pytest.mark.parametrize(("caller", "route"), CASES, ids=[f"{c}:{m} {p}" for c, (m, p) in CASES])
def test_isolation(world: World, caller: str, route: tuple[str, str]) -> None:
    method, template = route
    if route not in KINDS:
        pytest.fail(f"{method} {template} is not classified in KINDS")
    token = world.tokens[caller]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=world.ctl.url, headers=headers, timeout=30) as client:
        response = client.request(**_request(world, method, template))
    world.counts["calls"] += 1
    world.counts["5xx"] += response.status_code >= 500
    world.statuses[caller][response.status_code] += 1
    _check(world, caller, method, template, response)


def test_the_count(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """Runs after the matrix: how many calls it checked (printed past the capture), and
    not one server error or exception in the controller's log."""
    calls = world.counts["calls"]
    lines = [
        f"isolation matrix: {calls} calls checked ({len(ROUTES)} routes x {len(CALLERS)} "
        f"callers), {world.counts['5xx']} answered 5xx",
        *(
            f"  {caller:>10}: " + ", ".join(f"{n} x {s}" for s, n in sorted(statuses.items()))
            for caller, statuses in world.statuses.items()
        ),
    ]
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    log = world.ctl.data_dir / "controller.log"
    tracebacks = log.read_text().count("Traceback") if log.exists() else 0
    assert world.counts["5xx"] == 0 and tracebacks == 0, (world.counts, tracebacks)
