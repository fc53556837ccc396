"""App rollouts with a real controller and three real agents: waves, health checks
(the service answers at its new version), stop on the first failure, roll back."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloudlet.testbed.local import LocalAgent, LocalController, wait_for

SITES = ["amsterdam", "berlin", "copenhagen"]

#: Answers its version; a version run where a "broken" marker names its instance
#: exits at once instead (a build that crashes on one site's data, say).
SERVICE = """
import http.server, os, pathlib, sys
version = sys.argv[1]
if (pathlib.Path(sys.argv[2]) / os.environ["CLOUDLET_INSTANCE"]).exists() and version != "v1":
    sys.exit(f"{version} cannot start here")
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{version} {os.getpid()}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""


class Bed:
    def __init__(self, tmp: Path, ctl: LocalController, api: httpx.Client) -> None:
        self.tmp = tmp
        self.ctl = ctl
        self.api = api
        self.script = tmp / "service.py"
        self.script.write_text(textwrap.dedent(SERVICE))
        self.broken = tmp / "broken"
        self.broken.mkdir()

    def components(self, version: str) -> list[dict[str, Any]]:
        command = [sys.executable, str(self.script), version, str(self.broken)]
        return [{"name": "main", "command": command}]

    def app(self, name: str) -> dict[str, str]:
        """Create the app at v1 with one instance per site; instance id by site."""
        resources = {"vcpus": 0.1, "memory_mib": 32, "disk_gib": 0.01}
        body = {"name": name, "components": self.components("v1"), "resources": resources}
        self.api.post("/v1/apps", json=body).raise_for_status()
        ids = {}
        for site in SITES:
            made = self.api.post("/v1/instances", json={"app": name, "site": site})
            made.raise_for_status()
            ids[site] = made.json()["id"]
        for ref in ids.values():
            self.wait_answer(ref, "v1")
        return ids

    def answer(self, ref: str) -> str | None:
        item = self.api.get(f"/v1/instances/{ref}").json()
        if item["actual_state"] != "running" or not item["endpoint"]:
            return None
        try:
            return httpx.get(f"http://{item['endpoint']}/", timeout=2).text
        except httpx.HTTPError:
            return None

    def wait_answer(self, ref: str, version: str, timeout: float = 30) -> str:
        def answers() -> str | None:
            text = self.answer(ref)
            return text if text and text.split()[0] == version else None

        try:
            return wait_for(answers, timeout, f"instance {ref} answering {version}")
        except Exception:
            logs = "\n".join((self.tmp / s / "agent.log").read_text()[-3000:] for s in SITES)
            item = self.api.get(f"/v1/instances/{ref}").json()
            site = self.api.get(f"/v1/sites/{item['site']}").json()
            raise AssertionError(f"{item}\n{site}\n{logs}") from None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDLET_")}
        env |= {
            **self.ctl.cli_env(),
            "CLOUDLET_TOKEN_FILE": str(self.ctl.data_dir / "admin.token"),
        }
        cloudlet = str(Path(sys.executable).with_name("cloudlet"))
        return subprocess.run(
            [cloudlet, *args], capture_output=True, text=True, env=env, timeout=120
        )

    def publish(self, app: str, version: str, **rollout: Any) -> dict[str, Any]:
        body = {"components": self.components(version), "rollout": rollout}
        made = self.api.post(f"/v1/apps/{app}/versions", json=body)
        assert made.status_code == 201, made.text
        return made.json()

    def wait_done(self, rollout_id: str, timeout: float = 60) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            view = self.api.get(f"/v1/rollouts/{rollout_id}").json()
            return view if view["state"] != "running" else None

        return wait_for(done, timeout, f"rollout {rollout_id} ended", interval=0.3)


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    tmp = tmp_path_factory.mktemp("rollout")
    ctl = LocalController(tmp / "ctl", offline_grace_s=5).start()
    with ExitStack() as stack:
        api = stack.enter_context(ctl.client())
        stack.callback(ctl.stop)
        for name in SITES:
            made = api.post("/v1/sites", json={"name": name})
            made.raise_for_status()
            agent = LocalAgent(
                name,
                tmp / name,
                ctl.url,
                join_token=made.json()["join_token"]["token"],
                env={"CLOUDLET_AGENT__RECONCILE_INTERVAL_S": "0.5"},
            ).start()
            stack.callback(agent.stop)
        for name in SITES:
            wait_for(
                lambda n=name: api.get(f"/v1/sites/{n}").json()["availability"] == "online",
                30,
                f"{name} online",
            )
        yield Bed(tmp, ctl, api)


