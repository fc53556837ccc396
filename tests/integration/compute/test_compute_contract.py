"""The compute driver contract, run against every driver (fake in memory, process for real).

Each driver comes with a small harness that turns "a workload that keeps running" or
"a workload that exits with code N" into a spec that driver understands, and that can
build a second driver on the same state, as an agent restart would.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from compute_helpers import wait_for

from cloudlet.compute import (
    ComputeDriver,
    FakeDriver,
    FakeMachine,
    ProcessDriver,
    RestartPolicy,
    WorkloadSpec,
    WorkloadState,
    WorkloadStatus,
)
from cloudlet.errors import DriverError, WorkloadNotFoundError

RUNNING = WorkloadState.RUNNING
STOPPED = WorkloadState.STOPPED
FAILED = WorkloadState.FAILED
SETTLED = (STOPPED, FAILED)


@dataclass
class Harness:
    name: str
    new_driver: Callable[[], ComputeDriver]
    run_command: tuple[str, ...]
    exit_command: Callable[[int], tuple[str, ...]]
    drivers: list[ComputeDriver] = field(default_factory=list)

    def driver(self) -> ComputeDriver:
        """A driver on the harness's state; several in a row act out agent restarts."""
        driver = self.new_driver()
        self.drivers.append(driver)
        return driver

    def spec(
        self,
        workload_id: str,
        *,
        exit_code: int | None = None,
        port: int | None = None,
        restart: RestartPolicy = RestartPolicy.ON_FAILURE,
        max_restarts: int = 5,
    ) -> WorkloadSpec:
        command = self.run_command if exit_code is None else self.exit_command(exit_code)
        return WorkloadSpec(
            workload_id, command=command, port=port, restart=restart, max_restarts=max_restarts
        )


def _fake_program(spec: WorkloadSpec) -> int | None:
    return int(spec.command[1]) if spec.command[0] == "exit" else None


def _fake_harness(tmp_path: Path) -> Harness:
    machine = FakeMachine()
    return Harness(
        name="fake",
        new_driver=lambda: FakeDriver(program=_fake_program, machine=machine),
        run_command=("serve",),
        exit_command=lambda code: ("exit", str(code)),
    )


def _process_harness(tmp_path: Path) -> Harness:
    return Harness(
        name="process",
        new_driver=lambda: ProcessDriver(
            tmp_path / "state",
            stop_timeout=2.0,
            poll_interval=0.02,
            restart_backoff=0.02,
            max_backoff=0.2,
        ),
        run_command=("sleep", "600"),
        exit_command=lambda code: (sys.executable, "-c", f"raise SystemExit({code})"),
    )


@pytest.fixture(
    params=["fake", pytest.param("process", marks=pytest.mark.integration)],
)
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    h = {"fake": _fake_harness, "process": _process_harness}[request.param](tmp_path)
    yield h
    for driver in reversed(h.drivers):
        driver.close()


@pytest.fixture
def driver(harness: Harness) -> ComputeDriver:
    return harness.driver()


def settle(driver: ComputeDriver, workload_id: str) -> WorkloadStatus:
    """Wait until the restart policy is done with the workload."""
    return wait_for(
        lambda: (s := driver.status(workload_id)).state in SETTLED and s,
        f"{workload_id} to settle in {SETTLED}",
    )


# -- create -----------------------------------------------------------------------------


def test_capabilities_are_declared(driver: ComputeDriver) -> None:
    assert isinstance(driver.capabilities["suspend"], bool)
    assert isinstance(driver.capabilities["survives_agent"], bool)


def test_created_workload_is_known_but_not_running(harness: Harness, driver: ComputeDriver) -> None:
    driver.create(harness.spec("w1", port=8080))
    status = driver.status("w1")
    assert status.state is WorkloadState.CREATED
    assert (status.pid, status.endpoint, status.restarts) == (None, None, 0)
    assert driver.list() == ["w1"]


def test_create_is_idempotent_for_the_same_spec(harness: Harness, driver: ComputeDriver) -> None:
    driver.create(harness.spec("w1"))
    driver.create(harness.spec("w1"))
    assert driver.list() == ["w1"]


