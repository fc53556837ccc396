"""ProcessDriver against real processes: ports, signals, process groups, agent restarts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from compute_helpers import free_port, gone, http_get, wait_for

from cloudlet.compute import ProcessDriver, RestartPolicy, WorkloadSpec, WorkloadState
from cloudlet.errors import DriverError

pytestmark = pytest.mark.integration

PY = sys.executable

# Serves its working directory on $PORT; the request log goes to stderr.
SERVE_PORT = textwrap.dedent(
    """
    import http.server, os
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", int(os.environ["PORT"])), http.server.SimpleHTTPRequestHandler
    )
    server.serve_forever()
    """
)


def script(source: str) -> tuple[str, ...]:
    return (PY, "-c", textwrap.dedent(source))


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def make_driver(state_dir: Path) -> Iterator[Callable[..., ProcessDriver]]:
    """Build drivers on ``state_dir``; whatever a test leaves running is stopped after it."""
    made: list[ProcessDriver] = []

    def make(**kwargs: Any) -> ProcessDriver:
        options = {"stop_timeout": 2.0, "poll_interval": 0.02, "restart_backoff": 0.02}
        made.append(ProcessDriver(state_dir, **{**options, **kwargs}))
        return made[-1]

    yield make
    for d in made:
        d.close()
    # A test that failed after close(keep_running=True) still leaves no orphans.
    ProcessDriver(state_dir, stop_timeout=0.5).close()


@pytest.fixture
def driver(make_driver: Callable[..., ProcessDriver]) -> ProcessDriver:
    return make_driver()


def wait_logged(driver: ProcessDriver, workload_id: str, text: str) -> str:
    """Wait for a line of the workload's own output starting with ``text``."""

    def probe() -> str | None:
        log = driver.log(workload_id)
        return log if any(line.startswith(text) for line in log.splitlines()) else None

    return wait_for(probe, f"a line starting {text!r} in the log of {workload_id}")


def test_serves_http_on_its_port_from_its_own_directory(
    driver: ProcessDriver, state_dir: Path
) -> None:
    port = free_port()
    driver.create(WorkloadSpec("web", command=(PY, "-c", SERVE_PORT), port=port))
    (state_dir / "web" / "work" / "hello.txt").write_text("hello from web\n")
    endpoint = driver.start("web").endpoint
    assert endpoint == f"127.0.0.1:{port}"

    body = wait_for(lambda: http_get(f"http://{endpoint}/hello.txt"), f"an answer on {endpoint}")
    assert body == "hello from web\n"
    # The request log is written to stderr, which lands in the log too.
    wait_for(lambda: '"GET /hello.txt' in driver.log("web"), "the request in the log")


