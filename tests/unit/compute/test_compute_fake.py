"""FakeDriver beyond the shared contract: programs, simulated exits, suspend, shared machines."""

from __future__ import annotations

import pytest

from cloudlet.compute import FakeDriver, FakeMachine, RestartPolicy, WorkloadSpec, WorkloadState
from cloudlet.errors import DriverError, WorkloadNotFoundError


def spec(workload_id: str = "w1", **kwargs: object) -> WorkloadSpec:
    return WorkloadSpec(workload_id, command=("app",), **kwargs)  # type: ignore[arg-type]


def test_pids_and_endpoints_are_deterministic() -> None:
    runs = []
    for _ in range(2):
        driver = FakeDriver()
        driver.create(spec("a", port=8080))
        driver.create(spec("b", port=8081))
        runs.append([driver.start("a"), driver.start("b")])
    assert runs[0] == runs[1]
    assert [(s.pid, s.endpoint) for s in runs[0]] == [
        (1001, "127.0.0.1:8080"),
        (1002, "127.0.0.1:8081"),
    ]


def test_ipv6_host_is_bracketed() -> None:
    driver = FakeDriver(host="::1")
    driver.create(spec(port=8080))
    assert driver.start("w1").endpoint == "[::1]:8080"


def test_simulated_exit_applies_the_restart_policy() -> None:
    driver = FakeDriver()
    driver.create(spec(max_restarts=1))
    first = driver.start("w1")
    restarted = driver.simulate_exit("w1", 2)
    assert (restarted.state, restarted.restarts, restarted.exit_code) == (
        WorkloadState.RUNNING,
        1,
        None,
    )
    assert restarted.pid != first.pid
    assert restarted.reason == "restart 1 of 1 after exit code 2"
    failed = driver.simulate_exit("w1", 2)
    assert (failed.state, failed.restarts, failed.exit_code) == (WorkloadState.FAILED, 1, 2)
    with pytest.raises(DriverError, match="not running"):
        driver.simulate_exit("w1", 2)


def test_program_decides_each_start() -> None:
    codes = iter([1, 1, None])
    driver = FakeDriver(program=lambda _spec: next(codes))
    driver.create(spec(restart=RestartPolicy.ON_FAILURE, max_restarts=5))
    status = driver.start("w1")
    assert (status.state, status.restarts) == (WorkloadState.RUNNING, 2)
    assert driver.log("w1").splitlines() == [
        "started pid 1001",
        "exited with code 1",
        "started pid 1002",
        "exited with code 1",
        "started pid 1003",
    ]


def test_a_long_crash_loop_does_not_recurse() -> None:
    driver = FakeDriver(program=lambda _spec: 1)
    driver.create(spec(max_restarts=5000))
    assert driver.start("w1").restarts == 5000


def test_suspend_and_resume_rules() -> None:
    driver = FakeDriver()
    driver.create(spec())
    with pytest.raises(DriverError, match="not running"):
        driver.suspend("w1")
    driver.start("w1")
    driver.suspend("w1")
    driver.suspend("w1")  # idempotent
    with pytest.raises(DriverError, match="resume"):
        driver.start("w1")
    assert driver.resume("w1").state is WorkloadState.RUNNING
    assert driver.resume("w1").state is WorkloadState.RUNNING  # idempotent
    driver.suspend("w1")
    driver.stop("w1")
    assert driver.status("w1").state is WorkloadState.STOPPED
    with pytest.raises(DriverError, match="not suspended"):
        driver.resume("w1")
    with pytest.raises(WorkloadNotFoundError):
        driver.suspend("nope")
    with pytest.raises(WorkloadNotFoundError):
        driver.resume("nope")


def test_drivers_on_one_machine_share_workloads() -> None:
    machine = FakeMachine()
    first = FakeDriver(machine=machine)
    first.create(spec())
    pid = first.start("w1").pid
    first.close(keep_running=True)
    second = FakeDriver(machine=machine)
    assert second.status("w1").pid == pid
    second.close()
    assert FakeDriver(machine=machine).status("w1").state is WorkloadState.STOPPED


def test_a_closed_driver_refuses_changes() -> None:
    driver = FakeDriver()
    driver.close()
    with pytest.raises(DriverError, match="closed"):
        driver.create(spec())


def test_log_tail_is_bounded() -> None:
    driver = FakeDriver()
    driver.create(spec())
    driver.start("w1")
    assert driver.log("w1", tail_bytes=4) == "001\n"
    assert driver.log("w1", tail_bytes=0) == ""
