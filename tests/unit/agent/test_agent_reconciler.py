"""The reconciler against the in-memory FakeDriver: lifecycles, ports, crashes, adoption."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent_fakes import COMMAND, doc, instance

from cloudlet.agent import actual, desired, outbox
from cloudlet.agent.reconciler import VM_UNSUPPORTED, Reconciler, free_port
from cloudlet.agent.store import ALIVE_AT, Store
from cloudlet.compute import FakeDriver, FakeMachine, WorkloadState
from cloudlet.schemas import ActualState, EventKind


def reconcile(store: Store, driver: FakeDriver, passes: int = 1) -> Reconciler:
    rec = Reconciler(store, driver)

    async def main() -> None:
        for _ in range(passes):
            await rec.reconcile_once()

    asyncio.run(main())
    return rec


def state_events(store: Store, instance_id: str = "i1") -> list[tuple[str | None, str]]:
    return [
        (e.data["previous"], e.data["state"])  # type: ignore[misc]
        for e in outbox.pending(store, 1000)
        if e.kind is EventKind.INSTANCE_STATE and e.instance == instance_id
    ]


def usage_seconds(store: Store, instance_id: str = "i1") -> list[float]:
    return [
        e.data["seconds"]  # type: ignore[misc]
        for e in outbox.pending(store, 1000)
        if e.kind is EventKind.USAGE and e.instance == instance_id
    ]


def row(store: Store, instance_id: str = "i1") -> actual.ActualRow:
    r = actual.get(store, instance_id)
    assert r is not None
    return r


def test_running_instance_is_created_started_and_reported(store: Store) -> None:
    driver = FakeDriver()
    desired.apply_doc(store, doc(1, [instance("i1")], full=True))
    reconcile(store, driver)
    r = row(store)
    assert r.state is ActualState.RUNNING
    port = r.ports["main"]
    assert r.endpoint == f"127.0.0.1:{port}"
    assert state_events(store) == [
        (None, "pending"),
        ("pending", "starting"),
        ("starting", "running"),
    ]
    assert {"pending", "starting"} <= set(r.timings)
    w = driver.machine.workloads["i1-main"]
    assert w.spec.port == port
    assert w.spec.env["PORT"] == str(port)
    assert w.spec.command == (*COMMAND[:-1], str(port))
    # A second pass changes nothing and keeps the port.
    reconcile(store, driver)
    assert len(state_events(store)) == 3
    assert row(store).ports == {"main": port}


def test_component_without_port(store: Store) -> None:
    comps = [{"command": COMMAND, "port": False}]
    desired.apply_doc(store, doc(1, [instance("i1", components=comps)], full=True))
    driver = FakeDriver()
    reconcile(store, driver)
    assert row(store).state is ActualState.RUNNING
    assert row(store).endpoint is None
    assert driver.machine.workloads["i1-main"].spec.port is None


def test_multi_component_app_runs_one_workload_each(store: Store) -> None:
    comps = [{"name": "api", "command": COMMAND}, {"name": "db", "command": COMMAND, "port": False}]
    desired.apply_doc(store, doc(1, [instance("i1", components=comps)], full=True))
    driver = FakeDriver()
    reconcile(store, driver)
    assert driver.list() == ["i1-api", "i1-db"]
    r = row(store)
    assert r.state is ActualState.RUNNING
    assert set(r.ports) == {"api"}
    assert r.endpoint == f"127.0.0.1:{r.ports['api']}"


def test_stop_then_delete_then_forget(store: Store) -> None:
    driver = FakeDriver()
    desired.apply_doc(store, doc(1, [instance("i1")], full=True))
    reconcile(store, driver)
    desired.apply_doc(store, doc(2, [instance("i1", state="stopped", revision=2)], since=1))
    reconcile(store, driver)
    assert row(store).state is ActualState.STOPPED
    assert driver.status("i1-main").state is WorkloadState.STOPPED
    assert row(store).usage_since is None  # stopping closed the running interval
    desired.apply_doc(store, doc(3, [instance("i1", state="deleted", revision=3)], since=2))
    reconcile(store, driver)
    assert row(store).state is ActualState.DELETED
    assert driver.list() == []
    assert state_events(store)[-3:] == [
        ("running", "stopping"),
        ("stopping", "stopped"),
        ("stopped", "deleted"),
    ]
    # Kept until a report carrying the deletion is acknowledged, then forgotten.
    reconcile(store, driver)
    assert row(store).state is ActualState.DELETED
    actual.forget(store, ["i1"])
    desired.forget(store, ["i1"])
    reconcile(store, driver)
    assert actual.get(store, "i1") is None


def test_stopped_instance_never_started_is_tracked_as_stopped(store: Store) -> None:
    desired.apply_doc(store, doc(1, [instance("i1", state="stopped")], full=True))
    driver = FakeDriver()
    reconcile(store, driver)
    assert row(store).state is ActualState.STOPPED
    assert driver.list() == []


def test_vm_component_fails_without_a_vm_driver(store: Store) -> None:
    comps = [{"kind": "vm", "image": "sha256:abc"}]
    desired.apply_doc(store, doc(1, [instance("i1", components=comps)], full=True))
    reconcile(store, FakeDriver(), passes=2)
    assert row(store).state is ActualState.FAILED
    assert row(store).reason == VM_UNSUPPORTED
    assert state_events(store) == [(None, "pending"), ("pending", "failed")]


def test_crash_loop_fails_and_stays_failed_until_the_entry_changes(store: Store) -> None:
    exits = {"code": 1}
    driver = FakeDriver(program=lambda spec: exits["code"])
    desired.apply_doc(store, doc(1, [instance("i1")], full=True))
    reconcile(store, driver, passes=2)
    r = row(store)
    assert r.state is ActualState.FAILED
    assert "gave up" in (r.reason or "")
    assert state_events(store)[-1] == ("starting", "failed")
    # A new revision of the entry earns a retry; this time the program runs.
    exits["code"] = None  # type: ignore[assignment]
    desired.apply_doc(store, doc(2, [instance("i1", revision=2)], since=1))
    reconcile(store, driver)
    assert row(store).state is ActualState.RUNNING


def test_workload_that_vanished_is_restarted(store: Store) -> None:
    driver = FakeDriver()
    desired.apply_doc(store, doc(1, [instance("i1")], full=True))
    reconcile(store, driver)
    port = row(store).ports["main"]
    driver.delete("i1-main")  # killed behind the agent's back
    reconcile(store, driver)
    r = row(store)
    assert r.state is ActualState.RUNNING
    assert r.ports["main"] == port  # assigned once, reused
    assert state_events(store)[-2:] == [("running", "starting"), ("starting", "running")]
    assert driver.status("i1-main").state is WorkloadState.RUNNING


def test_agent_restart_adopts_running_workloads(tmp_path: Path) -> None:
    machine = FakeMachine()
    store = Store.open(tmp_path / "a.db")
    desired.apply_doc(store, doc(1, [instance("i1")], full=True))
    reconcile(store, FakeDriver(machine=machine))
    pid = machine.workloads["i1-main"].pid
    events = len(state_events(store))
    store.close()
    # The "new agent": a new store handle and driver on the same host.
    store = Store.open(tmp_path / "a.db")
    reconcile(store, FakeDriver(machine=machine))
    assert row(store).state is ActualState.RUNNING
    assert machine.workloads["i1-main"].pid == pid
    assert len(state_events(store)) == events
    store.close()


def test_agent_restart_restarts_dead_workloads_and_ends_usage_when_last_alive(
    tmp_path: Path,
) -> None:
    store = Store.open(tmp_path / "a.db")
    desired.apply_doc(store, doc(1, [instance("i1")], full=True))
    reconcile(store, FakeDriver())
    r = row(store)
    assert r.usage_since is not None
    # Pretend the old agent ran 100 s, died, and the host rebooted (workloads gone).
    with store.transaction() as conn:
        conn.execute("UPDATE actual SET usage_since = usage_since - 100")
    store.set_meta(ALIVE_AT, r.usage_since)
    store.close()
    store = Store.open(tmp_path / "a.db")
    driver = FakeDriver()  # a fresh machine: nothing survived
    reconcile(store, driver)
    assert row(store).state is ActualState.RUNNING
    assert driver.status("i1-main").state is WorkloadState.RUNNING
    assert usage_seconds(store) == [100.0]  # up to when the old agent was last alive
    store.close()


def test_shutdown_stops_instances_unless_kept(store: Store) -> None:
    driver = FakeDriver()
    desired.apply_doc(store, doc(1, [instance("i1")], full=True))
    rec = reconcile(store, driver)
    asyncio.run(rec.shutdown(keep_workloads=True))
    assert row(store).state is ActualState.RUNNING
    asyncio.run(rec.shutdown(keep_workloads=False))
    r = row(store)
    assert r.state is ActualState.STOPPED
    assert r.reason == "agent stopped"
    assert driver.status("i1-main").state is WorkloadState.STOPPED
    # The next agent start brings it back from local state alone.
    reconcile(store, driver)
    assert row(store).state is ActualState.RUNNING


def test_instance_without_desired_entry_is_removed(store: Store) -> None:
    driver = FakeDriver()
    desired.apply_doc(store, doc(1, [instance("i1")], full=True))
    reconcile(store, driver)
    with store.transaction() as conn:
        conn.execute("DELETE FROM desired")
    reconcile(store, driver)
    assert row(store).state is ActualState.DELETED
    assert driver.list() == []


def test_changed_definition_replaces_the_workloads(store: Store) -> None:
    driver = FakeDriver()
    desired.apply_doc(store, doc(1, [instance("i1")], full=True))
    reconcile(store, driver)
    pid = driver.status("i1-main").pid
    # A new revision with the same definition (say, a label change): left alone.
    desired.apply_doc(store, doc(2, [instance("i1", revision=2)], since=1))
    reconcile(store, driver)
    assert driver.status("i1-main").pid == pid
    new_command = [*COMMAND[:-1], "--bind", "127.0.0.1", "$PORT"]
    comps = [{"command": new_command}]
    desired.apply_doc(store, doc(3, [instance("i1", revision=3, components=comps)], since=2))
    reconcile(store, driver)
    r = row(store)
    assert r.state is ActualState.RUNNING
    assert driver.machine.workloads["i1-main"].spec.command[-3:] == (
        "--bind",
        "127.0.0.1",
        str(r.ports["main"]),
    )
    assert state_events(store)[-2:] == [("running", "starting"), ("starting", "running")]
    starting = [e for e in outbox.pending(store) if e.data.get("state") == "starting"][-1]
    assert starting.data["reason"] == "definition changed; restarting"


def test_free_port_avoids_ports_given_to_other_instances() -> None:
    first = free_port("127.0.0.1")
    assert free_port("127.0.0.1", {first}) != first


def test_instances_get_distinct_ports(store: Store) -> None:
    desired.apply_doc(store, doc(1, [instance(f"i{n}") for n in range(5)], full=True))
    reconcile(store, FakeDriver())
    ports = [row(store, f"i{n}").ports["main"] for n in range(5)]
    assert len(set(ports)) == 5