def test_environment_is_the_spec_plus_port_and_id(
    driver: ProcessDriver, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOUDLET_AGENT_SECRET", "do-not-leak")
    dump = script(
        """
        import json, os
        print("ENV " + json.dumps({"env": dict(os.environ), "cwd": os.getcwd()}), flush=True)
        """
    )
    driver.create(WorkloadSpec("env", command=dump, env={"GREETING": "hi"}, port=5555))
    driver.start("env")
    line = next(
        line for line in wait_logged(driver, "env", "ENV ").splitlines() if line.startswith("ENV ")
    )
    seen = json.loads(line.removeprefix("ENV "))
    env = seen["env"]
    assert env["GREETING"] == "hi"
    assert env["PORT"] == "5555"
    assert env["CLOUDLET_WORKLOAD_ID"] == "env"
    assert env["PATH"] == os.environ["PATH"]
    assert "CLOUDLET_AGENT_SECRET" not in env
    assert Path(seen["cwd"]) == (state_dir / "env" / "work").resolve()


def test_unknown_command_fails_at_create_and_leaves_nothing(
    driver: ProcessDriver, state_dir: Path
) -> None:
    with pytest.raises(DriverError, match="not found"):
        driver.create(WorkloadSpec("w1", command=("no-such-command-cloudlet",)))
    with pytest.raises(DriverError, match="absolute"):
        driver.create(WorkloadSpec("w1", command=("./relative",)))
    with pytest.raises(DriverError, match="invalid workload id"):
        driver.create(WorkloadSpec("../escape", command=("sleep", "1")))
    assert driver.list() == []
    assert [p.name for p in state_dir.iterdir()] == [".lock"]


def test_command_removed_after_create_fails_at_start(driver: ProcessDriver, tmp_path: Path) -> None:
    program = tmp_path / "app.sh"
    program.write_text("#!/bin/sh\nsleep 600\n")
    program.chmod(0o755)
    driver.create(WorkloadSpec("w1", command=(str(program),)))
    program.unlink()
    with pytest.raises(DriverError, match="cannot start"):
        driver.start("w1")
    status = driver.status("w1")
    assert status.state is WorkloadState.CREATED
    assert status.reason is not None and "cannot start" in status.reason


def test_restarts_show_in_the_log(driver: ProcessDriver) -> None:
    command = script("print('run', flush=True); raise SystemExit(1)")
    driver.create(WorkloadSpec("w1", command=command, max_restarts=2))
    driver.start("w1")
    wait_for(lambda: driver.status("w1").state is WorkloadState.FAILED, "w1 to fail")
    runs = [line for line in driver.log("w1").splitlines() if line == "run"]
    assert len(runs) == 3


def test_log_returns_the_tail(driver: ProcessDriver) -> None:
    command = script("for i in range(2000): print(f'line {i:04d}')")
    driver.create(WorkloadSpec("w1", command=command))
    driver.start("w1")
    wait_for(lambda: driver.status("w1").state is WorkloadState.STOPPED, "w1 to finish")
    assert "line 1999\n" in driver.log("w1")
    tail = driver.log("w1", tail_bytes=200)
    assert len(tail.encode()) == 200
    assert "line 0000" not in tail


def test_a_big_log_is_rotated_at_restart(
    driver: ProcessDriver, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("cloudlet.compute.process._driver.MAX_LOG_BYTES", 1000)
    command = script("print('x' * 2000, flush=True); raise SystemExit(1)")
    driver.create(WorkloadSpec("w1", command=command, max_restarts=1))
    driver.start("w1")
    wait_for(lambda: driver.status("w1").state is WorkloadState.FAILED, "w1 to fail")
    assert "x" * 2000 in (state_dir / "w1" / "console.log.1").read_text()
    assert "x" * 2000 in driver.log("w1")  # the second run's output


def test_sigterm_ignoring_workload_is_killed_after_the_timeout(driver: ProcessDriver) -> None:
    stubborn = script(
        """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        time.sleep(600)
        """
    )
    driver.create(WorkloadSpec("w1", command=stubborn))
    pid = driver.start("w1").pid
    assert pid is not None
    wait_logged(driver, "w1", "ready")
    driver.stop("w1", timeout=0.3)
    status = driver.status("w1")
    assert (status.state, status.exit_code) == (WorkloadState.STOPPED, -signal.SIGKILL)
    assert not psutil.pid_exists(pid)  # killed and reaped: no zombie


GRANDPARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", '''
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("grandchild ready", flush=True)
time.sleep(600)
'''])
print(f"grandchild {child.pid}", flush=True)
time.sleep(EXIT_AFTER)
"""


def grandchild_pid(log: str) -> int:
    return next(int(line.split()[1]) for line in log.splitlines() if line.startswith("grandchild "))


def test_stop_kills_the_whole_group(driver: ProcessDriver) -> None:
    driver.create(WorkloadSpec("w1", command=script(GRANDPARENT.replace("EXIT_AFTER", "600"))))
    leader = driver.start("w1").pid
    assert leader is not None
    grandchild = grandchild_pid(wait_logged(driver, "w1", "grandchild ready"))
    # The leader dies of SIGTERM at once; the grandchild ignores it and needs SIGKILL.
    driver.stop("w1", timeout=0.3)
    assert not psutil.pid_exists(leader)
    wait_for(lambda: gone(grandchild), f"grandchild {grandchild} to be gone")


def test_leftovers_are_killed_when_the_leader_exits(driver: ProcessDriver) -> None:
    command = script(GRANDPARENT.replace("EXIT_AFTER", "0"))
    driver.create(WorkloadSpec("w1", command=command, restart=RestartPolicy.NEVER))
    driver.start("w1")
    grandchild = grandchild_pid(wait_logged(driver, "w1", "grandchild "))
    wait_for(lambda: driver.status("w1").state is WorkloadState.STOPPED, "the leader to exit")
    wait_for(lambda: gone(grandchild), f"grandchild {grandchild} to be gone")


def test_close_leaves_no_process_behind(make_driver: Callable[..., ProcessDriver]) -> None:
    driver = make_driver(stop_timeout=0.3)
    stubborn = script(
        """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        time.sleep(600)
        """
    )
    pids = []
    for workload_id, command in [("a", ("sleep", "600")), ("b", ("sleep", "600")), ("c", stubborn)]:
        driver.create(WorkloadSpec(workload_id, command=command))
        pids.append(driver.start(workload_id).pid)
    wait_logged(driver, "c", "ready")
    driver.close()
    assert [pid for pid in pids if pid is not None and psutil.pid_exists(pid)] == []


def count_processes(marker: str) -> int:
    count = 0
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["status"] != psutil.STATUS_ZOMBIE and any(marker in a for a in cmdline):
            count += 1
    return count


def test_agent_restart_adopts_the_same_process(
    make_driver: Callable[..., ProcessDriver],
) -> None:
    port = free_port()
    marker = f"cloudlet-adopt-{port}"
    spec = WorkloadSpec("web", command=(PY, "-c", f"# {marker}\n{SERVE_PORT}"), port=port)
    first = make_driver()
    first.create(spec)
    pid = first.start("web").pid
    wait_for(lambda: http_get(f"http://127.0.0.1:{port}/"), "the server to answer")
    first.close(keep_running=True)
    assert not gone(pid)

    second = make_driver()
    assert second.status("web").pid == pid
    assert second.start("web").pid == pid
    assert http_get(f"http://127.0.0.1:{port}/") is not None
    assert count_processes(marker) == 1
    second.close()
    assert not psutil.pid_exists(pid)


AGENT = """
import sys
from pathlib import Path
from cloudlet.compute import ProcessDriver, WorkloadSpec
driver = ProcessDriver(Path(sys.argv[1]))
driver.create(WorkloadSpec("w1", command=("sleep", "600")))
print(driver.start("w1").pid, flush=True)
import os
os._exit(0)  # the agent dies without closing anything
"""


def test_workload_outlives_a_crashed_agent_and_is_adopted(
    state_dir: Path, make_driver: Callable[..., ProcessDriver]
) -> None:
    agent = subprocess.run(
        [PY, "-c", AGENT, str(state_dir)], capture_output=True, text=True, check=True
    )
    pid = int(agent.stdout)
    assert not gone(pid)  # now an orphan, not our child

    driver = make_driver()
    assert driver.status("w1").pid == pid
    # It dies behind our back: the policy restarts it, exit code unknown.
    os.kill(pid, signal.SIGKILL)
    status = wait_for(
        lambda: (s := driver.status("w1")).restarts == 1 and s.pid is not None and s,
        "w1 to be restarted",
    )
    assert status.pid != pid
    assert status.exit_code is None
    driver.close()
    assert status.pid is not None and not psutil.pid_exists(status.pid)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (RestartPolicy.NEVER, WorkloadState.FAILED),
        (RestartPolicy.ON_FAILURE, WorkloadState.RUNNING),
    ],
)
def test_a_reused_pid_is_never_adopted(
    state_dir: Path,
    make_driver: Callable[..., ProcessDriver],
    policy: RestartPolicy,
    expected: WorkloadState,
) -> None:
    first = make_driver()
    first.create(WorkloadSpec("w1", command=("sleep", "600"), restart=policy))
    first.start("w1")
    first.close()
    # The record says running, but its pid now belongs to an unrelated process.
    with subprocess.Popen(["sleep", "600"]) as decoy:
        record_path = state_dir / "w1" / "state.json"
        record = json.loads(record_path.read_text())
        record.update(state="running", pid=decoy.pid, create_time=1.0)
        record_path.write_text(json.dumps(record))

        try:
            driver = make_driver()
            status = wait_for(
                lambda: (
                    (s := driver.status("w1")).state is expected
                    and (s.pid is not None) == (expected is WorkloadState.RUNNING)
                    and s
                ),
                f"w1 to be {expected.value} without the decoy",
            )
            assert status.pid != decoy.pid
            assert status.exit_code is None
            driver.close()
            assert decoy.poll() is None  # never signalled
        finally:
            decoy.kill()
