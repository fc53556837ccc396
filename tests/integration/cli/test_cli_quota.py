"""`cloudlet project quota set/show` against a real controller: an admin sets limits in human
units, a member reads its own project's (table and --json), a refusal is one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudlet.testbed.local import LocalController

pytestmark = pytest.mark.integration


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[LocalController]:
    ctl = LocalController(tmp_path / "controller").start()
    try:
        yield ctl
    finally:
        ctl.stop()


def _cli(ctl: LocalController, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDLET_")}
    env |= {**ctl.cli_env(), "CLOUDLET_TOKEN": token}
    return subprocess.run(
        [str(Path(sys.executable).with_name("cloudlet")), *args],
        capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=60,
    )  # fmt: skip


def test_an_admin_sets_a_quota_and_a_member_reads_it(controller: LocalController) -> None:
    member = controller.create_token("fire-ops", project="fire", role="member")
    done = _cli(
        controller, controller.token, "project", "quota", "set", "fire", "--instances", "10",
        "--vcpus", "16", "--memory", "32GiB", "--overlay-bytes", "10GiB", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    limits = json.loads(done.stdout)["limits"]
    assert limits == {
        "instances": 10, "vcpus": 16, "memory_mib": 32 * 1024,
        "overlay_bytes": 10 * 1024**3, "image_bytes": None,
    }  # fmt: skip

    table = _cli(controller, member, "project", "quota", "show", "fire")
    assert table.returncode == 0, table.stderr
    lines = {line.split()[0]: line.split()[1:] for line in table.stdout.splitlines()[1:]}
    assert lines["memory_mib"] == ["32.0", "GiB", "0", "B", "ok"]
    assert lines["image_bytes"] == ["unlimited", "0", "B", "ok"]
    shown = json.loads(
        _cli(controller, member, "project", "quota", "show", "fire", "--json").stdout
    )
    assert shown["usage"]["instances"] == 0 and shown["over"] == []

    # Clearing one limit; a member may not set; bad input is one line, exit 1.
    done = _cli(
        controller, controller.token, "project", "quota", "set", "fire", "--vcpus", "unlimited"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(
        _cli(controller, member, "project", "quota", "show", "fire", "--json").stdout
    )["limits"]["vcpus"] is None  # fmt: skip
    refused = _cli(controller, member, "project", "quota", "set", "fire", "--instances", "99")
    assert refused.returncode == 1 and "admin" in refused.stderr
    bad = _cli(controller, controller.token, "project", "quota", "set", "fire", "--memory", "lots")
    assert bad.returncode == 1 and "--memory" in bad.stderr and len(bad.stderr.splitlines()) == 1
    other = _cli(controller, member, "project", "quota", "show", "admin")
    assert other.returncode == 1 and "not found" in other.stderr