def test_create_with_another_spec_is_refused(harness: Harness, driver: ComputeDriver) -> None:
    driver.create(harness.spec("w1", port=8080))
    with pytest.raises(DriverError, match="different spec"):
        driver.create(harness.spec("w1", port=8081))
    driver.start("w1")
    assert driver.status("w1").endpoint == "127.0.0.1:8080"


def test_failed_create_leaves_nothing(driver: ComputeDriver) -> None:
    with pytest.raises(DriverError):
        driver.create(WorkloadSpec("w1", command=()))
    assert driver.status("w1").state is WorkloadState.ABSENT
    assert driver.list() == []


# -- start / stop -----------------------------------------------------------------------


def test_start_runs_the_workload(harness: Harness, driver: ComputeDriver) -> None:
    driver.create(harness.spec("w1", port=8080))
    started = driver.start("w1")
    assert started.state is RUNNING
    assert isinstance(started.pid, int)
    assert started.endpoint == "127.0.0.1:8080"
    assert driver.status("w1") == started


def test_endpoint_needs_a_port(harness: Harness, driver: ComputeDriver) -> None:
    driver.create(harness.spec("w1"))
    assert driver.start("w1").endpoint is None


def test_start_of_a_running_workload_changes_nothing(
    harness: Harness, driver: ComputeDriver
) -> None:
    driver.create(harness.spec("w1"))
    first = driver.start("w1")
    assert driver.start("w1").pid == first.pid


def test_stop_then_start_again(harness: Harness, driver: ComputeDriver) -> None:
    driver.create(harness.spec("w1", port=8080))
    first = driver.start("w1")
    driver.stop("w1")
    stopped = driver.status("w1")
    assert stopped.state is STOPPED
    assert (stopped.pid, stopped.endpoint) == (None, None)
    driver.stop("w1")  # stopping a stopped workload succeeds
    assert driver.status("w1").state is STOPPED
    again = driver.start("w1")
    assert again.state is RUNNING
    assert again.pid != first.pid


def test_stop_of_a_created_workload_succeeds(harness: Harness, driver: ComputeDriver) -> None:
    driver.create(harness.spec("w1"))
    driver.stop("w1")
    assert driver.status("w1").state in (WorkloadState.CREATED, STOPPED)


# -- unknown ids, delete, list ----------------------------------------------------------


def test_unknown_workload(driver: ComputeDriver) -> None:
    assert driver.status("nope") == WorkloadStatus("nope", WorkloadState.ABSENT)
    with pytest.raises(WorkloadNotFoundError):
        driver.start("nope")
    with pytest.raises(WorkloadNotFoundError):
        driver.stop("nope")
    with pytest.raises(WorkloadNotFoundError):
        driver.log("nope")
    driver.delete("nope")  # deleting a missing workload succeeds


def test_delete_removes_a_running_workload(harness: Harness, driver: ComputeDriver) -> None:
    driver.create(harness.spec("w1"))
    driver.start("w1")
    driver.delete("w1")
    assert driver.status("w1").state is WorkloadState.ABSENT
    assert driver.list() == []
    driver.delete("w1")
    driver.create(harness.spec("w1"))  # the id is free again
    assert driver.status("w1").state is WorkloadState.CREATED


def test_list_holds_every_workload(harness: Harness, driver: ComputeDriver) -> None:
    for workload_id in ("b", "a", "c"):
        driver.create(harness.spec(workload_id))
    driver.start("b")
    driver.delete("c")
    assert sorted(driver.list()) == ["a", "b"]


def test_log(harness: Harness, driver: ComputeDriver) -> None:
    driver.create(harness.spec("w1"))
    assert driver.log("w1") == ""
    driver.start("w1")
    wait_for(lambda: driver.log("w1"), "something in the log")
    assert len(driver.log("w1", tail_bytes=5).encode()) <= 5


# -- restart policy ---------------------------------------------------------------------


