"""The agent's metrics: what the site collector reads from the store, driver errors by
operation, cache lookups, and the local API's /metrics answer."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from agent_fakes import doc, instance
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cloudlet.agent import actual, desired, outbox
from cloudlet.agent.artifacts import ArtifactCache
from cloudlet.agent.local_api import create_app
from cloudlet.agent.metrics import AgentMetrics
from cloudlet.agent.reconciler import Reconciler
from cloudlet.agent.store import Store
from cloudlet.compute import FakeDriver, WorkloadStatus
from cloudlet.errors import DriverError, WorkloadNotFoundError
from cloudlet.schemas import ActualState, EventKind, InstanceOrigin
from cloudlet.schemas.artifacts import ArtifactKind


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a text exposition, by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def serve(app: object, *requests: tuple[str, str]) -> list[httpx.Response]:
    """Answers of the ASGI ``app`` to (method, path) requests, in order."""

    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
            return [
                await client.request(m, p, json={"app": "web"} if m == "POST" else None)
                for m, p in requests
            ]

    return asyncio.run(main())


def track(store: Store, instance_id: str, state: ActualState) -> None:
    actual.create(
        store,
        instance_id=instance_id,
        name=instance_id,
        app="web",
        project="admin",
        origin=InstanceOrigin.SITE,
        state=state,
    )


def test_the_collector_reads_instances_cache_and_outbox_from_the_store(
    store: Store, tmp_path: Path
) -> None:
    track(store, "a", ActualState.RUNNING)
    track(store, "b", ActualState.RUNNING)
    track(store, "c", ActualState.FAILED)
    cache = ArtifactCache(store, tmp_path / "cache", budget_bytes=1 << 30)
    cache.mark_complete(ArtifactKind.IMAGE, "i" * 64, 3000)
    cache.begin(ArtifactKind.OVERLAY, "o" * 64, 900)
    cache.progress(ArtifactKind.OVERLAY, "o" * 64, 400)
    outbox.record(store, EventKind.ALARM, data={"message": "disk"})
    pulled = datetime.now(UTC) - timedelta(seconds=30)
    metrics = AgentMetrics()
    metrics.watch(store, lambda: {"pull": pulled, "report": None})

    got = samples(generate_latest(metrics.registry).decode())

    assert got[("cloudlet_agent_instances", (("state", "running"),))] == 2
    assert got[("cloudlet_agent_instances", (("state", "failed"),))] == 1
    assert got[("cloudlet_agent_instances", (("state", "stopped"),))] == 0
    assert got[("cloudlet_agent_artifact_cache_bytes", (("kind", "image"),))] == 3000
    assert got[("cloudlet_agent_artifact_cache_bytes", (("kind", "overlay"),))] == 400
    # Three instance.state events (one per tracked instance) and the alarm.
    assert got[("cloudlet_agent_outbox_depth", ())] == outbox.depth(store) == 4
    since = got[("cloudlet_agent_seconds_since_last_sync", (("loop", "pull"),))]
    assert 30 <= since < 90
    assert ("cloudlet_agent_seconds_since_last_sync", (("loop", "report"),)) not in got


def test_no_created_series_and_no_global_registry(store: Store) -> None:
    one, two = AgentMetrics(), AgentMetrics()
    one.watch(store, dict)
    one.driver_error("start")
    text = generate_latest(one.registry).decode()
    assert "_created" not in text
    assert (
        two.registry.get_sample_value("cloudlet_agent_driver_errors_total", {"operation": "start"})
        is None
    )


class StartFails(FakeDriver):
    """The fake driver with a backend that refuses to start anything."""

    def start(self, workload_id: str) -> WorkloadStatus:
        raise DriverError(f"cannot start {workload_id}: no room")


def test_failed_driver_calls_are_counted_by_operation(store: Store) -> None:
    metrics = AgentMetrics()
    rec = Reconciler(store, StartFails(), metrics=metrics)
    desired.apply_doc(store, doc(1, [instance("i1")], full=True))
    asyncio.run(rec.reconcile_once())

    row = actual.get(store, "i1")
    assert row is not None and row.state is ActualState.FAILED
    value = metrics.registry.get_sample_value
    assert value("cloudlet_agent_driver_errors_total", {"operation": "start"}) == 1
    assert value("cloudlet_agent_driver_errors_total", {"operation": "create"}) is None


def test_a_missing_workload_is_not_a_driver_error(store: Store) -> None:
    metrics = AgentMetrics()
    rec = Reconciler(store, FakeDriver(), metrics=metrics)
    with pytest.raises(WorkloadNotFoundError):
        asyncio.run(rec._call(rec.drivers.default.stop, "nobody-main"))
    assert (
        metrics.registry.get_sample_value(
            "cloudlet_agent_driver_errors_total", {"operation": "stop"}
        )
        is None
    )


def test_cache_lookups_count_hits_and_misses(store: Store, tmp_path: Path) -> None:
    metrics = AgentMetrics()
    cache = ArtifactCache(
        store, tmp_path / "cache", budget_bytes=1 << 30, on_lookup=metrics.cache_lookup
    )
    aid = "a" * 64
    assert cache.lookup(ArtifactKind.IMAGE, aid) is None
    cache.path(ArtifactKind.IMAGE, aid).write_bytes(b"x" * 10)
    cache.mark_complete(ArtifactKind.IMAGE, aid, 10)
    assert cache.lookup(ArtifactKind.IMAGE, aid) == cache.path(ArtifactKind.IMAGE, aid)
    assert cache.lookup(ArtifactKind.IMAGE, aid) is not None
    value = metrics.registry.get_sample_value
    name = "cloudlet_agent_artifact_cache_lookups_total"
    assert value(name, {"kind": "image", "result": "miss"}) == 1
    assert value(name, {"kind": "image", "result": "hit"}) == 2
    assert value(name, {"kind": "overlay", "result": "hit"}) is None


def test_the_local_api_serves_metrics_without_a_token_when_reads_are_open(store: Store) -> None:
    track(store, "a", ActualState.RUNNING)
    metrics = AgentMetrics()
    metrics.watch(store, dict)
    app = create_app(store, dict, token="a-site-local-token-0123", metrics=metrics.registry)
    answer, refused = serve(app, ("GET", "/metrics"), ("POST", "/v1/local/instances"))
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    assert samples(answer.text)[("cloudlet_agent_instances", (("state", "running"),))] == 1
    assert refused.status_code == 401  # writes still need the token


def test_without_a_registry_there_is_no_metrics_endpoint(store: Store) -> None:
    [answer] = serve(create_app(store, dict), ("GET", "/metrics"))
    assert answer.status_code == 404
