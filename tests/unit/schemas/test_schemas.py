"""Wire schemas: what they accept and what they refuse."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cloudlet.schemas import AgentReport, AppCreate, InstanceCreate, Resources, SiteCreate


def test_site_names_are_dns_labels() -> None:
    assert SiteCreate(name="lyon-2").name == "lyon-2"
    for bad in ("Lyon", "-lyon", "lyon_2", "", "x" * 64):
        with pytest.raises(ValidationError):
            SiteCreate(name=bad)


def test_coordinates_are_bounded() -> None:
    with pytest.raises(ValidationError):
        SiteCreate(name="a", latitude=91)
    with pytest.raises(ValidationError):
        SiteCreate(name="a", longitude=-181)


def test_checkpoints_are_for_stateful_apps_that_fail_over() -> None:
    stateful = [{"command": ["run"], "stateful": True}]
    move = {"relocatable": True, "failover_after_s": 30}
    app = AppCreate(name="web", components=stateful, checkpoint_interval_s=60, **move)
    assert app.checkpoint_interval_s == 60
    vm = AppCreate(
        name="vm", components=[{"kind": "vm", "image": "b"}], checkpoint_interval_s=5, **move
    )
    assert vm.checkpoint_interval_s == 5
    with pytest.raises(ValidationError, match="needs relocatable: true and failover_after_s"):
        AppCreate(name="web", components=stateful, checkpoint_interval_s=60)
    with pytest.raises(ValidationError, match="needs relocatable: true and failover_after_s"):
        AppCreate(name="web", components=stateful, checkpoint_interval_s=60, relocatable=True)
    with pytest.raises(ValidationError, match="nothing else holds state"):
        AppCreate(name="web", components=[{"command": ["run"]}], checkpoint_interval_s=60, **move)
    with pytest.raises(ValidationError, match="one VM component"):
        AppCreate(
            name="vm",
            components=[{"kind": "vm", "image": "b"}, {"name": "side", "command": ["x"]}],
            checkpoint_interval_s=60,
            **move,
        )
    with pytest.raises(ValidationError):
        AppCreate(name="web", components=stateful, checkpoint_interval_s=0.5, **move)


def test_resources_must_be_positive() -> None:
    for bad in ({"vcpus": 0}, {"memory_mib": -1}, {"disk_gib": -0.5}):
        with pytest.raises(ValidationError):
            Resources(**bad)


def test_app_components() -> None:
    app = AppCreate(name="web", components=[{"command": ["run"]}])
    assert app.components[0].name == "main" and app.resources.memory_mib == 256
    with pytest.raises(ValidationError, match="needs a command"):
        AppCreate(name="web", components=[{"kind": "process"}])
    with pytest.raises(ValidationError, match="needs an image"):
        AppCreate(name="web", components=[{"kind": "vm"}])
    with pytest.raises(ValidationError, match="unique"):
        AppCreate(name="web", components=[{"command": ["a"]}, {"command": ["b"]}])
    with pytest.raises(ValidationError):
        AppCreate(name="web", components=[])


def test_inputs_refuse_unknown_fields() -> None:
    with pytest.raises(ValidationError, match="extra"):
        InstanceCreate(app="web", sight="lyon")


def test_reports_cap_event_batches() -> None:
    events = [{"seq": n + 1, "kind": "usage", "at": "2026-01-01T00:00:00Z"} for n in range(1001)]
    with pytest.raises(ValidationError):
        AgentReport(applied_revision=0, events=events)
    with pytest.raises(ValidationError):
        AgentReport(applied_revision=0, events=[{**events[0], "seq": 0}])
