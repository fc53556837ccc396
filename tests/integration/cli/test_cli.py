"""The `cloudlet` command against a real controller process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudlet.testbed.local import LocalController

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalController]:
    ctl = LocalController(tmp_path_factory.mktemp("cli") / "ctl").start()
    try:
        yield ctl
    finally:
        ctl.stop()


def cli(controller: LocalController, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDLET_")}
    environ |= {
        **controller.cli_env(),
        "CLOUDLET_TOKEN_FILE": str(controller.data_dir / "admin.token"),
        "COLUMNS": "200",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "cloudlet.cli", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
    )


def ok_json(controller: LocalController, *args: str) -> Any:
    result = cli(controller, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_site_add_list_show(controller: LocalController) -> None:
    result = cli(controller, "site", "add", "lyon", "--lat", "45.76", "--lon", "4.84", "-l", "a=b")
    assert result.returncode == 0, result.stderr
    assert "clt_join_" in result.stdout and "cloudlet agent run" in result.stdout
    sites = ok_json(controller, "site", "list")
    assert [s["name"] for s in sites] == ["lyon"]
    assert sites[0]["labels"] == {"a": "b"} and sites[0]["availability"] == "unknown"
    shown = ok_json(controller, "site", "show", "lyon")
    assert shown["latitude"] == 45.76
    table = cli(controller, "site", "list")
    assert "lyon" in table.stdout and "AVAILABILITY" in table.stdout


def test_app_from_yaml_file_with_flag_override(controller: LocalController, tmp_path: Path) -> None:
    spec = tmp_path / "app.yaml"
    spec.write_text(
        "name: route\n"
        "components:\n"
        "  - name: main\n"
        "    command: [python3, -c, 'print(1)']\n"
        "resources: {vcpus: 0.5, memory_mib: 64}\n"
        "latency_bound_ms: 3600000\n"
        "constraints: ['region==default']\n"
    )
    result = cli(controller, "app", "create", "--file", str(spec), "--memory", "96")
    assert result.returncode == 0, result.stderr
    app = ok_json(controller, "app", "show", "route")
    assert app["resources"]["memory_mib"] == 96 and app["constraints"] == ["region==default"]
    assert "route" in [a["name"] for a in ok_json(controller, "app", "list")]
    assert cli(controller, "app", "delete", "route").returncode == 0
    assert "route" not in [a["name"] for a in ok_json(controller, "app", "list")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("app", "create", "x", "--command", "run", "--memory", "-5"), "memory_mib"),
        (("app", "show", "nope"), "not found"),
        (("instance", "create", "nope"), "not found"),
        (("site", "show", "atlantis"), "not found"),
        (("app", "create", "--file", "/nonexistent.yaml"), "cannot read app file"),
        (("instance", "create", "x", "--near", "north"), "LAT,LON"),
    ],
)
def test_errors_are_one_line_and_exit_non_zero(
    controller: LocalController, args: tuple[str, ...], message: str
) -> None:
    result = cli(controller, *args)
    assert result.returncode == 1
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_wrong_token_and_unreachable_controller(controller: LocalController) -> None:
    result = cli(controller, "site", "list", CLOUDLET_TOKEN="clt_admin_wrong")
    assert result.returncode == 1 and "invalid bearer token" in result.stderr
    result = cli(controller, "site", "list", CLOUDLET_URL="http://127.0.0.1:9")
    assert result.returncode == 1 and "cannot reach the controller" in result.stderr


def test_decommission_revokes_the_site(controller: LocalController) -> None:
    assert cli(controller, "site", "add", "toulon").returncode == 0
    result = cli(controller, "site", "decommission", "toulon", "--yes", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["state"] == "decommissioned"
    token = cli(controller, "site", "token", "toulon")
    assert token.returncode == 1 and "decommissioned" in token.stderr


def test_site_and_instance_lists_page(controller: LocalController) -> None:
    with controller.client() as api:
        for i in range(5):
            body = {"name": f"page-{i}", "region": "paged", "labels": {"paged": "yes"}}
            api.post("/v1/sites", json=body).raise_for_status()
    first = cli(controller, "site", "list", "--region", "paged", "--limit", "2", "-o", "name")
    assert first.returncode == 0, first.stderr
    assert first.stdout.split() == ["page-0", "page-1"]
    assert "more exist" in first.stderr and "--all" in first.stderr
    every = cli(
        controller, "site", "list", "-l", "paged=yes", "--all", "--limit", "2", "-o", "name"
    )
    assert every.returncode == 0, every.stderr
    assert every.stdout.split() == [f"page-{i}" for i in range(5)] and not every.stderr
    upto = ok_json(controller, "site", "list", "--region", "paged", "--limit", "5")
    assert [s["name"] for s in upto] == [f"page-{i}" for i in range(5)]
    online = ok_json(controller, "site", "list", "--availability", "online", "--region", "paged")
    assert online == []
    bad = cli(controller, "site", "list", "--label", "nokey")
    assert bad.returncode == 1 and "label" in bad.stderr
    listed = cli(controller, "instance", "list", "--all", "--limit", "1")
    assert listed.returncode == 0, listed.stderr
