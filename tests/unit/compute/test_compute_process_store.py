"""ProcessDriver without running anything: validation, records on disk, reloading them."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudlet.compute import ProcessDriver, RestartPolicy, WorkloadSpec, WorkloadState
from cloudlet.compute._records import Runtime, spec_from_json, spec_to_json, valid_id, write_json
from cloudlet.errors import DriverError


def entries(state_dir: Path) -> list[str]:
    """What the driver keeps in ``state_dir`` apart from its lock file."""
    return sorted(p.name for p in state_dir.iterdir() if p.name != ".lock")


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def driver(state_dir: Path) -> Iterator[ProcessDriver]:
    d = ProcessDriver(state_dir)
    yield d
    d.close()


def test_spec_survives_json() -> None:
    spec = WorkloadSpec(
        "w1",
        command=("app", "--flag"),
        env={"A": "1"},
        port=8080,
        guest_port=80,
        vcpus=0.5,
        memory_mib=64,
        disk_image=Path("/images/disk.qcow2"),
        memory_image=None,
        restart=RestartPolicy.ALWAYS,
        max_restarts=3,
    )
    assert spec_from_json(json.loads(json.dumps(spec_to_json(spec)))) == spec


def test_runtime_survives_json() -> None:
    rt = Runtime(WorkloadState.FAILED, pid=None, restarts=2, exit_code=-9, reason="killed")
    assert Runtime.from_json(json.loads(json.dumps(rt.to_json()))) == rt


@pytest.mark.parametrize("workload_id", ["w1", "app.v2", "a_b-c", "A" * 128])
def test_valid_ids(workload_id: str) -> None:
    assert valid_id(workload_id)


@pytest.mark.parametrize("workload_id", ["", ".", "..", "../x", "a/b", ".hidden", "-x", "A" * 129])
def test_invalid_ids(workload_id: str) -> None:
    assert not valid_id(workload_id)


def test_write_json_replaces_whole_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_json(path, {"n": 1})
    write_json(path, {"n": 2})
    assert json.loads(path.read_text()) == {"n": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (WorkloadSpec("w1"), "needs a command"),
        (WorkloadSpec("w1", command=("sleep", "a\0b")), "needs a command"),
        (WorkloadSpec("w1", command=("sleep",), env={"A=B": "1"}), "bad environment"),
        (WorkloadSpec("w1", command=("sleep",), env={"A": "x\0"}), "NUL"),
        (WorkloadSpec("w1", command=("sleep",), port=70000), "bad port"),
        (WorkloadSpec("w1", command=("/no/such/program",)), "not found"),
        (WorkloadSpec("w1", command=("sleep",), env={"PATH": "/nowhere"}), "not found"),
        (WorkloadSpec("a/b", command=("sleep",)), "invalid workload id"),
    ],
)
def test_bad_specs_fail_at_create_and_leave_nothing(
    driver: ProcessDriver, state_dir: Path, spec: WorkloadSpec, message: str
) -> None:
    with pytest.raises(DriverError, match=message):
        driver.create(spec)
    assert driver.list() == []
    assert entries(state_dir) == []


def test_records_are_reloaded_by_a_new_driver(driver: ProcessDriver, state_dir: Path) -> None:
    spec = WorkloadSpec("w1", command=("sleep", "1"), env={"A": "1"}, port=8080)
    driver.create(spec)
    driver.stop("w1")
    driver.close()
    assert json.loads((state_dir / "w1" / "spec.json").read_text())["env"] == {"A": "1"}
    again = ProcessDriver(state_dir)
    try:
        assert again.list() == ["w1"]
        assert again.status("w1").state is WorkloadState.STOPPED
        again.create(spec)  # the same spec is still idempotent after a reload
    finally:
        again.close()


def test_unreadable_and_half_made_directories(
    state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (state_dir / "broken").mkdir(parents=True)
    (state_dir / "broken" / "spec.json").write_text("{not json")
    (state_dir / ".create-w2-abc").mkdir()
    (state_dir / ".delete-w3-abc").mkdir()
    with caplog.at_level(logging.WARNING):
        driver = ProcessDriver(state_dir)
    try:
        assert driver.list() == []
        assert "broken" in caplog.text
        assert entries(state_dir) == ["broken"]
        with pytest.raises(DriverError, match="cannot create"):
            driver.create(WorkloadSpec("broken", command=("sleep", "1")))
        driver.delete("broken")  # removes the unreadable leftover
        assert entries(state_dir) == []
    finally:
        driver.close()


def test_log_of_a_created_workload_is_empty(driver: ProcessDriver) -> None:
    driver.create(WorkloadSpec("w1", command=("sleep", "1")))
    assert driver.log("w1") == ""


def test_suspend_is_not_offered(driver: ProcessDriver) -> None:
    assert driver.capabilities == {"suspend": False, "survives_agent": True, "listens": True}
    driver.create(WorkloadSpec("w1", command=("sleep", "1")))
    with pytest.raises(NotImplementedError):
        driver.suspend("w1")


def test_one_driver_at_a_time_per_state_dir(driver: ProcessDriver, state_dir: Path) -> None:
    with pytest.raises(DriverError, match="in use"):
        ProcessDriver(state_dir)
    driver.close()
    ProcessDriver(state_dir).close()
