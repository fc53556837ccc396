"""`cloudlet demo` end to end: the story runs, the cut and the catch-up show, nothing is left."""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from rich.console import Console

import cloudlet.demo._scenario as scenario
from cloudlet.demo import run_demo
from cloudlet.demo._plan import app_bodies
from cloudlet.errors import CloudletError

pytestmark = pytest.mark.integration

RUN_TIMEOUT_S = 240
DEMO_DIR = re.compile(r"controller in (\S*cloudlet-demo-\w+)")


def demo_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "cloudlet.cli", "demo", "--no-live", *args]


def demo_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDLET_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def my_children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def processes_of(root: str) -> list[str]:
    """Processes whose command line mentions ``root`` or that run inside it."""
    found = []
    for proc in psutil.process_iter():
        try:
            if any(root in arg for arg in proc.cmdline()) or proc.cwd().startswith(root):
                found.append(f"{proc.pid}: {' '.join(proc.cmdline())}")
        except (psutil.Error, OSError):
            continue
    return found


def demo_dir(output: str) -> str:
    match = DEMO_DIR.search(output)
    assert match, f"the demo did not say where it works:\n{output}"
    return match.group(1)


def test_demo_runs_the_story_and_leaves_nothing_behind() -> None:
    before = my_children()
    proc = subprocess.run(
        demo_cmd("--duration", "20"),
        capture_output=True,
        text=True,
        env=demo_env(),
        timeout=RUN_TIMEOUT_S,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    for expected in (
        "All three agents enrolled",
        "All instances running",
        "CUT: the link between marseille",
        "marseille still serves fire-watch: risk ",
        "Controller: marseille is offline",
        "without the controller, and answers: risk ",
        "RESTORE:",
        "marseille online again",
        "(origin: site)",
        "CATCH-UP: marseille is in-sync (lag 0)",
        "ALARM cleared: site.offline for site=marseille at ",
        "Alarms site.offline in its history: 1 (raised once, cleared once)",
        "Demo complete.",
        "sites join with a CSR, then sync over mutual TLS.",
    ):
        assert expected in output, f"missing {expected!r} in:\n{output}"
    dashboard = re.search(r"Dashboard: (https://127\.0\.0\.1:\d+/ui) .*admin token, the contents"
                          r" of (\S+admin\.token)", output)  # fmt: skip
    assert dashboard and dashboard.group(2).startswith(demo_dir(output)), output
    raised = re.search(r"ALARM raised: site\.offline \(major\) for site=marseille at [\d:]{8},"
                       r" ([\d.]+)s after the cut", output)  # fmt: skip
    assert raised and float(raised.group(1)) > 0, output
    assert output.index("ALARM raised") < output.index("RESTORE:") < output.index("ALARM cleared")
    arrived = re.search(r"the (\d+) events it recorded while cut off arrived", output)
    assert arrived and int(arrived.group(1)) > 0, output
    assert "leftover" not in output, output
    root = demo_dir(output)
    assert not Path(root).exists()
    assert processes_of(root) == []
    assert my_children() - before == set()


def test_ctrl_c_stops_everything() -> None:
    before = my_children()
    proc = subprocess.Popen(
        demo_cmd("--keep-dir"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=demo_env(),
    )
    assert proc.stdout is not None
    lines: list[str] = []
    running = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "All instances running" in line:
                running.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not running.wait(0.5) and proc.poll() is None and time.monotonic() < deadline:
            pass
        assert running.is_set(), f"exit code {proc.poll()}:\n{''.join(lines)}"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(RUN_TIMEOUT_S) == 130, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(RUN_TIMEOUT_S)
        proc.stdout.close()
    output = "".join(lines)
    assert "Stopped the agents" in output
    assert "leftover" not in output, output
    root = demo_dir(output)
    try:
        assert processes_of(root) == []
        assert my_children() - before == set()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_step_that_fails_stops_the_demo_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_apps() -> list[dict[str, Any]]:
        bodies = app_bodies()
        bodies[0]["components"][0]["command"] = [sys.executable, "-c", "raise SystemExit(3)"]
        return bodies

    monkeypatch.setattr(scenario, "app_bodies", broken_apps)
    out = io.StringIO()
    before = my_children()
    with pytest.raises(CloudletError, match=r"fire-watch-\w+ at (marseille|grenoble)") as failure:
        run_demo(Console(file=out, width=200), duration_s=20, live=False)
    assert "\n" not in str(failure.value)
    output = out.getvalue()
    root = demo_dir(output)
    try:
        assert f"Logs and state kept in {root}" in output
        assert "leftover" not in output, output
        assert processes_of(root) == []
        assert my_children() - before == set()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_public_names() -> None:
    import cloudlet.demo
    import cloudlet.testbed.relay

    assert cloudlet.demo.__all__ == ["DEFAULT_DURATION_S", "DEFAULT_OFFLINE_GRACE_S", "run_demo"]
    assert cloudlet.testbed.relay.__all__ == ["Relay", "RelayStats", "RelayThread"]


def test_waste_route_plans_a_closed_round_no_longer_than_nearest_neighbour() -> None:
    from cloudlet.demo.apps import waste_route as wr

    rng = random.Random(7)
    points = [
        (45.76 + rng.uniform(-0.05, 0.05), 4.84 + rng.uniform(-0.05, 0.05)) for _ in range(25)
    ]
    order = wr.plan(points)
    assert order[0] == order[-1] == 0
    assert sorted(order[:-1]) == list(range(len(points)))
    greedy = [0]
    todo = set(range(1, len(points)))
    while todo:
        nxt = min(todo, key=lambda i: wr.haversine_km(points[greedy[-1]], points[i]))
        greedy.append(nxt)
        todo.remove(nxt)
    greedy.append(0)
    assert wr.tour_km(points, order) <= wr.tour_km(points, greedy) + 1e-9


def test_fire_watch_levels_follow_the_angstrom_index() -> None:
    from cloudlet.demo.apps import fire_watch as fw

    assert fw.angstrom(27, 40) == pytest.approx(2.0)
    assert fw.level(fw.angstrom(35, 10)) == "very-high"
    assert fw.level(2.2) == "high"
    assert fw.level(3.5) == "low"
    assert fw.level(fw.angstrom(15, 80)) == "very-low"


def test_waste_route_writes_and_serves_its_latest_round(tmp_path: Path) -> None:
    from cloudlet.demo.apps import WASTE_ROUTE
    from cloudlet.testbed.local import free_port, wait_for

    port = free_port()
    env = {**demo_env(), "PORT": str(port), "WASTE_ROUTE_INTERVAL_S": "0.5"}
    proc = subprocess.Popen(
        [sys.executable, str(WASTE_ROUTE)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        served = wait_for(
            lambda: (
                (r := httpx.get(f"http://127.0.0.1:{port}/", timeout=2)).json()["round"] >= 2
                and r.json()
            ),
            30,
            "two rounds planned",
        )
        written = json.loads((tmp_path / "route.json").read_text())
        assert written["round"] >= 1
        assert served["route"][0] == served["route"][-1] == "depot"
        assert len(served["route"]) == served["bins_full"] + 2
        assert httpx.get(f"http://127.0.0.1:{port}/nope", timeout=2).status_code == 404
    finally:
        proc.terminate()
        assert proc.wait(10) == 0  # SIGTERM is a clean stop
