"""The compute package's public names and its driver registry."""

from __future__ import annotations

from pathlib import Path

import pytest

import cloudlet.compute
from cloudlet.compute import DRIVERS, FakeDriver, ProcessDriver, get_driver
from cloudlet.errors import DriverUnavailableError


def test_public_names_are_pinned() -> None:
    assert set(cloudlet.compute.__all__) == {
        "DRIVERS",
        "ComputeDriver",
        "FakeDriver",
        "FakeMachine",
        "ProcessDriver",
        "RestartPolicy",
        "WorkloadSpec",
        "WorkloadState",
        "WorkloadStatus",
        "get_driver",
    }
    for name in cloudlet.compute.__all__:
        assert getattr(cloudlet.compute, name) is not None


def test_each_driver_is_registered_under_its_own_name() -> None:
    assert {name: cls.name for name, cls in DRIVERS.items()} == {
        "fake": "fake",
        "process": "process",
    }


def test_get_driver_passes_options() -> None:
    driver = get_driver("fake", host="10.0.0.7")
    assert isinstance(driver, FakeDriver)
    assert driver.host == "10.0.0.7"


def test_get_driver_builds_a_process_driver(tmp_path: Path) -> None:
    driver = get_driver("process", state_dir=tmp_path / "state")
    try:
        assert isinstance(driver, ProcessDriver)
        assert (tmp_path / "state").is_dir()
    finally:
        driver.close()


def test_unknown_driver_names_the_known_ones() -> None:
    with pytest.raises(DriverUnavailableError, match=r"'xen'.*fake, process, qemu"):
        get_driver("xen")
