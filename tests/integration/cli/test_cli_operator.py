"""The `cloudlet` command as an operator meets it on the first day, without a terminal:
lifecycle with --wait, placement's why, full-width output and --output, prompts that
need --yes, event paging and following, help texts. A real controller and agent."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloudlet.cli._context import EXIT_NEEDS_YES
from cloudlet.testbed.local import LocalAgent, LocalController, wait_for

pytestmark = pytest.mark.integration

LONG_SITE = "a-site-with-a-rather-long-name-that-a-narrow-table-would-cut-0123"[:63]


@dataclass
class World:
    controller: LocalController
    agent: LocalAgent

    def env(self, **extra: str) -> dict[str, str]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDLET_")}
        environ.pop("COLUMNS", None)  # as a pipe would see it: no width to go by
        return environ | {
            **self.controller.cli_env(),
            "CLOUDLET_TOKEN_FILE": str(self.controller.data_dir / "admin.token"),
            **extra,
        }

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """The real entry point, stdin and stdout not terminals."""
        return subprocess.run(
            [str(Path(sys.executable).with_name("cloudlet")), *args],
            capture_output=True,
            text=True,
            env=self.env(**env),
            stdin=subprocess.DEVNULL,
            timeout=90,
        )

    def ok(self, *args: str) -> str:
        result = self.cli(*args)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--output", "json"))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("operator")
    ctl = LocalController(tmp / "ctl").start()
    api = ctl.client()
    token = api.post("/v1/sites", json={"name": "lyon", "region": "fr-south"})
    agent = LocalAgent(
        "lyon",
        tmp / "lyon",
        ctl.url,
        join_token=token.json()["join_token"]["token"],
        env={"CLOUDLET_AGENT__ANNOUNCE": "false"},
    ).start()
    try:
        wait_for(lambda: api.get("/v1/sites/lyon").json()["availability"] == "online", 30, "enroll")
        app = {
            "name": "web",
            "components": [
                {"name": "main", "command": [sys.executable, "-m", "http.server", "$PORT"]}
            ],
            "resources": {"vcpus": 0.1, "memory_mib": 32, "disk_gib": 0.01},
            "latency_bound_ms": 3_600_000,
        }
        api.post("/v1/apps", json=app).raise_for_status()
        yield World(ctl, agent)
    finally:
        api.close()
        agent.stop()
        ctl.stop()


def test_lifecycle_with_wait_and_why_placement_chose(world: World) -> None:
    out = world.ok("instance", "create", "web", "--name", "w1", "--wait", "60")
    assert "instance w1 at site lyon: running" in out
    assert "placement: chose lyon of 1 fitting site(s); scores lyon" in out

    assert "is stopped" in world.ok("instance", "stop", "w1", "--wait", "30")
    shown = world.ok("instance", "show", "w1")
    assert "not running: no usage accrues" in shown
    assert "last_checkpoint" in shown  # "-": its app takes none

    refused = world.cli("instance", "suspend", "w1")
    assert refused.returncode == 1
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "cannot be suspended" in refused.stderr and "process" in refused.stderr

    assert "is running" in world.ok("instance", "start", "w1", "--wait", "30")
    restarted = world.json("instance", "restart", "w1", "--wait", "30")
    assert restarted["actual_state"] == "running" and restarted["restarts"] == 1
    shown = world.ok("instance", "show", "w1")
    assert "usage_since" in shown and "recorded every 60 s" in shown
    assert "open for" in shown


def test_event_list_since_limit_and_follow(world: World) -> None:
    world.ok("instance", "create", "web", "--name", "w2", "--wait", "60")
    few = world.cli("event", "list", "--limit", "2")
    assert few.returncode == 0, few.stderr
    assert len(few.stdout.strip().splitlines()) == 3  # a header and two rows
    assert "older events were left out" in few.stderr and "--before" in few.stderr

    everything = world.json("event", "list", "--limit", "10000")
    assert len(everything) > 2
    cut = everything[len(everything) // 2]["at"]
    newer = world.json("event", "list", "--since", cut, "--limit", "10000")
    assert newer and all(e["at"] >= cut for e in newer)
    older = world.json("event", "list", "--before", cut, "--limit", "10000")
    assert older and all(e["at"] < cut for e in older)
    assert len(newer) + len(older) == len(everything)
    assert world.json("event", "list", "--before", cut, "--all", "--limit", "2") == older
    bad = world.cli("event", "list", "--since", "yesterday-ish")
    assert bad.returncode == 1 and "--since must be" in bad.stderr
    assert world.json("event", "list", "--since", "0s", "--kind", "instance.created") == []

    item = world.json("instance", "show", "w2")
    follow = subprocess.Popen(
        [str(Path(sys.executable).with_name("cloudlet")), "event", "list", "-f", "--json",
         "--instance", item["id"], "--kind", "instance.state", "--interval", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=world.env(),
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert follow.stdout is not None
        history = [json.loads(follow.stdout.readline()) for _ in range(2)]
        assert all(e["instance"] == item["id"] for e in history)
        world.ok("instance", "stop", "w2")
        streamed: list[str] = []
        deadline = time.monotonic() + 30
        while "stopped" not in streamed and time.monotonic() < deadline:
            streamed.append(json.loads(follow.stdout.readline())["data"]["state"])
        assert streamed[-2:] == ["stopping", "stopped"], streamed
    finally:
        follow.kill()
        follow.communicate(timeout=10)  # and close the pipes


def test_usage_help_says_when_usage_is_written(world: World) -> None:
    helped = world.ok("event", "list", "--help")
    assert "every 60 s" in " ".join(helped.split())


def test_tables_without_a_terminal_are_full_width_and_formats_are_honoured(
    world: World,
) -> None:
    added = world.cli("site", "add", LONG_SITE, "--region", "fr-south-east-and-far-beyond")
    assert added.returncode == 0, added.stderr
    command = [line for line in added.stdout.splitlines() if "cloudlet agent run" in line]
    assert len(command) == 1  # the whole command on one line, ready to copy
    token = added.stdout.splitlines()[1].strip()
    assert f"--controller {world.controller.url} --join {token}" in command[0]
    assert token.startswith("clt_join_")

    table = world.ok("site", "list")
    assert "…" not in table
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["NAME", "REGION", "STATE"]
    row = next(line for line in lines if line.startswith(LONG_SITE))
    assert "fr-south-east-and-far-beyond" in row.split()  # cut nowhere
    assert max(len(line) for line in lines) > 80  # wider than a default console

    sites = world.json("site", "list")
    ids = {s["name"]: s["id"] for s in sites}
    wide = world.ok("site", "list", "-o", "wide")
    assert "ID" in wide.splitlines()[0] and ids[LONG_SITE] in wide
    assert world.ok("site", "list", "-o", "name").split() == sorted(ids)
    from_yaml = yaml.safe_load(world.ok("site", "list", "-o", "yaml"))
    assert {s["name"]: s["id"] for s in from_yaml} == ids
    shown = world.ok("site", "show", "lyon")
    assert any(line.startswith("id:") and ids["lyon"] in line for line in shown.splitlines())

    world.ok("instance", "create", "web", "--name", "w-wide", "--wait", "60")
    item = world.json("instance", "show", "w-wide")
    assert item["endpoint"] in world.ok("instance", "list")  # host:port, whole
    wide = world.ok("instance", "list", "--output", "wide")
    assert item["id"] in wide and "RESTARTS" in wide.splitlines()[0]
    assert "w-wide" in world.ok("instance", "list", "-o", "name").split()


def test_prompts_without_a_terminal_say_that_yes_is_needed(world: World) -> None:
    result = world.cli("site", "decommission", LONG_SITE)
    assert result.returncode == EXIT_NEEDS_YES
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "--yes" in result.stderr
    assert world.json("site", "show", LONG_SITE)["state"] == "registered"  # nothing done

    done = world.json("site", "decommission", LONG_SITE, "--yes")
    assert done["state"] == "decommissioned"  # no agent ever enrolled: at once


def test_decommission_waits_for_the_drain(world: World) -> None:
    world.ok("instance", "create", "web", "--name", "w3", "--site", "lyon", "--wait", "60")
    out = world.ok("site", "decommission", "lyon", "--yes", "--wait", "60")
    assert "site lyon is decommissioned; its credential is revoked" in out
    assert world.json("instance", "list", "--site", "lyon") == []


def test_help_texts_keep_their_defaults(world: World) -> None:
    for args in (("--help",), ("agent", "run", "--help"), ("controller", "serve", "--help")):
        text = world.ok(*args)
        # A "[default]" eaten as markup left "Local state ." behind.
        assert not re.search(r"\w \.(\s|$)", text), text
    flat = " ".join(world.ok("agent", "run", "--help").split())
    assert "(default info)" in flat and "(default 7480" in flat
    assert "Controller URL (env CLOUDLET_URL)." in " ".join(world.ok("--help").split())