def test_serial_rollout_stops_at_the_unhealthy_site_and_rolls_it_back(bed: Bed) -> None:
    ids = bed.app("shop")
    untouched = bed.answer(ids["copenhagen"])
    (bed.broken / ids["berlin"]).touch()  # v2 cannot start at berlin

    rollout = bed.publish("shop", "v2", strategy="serial", health_timeout_s=6)
    assert [i["site"] for i in rollout["items"]] == SITES
    assert rollout["waves"] == 3 and rollout["to_version"] == "2"
    done = bed.wait_done(rollout["id"])

    assert done["state"] == "failed", done
    states = {i["site"]: i["state"] for i in done["items"]}
    assert states == {"amsterdam": "healthy", "berlin": "failed", "copenhagen": "pending"}
    assert "berlin" in done["reason"] and "rolled back" in done["reason"]
    # amsterdam passed its check and stays at v2; berlin went back to v1 and serves
    # again; copenhagen was never touched (the same process answers).
    assert bed.wait_answer(ids["amsterdam"], "v2")
    assert bed.wait_answer(ids["berlin"], "v1")
    assert bed.answer(ids["copenhagen"]) == untouched
    versions = {s: bed.api.get(f"/v1/instances/{i}").json()["app_version"] for s, i in ids.items()}
    assert versions == {"amsterdam": 2, "berlin": 1, "copenhagen": 1}
    # The app is back at v1: an instance created now does not run the failed version.
    assert bed.api.get("/v1/apps/shop").json()["version"] == 1
    late = bed.api.post("/v1/instances", json={"app": "shop", "site": "copenhagen"})
    late.raise_for_status()
    assert late.json()["app_version"] == 1
    bed.wait_answer(late.json()["id"], "v1")
    # The next publish takes a new number (v2's is not reused), and moves every instance.
    (bed.broken / ids["berlin"]).unlink()
    again = bed.publish("shop", "v3", strategy="parallel", max_parallel=4)
    assert again["to_version"] == "3"
    done = bed.wait_done(again["id"])
    assert done["state"] == "succeeded", done
    skipped = {i["site"] for i in done["items"] if i["state"] == "skipped"}
    assert skipped == set()  # amsterdam was at v2, not v3


def test_agent_rollouts_and_packages_are_for_admins(bed: Bed) -> None:
    # A package the controller takes (its metadata is all it reads); the site has
    # no supervisor, so it says it cannot upgrade and the rollout fails at once.
    wheel = bed.tmp / "cloudlet-9.9.9-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("cloudlet-9.9.9.dist-info/METADATA", "Name: cloudlet\nVersion: 9.9.9\n")
    added = bed.api.post(
        "/v1/agent-packages", params={"filename": wheel.name}, content=wheel.read_bytes()
    )
    assert added.status_code == 201, added.text
    made = bed.api.post("/v1/upgrades/agents", json={"to": "9.9.9", "sites": ["amsterdam"]})
    assert made.status_code == 201, made.text
    assert "supervisor" in (bed.wait_done(made.json()["id"])["reason"] or "")
    member = bed.ctl.create_token("dev", "admin", "member")
    with bed.ctl.client(token=member) as api:
        assert api.get("/v1/agent-packages").status_code == 403
        assert api.post("/v1/upgrades/agents", json={"to": "9.9.9"}).status_code == 403
        put = api.put("/v1/sites/berlin/agent-target", json={"version": "9.9.9"})
        assert put.status_code == 403
        seen = api.get("/v1/rollouts", params={"limit": 100}).json()
        assert seen and all(r["kind"] == "app" for r in seen)
        assert api.get(f"/v1/rollouts/{made.json()['id']}").status_code == 404


def test_parallel_rollout_with_a_canary_moves_every_instance(bed: Bed) -> None:
    ids = bed.app("blog")
    rollout = bed.publish("blog", "v2", strategy="parallel", max_parallel=2, canary=1)
    assert [i["wave"] for i in rollout["items"]] == [0, 1, 1]
    done = bed.wait_done(rollout["id"])
    assert done["state"] == "succeeded", done
    assert all(i["state"] == "healthy" for i in done["items"])
    # The canary was healthy before the second wave started.
    canary, *rest = done["items"]
    assert all(canary["finished_at"] <= r["started_at"] for r in rest)
    for ref in ids.values():
        bed.wait_answer(ref, "v2")
    listed = bed.api.get("/v1/rollouts", params={"app": "blog"}).json()
    assert [r["id"] for r in listed] == [rollout["id"]]


def test_a_second_version_waits_for_the_running_rollout(bed: Bed) -> None:
    bed.app("wiki")
    first = bed.publish("wiki", "v2", health_timeout_s=30)
    second = bed.api.post("/v1/apps/wiki/versions", json={"components": bed.components("v3")})
    assert second.status_code == 409, second.text
    assert first["id"] in second.json()["detail"]
    assert bed.wait_done(first["id"])["state"] == "succeeded"


def test_cli_publish_waits_for_the_rollout_and_status_shows_it(bed: Bed) -> None:
    ids = bed.app("maps")
    (bed.broken / ids["amsterdam"]).touch()  # the canary fails: nothing else moves
    command = " ".join(bed.components("v2")[0]["command"])
    done = bed.cli(
        "app", "publish", "maps", "--command", command, "--canary", "1",
        "--strategy", "parallel", "--max-parallel", "2", "--health-timeout", "5", "--wait",
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "version 2 published" in done.stdout
    assert "wave 1  amsterdam/" in done.stdout and "failed" in done.stdout
    rollout_id = bed.api.get("/v1/rollouts", params={"app": "maps"}).json()[0]["id"]
    status = bed.cli("upgrade", "status", rollout_id[:8])
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert any(ln.split()[:2] == [rollout_id[:8], "app"] and "failed" in ln for ln in lines)
    rows = {ln.split()[1]: ln.split()[4] for ln in lines if ln.split()[:1] in (["1"], ["2"])}
    assert rows == {"amsterdam": "failed", "berlin": "pending", "copenhagen": "pending"}
    bed.wait_answer(ids["amsterdam"], "v1")
