"""Prometheus metrics of the site agent, served by the site-local API at ``/metrics``.

Histograms and counters are updated where the agent already measures or fails
(phase timings, cache lookups, driver calls); everything else is read from the
agent's store when Prometheus scrapes, so the agent's loops do no extra work for it.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cloudlet.agent import actual, artifacts, outbox
from cloudlet.agent.store import Store
from cloudlet.schemas import ActualState
from cloudlet.schemas.artifacts import ArtifactKind

#: VM start phases, timed by the reconciler (see ``ActualRow.timings``).
PHASES = ("fetch", "synthesize", "boot_or_resume", "first_answer")
#: From a cached resume (well under a second) to a base image fetched over a slow WAN.
PHASE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)

#: The last successful pull and report, as the sync loops record them.
SyncTimes = Callable[[], "dict[str, datetime | None]"]


# A `_created` series per counter and histogram would double the answer's size for a
# timestamp nobody graphs (process-wide: once, not per registry).
disable_created_metrics()


class AgentMetrics:
    """The agent's registry: instruments its loops update, plus the site collector."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.phase_seconds = Histogram(
            "cloudlet_agent_vm_start_phase_seconds",
            "Time a VM instance's start spent in each phase.",
            ["phase"],
            buckets=PHASE_BUCKETS,
            registry=self.registry,
        )
        self.cache_lookups = Counter(
            "cloudlet_agent_artifact_cache_lookups_total",
            "Artifact cache lookups by artifact kind and result (hit: complete in the cache).",
            ["kind", "result"],
            registry=self.registry,
        )
        self.driver_errors = Counter(
            "cloudlet_agent_driver_errors_total",
            "Compute driver calls that failed, by operation.",
            ["operation"],
            registry=self.registry,
        )

    def phase(self, name: str, seconds: float) -> None:
        """Record one phase of a VM start (one of :data:`PHASES`)."""
        self.phase_seconds.labels(name).observe(seconds)

    def cache_lookup(self, kind: ArtifactKind, hit: bool) -> None:
        self.cache_lookups.labels(kind.value, "hit" if hit else "miss").inc()

    def driver_error(self, operation: str) -> None:
        self.driver_errors.labels(operation).inc()

    def watch(self, store: Store, sync_times: SyncTimes) -> None:
        """Read the site's state from ``store`` (and the sync loops' times) at each scrape."""
        self.registry.register(SiteCollector(store, sync_times))


class SiteCollector(Collector):
    """Reads instances, the cache and the outbox from the agent's store at each scrape."""

    def __init__(self, store: Store, sync_times: SyncTimes) -> None:
        self.store = store
        self.sync_times = sync_times

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        by_state = Tally(row.state.value for row in actual.list_all(self.store))
        held: dict[str, int] = {kind.value: 0 for kind in ArtifactKind}
        for art in artifacts.all_artifacts(self.store):
            held[art.kind.value] += art.held
        depth = outbox.depth(self.store)

        instances = GaugeMetricFamily(
            "cloudlet_agent_instances",
            "Instances at this site by actual state (every state, zeros included).",
            labels=["state"],
        )
        for state in ActualState:
            instances.add_metric([state.value], by_state.get(state.value, 0))
        yield instances

        cache = GaugeMetricFamily(
            "cloudlet_agent_artifact_cache_bytes",
            "Bytes the artifact cache holds (partial downloads included), by kind.",
            labels=["kind"],
        )
        for kind, size in held.items():
            cache.add_metric([kind], size)
        yield cache

        yield GaugeMetricFamily(
            "cloudlet_agent_outbox_depth",
            "Events waiting for the controller's acknowledgement.",
            value=depth,
        )

        since = GaugeMetricFamily(
            "cloudlet_agent_seconds_since_last_sync",
            "Seconds since the last successful pull of desired state or report of actual "
            "state; no series before the first success.",
            labels=["loop"],
        )
        now = datetime.now(UTC)
        for loop, when in self.sync_times().items():
            if when is not None:
                since.add_metric([loop], max(0.0, (now - when).total_seconds()))
        yield since

        yield GaugeMetricFamily(
            "cloudlet_agent_scrape_duration_seconds",
            "Time the last scrape spent reading the agent's store.",
            value=time.perf_counter() - started,
        )
