"""Agent upgrades orchestrated across sites: the controller's rollout moves three
supervised agents to a real wheel in waves, and stops at the first site that does
not come back healthy (its agent rolls back by itself), leaving the rest untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from upgrade_wheels import Wheel, build_wheels

from cloudlet import __version__
from cloudlet.testbed.local import LocalAgent, LocalController, wait_for

GOOD, CRASHES = "0.1.1", "0.1.2"
SITES = ["arles", "brest", "caen"]


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Wheel]:
    return build_wheels(tmp_path_factory.mktemp("wheels"), {GOOD: None, CRASHES: "crash"})


def _cli(controller: LocalController, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDLET_")}
    env |= {
        **controller.cli_env(),
        "CLOUDLET_TOKEN_FILE": str(controller.data_dir / "admin.token"),
    }
    cloudlet = str(Path(sys.executable).with_name("cloudlet"))
    return subprocess.run([cloudlet, *args], capture_output=True, text=True, env=env, timeout=180)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[LocalController, dict[str, LocalAgent]]]:
    controller = LocalController(tmp_path / "ctl").start()
    agents: dict[str, LocalAgent] = {}
    with ExitStack() as stack:
        stack.callback(controller.stop)
        api = stack.enter_context(controller.client())
        for name in SITES:
            join = api.post("/v1/sites", json={"name": name}).json()["join_token"]["token"]
            agents[name] = LocalAgent(
                name,
                tmp_path / name,
                controller.url,
                join,
                env={"CLOUDLET_AGENT__UPGRADE_DEADLINE_S": "15"},
                command="supervise",
            ).start()
            stack.callback(agents[name].stop)
        for name in SITES:
            wait_for(lambda n=name: _site(api, n)["availability"] == "online", 60, f"{name} up")
        yield controller, agents


def _site(api: httpx.Client, name: str) -> dict[str, Any]:
    return api.get(f"/v1/sites/{name}").json()


def _upload(api: httpx.Client, wheel: Wheel) -> None:
    answer = api.post(
        "/v1/agent-packages",
        params={"filename": wheel.path.name},
        content=wheel.path.read_bytes(),
        headers={"content-type": "application/octet-stream"},
    )
    assert answer.status_code == 201, answer.text


def _upgrade(api: httpx.Client, to: str, **rollout: Any) -> dict[str, Any]:
    made = api.post("/v1/upgrades/agents", json={"to": to, "rollout": rollout})
    assert made.status_code == 201, made.text
    ref = made.json()["id"]
    return wait_for(
        lambda: (r := api.get(f"/v1/rollouts/{ref}").json())["state"] != "running" and r,
        120,
        f"agent rollout to {to} ended",
        interval=0.5,
    )


def test_agent_rollout_in_waves_stops_at_the_site_that_rolls_back(
    fleet: tuple[LocalController, dict[str, LocalAgent]], wheels: dict[str, Wheel]
) -> None:
    controller, agents = fleet
    api = controller.client()
    _upload(api, wheels[GOOD])
    done = _upgrade(api, GOOD, strategy="serial", health_timeout_s=60)
    assert done["state"] == "succeeded", done
    assert [(i["site"], i["wave"], i["state"]) for i in done["items"]] == [
        (name, wave, "healthy") for wave, name in enumerate(SITES)
    ]
    assert {i["from_version"] for i in done["items"]} == {__version__}
    assert {n: _site(api, n)["agent_version"] for n in SITES} == dict.fromkeys(SITES, GOOD)

    # A broken release: the canary site's agent cannot start it and rolls back by itself;
    # the rollout stops there and never tells the other sites.
    # This time as an operator would, from the CLI.
    uploaded = _cli(controller, "upgrade", "upload", str(wheels[CRASHES].path))
    assert uploaded.returncode == 0, uploaded.stderr
    assert f"agent package {CRASHES} added" in uploaded.stdout
    ran = _cli(
        controller, "upgrade", "agents", "--to", CRASHES, "--strategy", "parallel",
        "--max-parallel", "2", "--canary", "1", "--wait",
    )  # fmt: skip
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert "wave 1  arles/arles  failed" in ran.stdout
    status = _cli(controller, "upgrade", "status", "--output", "json")
    assert status.returncode == 0, status.stderr
    latest = json.loads(status.stdout)[0]
    done = api.get(f"/v1/rollouts/{latest['id']}").json()
    assert done["to_version"] == CRASHES
    assert done["state"] == "failed", [(i["site"], i["state"], i["reason"]) for i in done["items"]]
    states = {i["site"]: i["state"] for i in done["items"]}
    assert states == {"arles": "failed", "brest": "pending", "caen": "pending"}
    assert "site arles: the agent rolled back" in done["reason"]
    assert "deliberately broken" in done["reason"]
    for name in SITES:
        assert _site(api, name)["agent_version"] == GOOD
    assert _site(api, "arles")["agent_target"] == GOOD  # its wave moved back
    assert _site(api, "brest")["agent_target"] == GOOD  # from the first rollout
    health = agents["arles"].health()
    assert health is not None and health["agent_version"] == GOOD
    api.close()