def test_on_failure_restarts_up_to_max_then_fails(harness: Harness, driver: ComputeDriver) -> None:
    driver.create(harness.spec("w1", exit_code=3, max_restarts=2))
    driver.start("w1")
    status = settle(driver, "w1")
    assert (status.state, status.restarts, status.exit_code) == (FAILED, 2, 3)
    assert status.pid is None
    assert status.reason


def test_on_failure_does_not_restart_a_clean_exit(harness: Harness, driver: ComputeDriver) -> None:
    driver.create(harness.spec("w1", exit_code=0))
    driver.start("w1")
    status = settle(driver, "w1")
    assert (status.state, status.restarts, status.exit_code) == (STOPPED, 0, 0)


def test_never_does_not_restart(harness: Harness, driver: ComputeDriver) -> None:
    driver.create(harness.spec("w1", exit_code=1, restart=RestartPolicy.NEVER))
    driver.start("w1")
    status = settle(driver, "w1")
    assert (status.state, status.restarts, status.exit_code) == (FAILED, 0, 1)


def test_always_restarts_even_a_clean_exit(harness: Harness, driver: ComputeDriver) -> None:
    driver.create(harness.spec("w1", exit_code=0, restart=RestartPolicy.ALWAYS, max_restarts=2))
    driver.start("w1")
    status = settle(driver, "w1")
    assert (status.state, status.restarts, status.exit_code) == (FAILED, 2, 0)


def test_start_after_failure_resets_restarts(harness: Harness, driver: ComputeDriver) -> None:
    driver.create(harness.spec("w1", exit_code=1, max_restarts=1))
    driver.start("w1")
    assert settle(driver, "w1").restarts == 1
    driver.start("w1")
    assert settle(driver, "w1").restarts == 1


def test_stop_ends_a_crash_loop_for_good(harness: Harness, driver: ComputeDriver) -> None:
    driver.create(harness.spec("w1", exit_code=1, max_restarts=1000))
    driver.start("w1")
    driver.stop("w1")
    stopped = driver.status("w1")
    assert (stopped.state, stopped.pid) == (STOPPED, None)
    time.sleep(0.3)  # several supervisor rounds: nothing may restart it
    assert driver.status("w1") == stopped


# -- suspend ----------------------------------------------------------------------------


def test_suspend_and_resume_as_declared(harness: Harness, driver: ComputeDriver) -> None:
    driver.create(harness.spec("w1"))
    pid = driver.start("w1").pid
    if not driver.capabilities["suspend"]:
        with pytest.raises(NotImplementedError):
            driver.suspend("w1")
        return
    driver.suspend("w1")
    assert driver.status("w1").state is WorkloadState.SUSPENDED
    resumed = driver.resume("w1")
    assert (resumed.state, resumed.pid) == (RUNNING, pid)


# -- agent restarts ---------------------------------------------------------------------


def test_a_new_driver_adopts_running_workloads(harness: Harness, driver: ComputeDriver) -> None:
    if not driver.capabilities["survives_agent"]:
        pytest.skip(f"{harness.name} workloads do not survive the agent")
    driver.create(harness.spec("w1", port=8080))
    pid = driver.start("w1").pid
    driver.close(keep_running=True)

    after = harness.driver()
    assert after.list() == ["w1"]
    status = after.status("w1")
    assert (status.state, status.pid, status.endpoint) == (RUNNING, pid, "127.0.0.1:8080")
    assert after.start("w1").pid == pid  # no second copy
    after.stop("w1")
    assert after.status("w1").state is STOPPED


def test_close_stops_everything_and_is_remembered(harness: Harness, driver: ComputeDriver) -> None:
    for workload_id in ("a", "b"):
        driver.create(harness.spec(workload_id))
        driver.start(workload_id)
    driver.create(harness.spec("c"))
    driver.close()
    driver.close()  # closing twice is harmless
    with pytest.raises(DriverError):
        driver.start("a")

    after = harness.driver()
    assert after.list() == ["a", "b", "c"]
    assert [after.status(w).state for w in ("a", "b", "c")] == [
        STOPPED,
        STOPPED,
        WorkloadState.CREATED,
    ]
