"""Prometheus metrics of the controller, served at ``/metrics``.

Counters and histograms are updated as requests pass (a few microseconds each);
everything about the fleet is read from the database when Prometheus scrapes, in a
handful of aggregate queries, so the agents' hot paths do no extra work for it and
the answer stays small however many sites there are: sites are counted by
availability and sync status, revision lag is a histogram plus the few most
lagging sites, never one series per site.

With ``--workers N`` each worker process answers for itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Integer, case, func, select

from cloudlet.controller.db.models import Instance, Site
from cloudlet.controller.services._util import utcnow
from cloudlet.controller.state import RevisionWatcher
from cloudlet.schemas import DesiredState

#: Revision lag buckets: in sync, a change or two behind, far behind.
LAG_BUCKETS = (0, 1, 2, 5, 10, 100, 1000)
#: How many of the most lagging sites get a series of their own.
TOP_LAGGING = 10


class ControllerMetrics:
    """The controller's registry: request-time instruments plus the fleet collector."""

    def __init__(self, engine: Any, offline_grace_s: float, watcher: RevisionWatcher) -> None:
        # A `_created` series per counter and histogram would double the answer's size
        # for a timestamp nobody graphs.
        disable_created_metrics()
        self.registry = CollectorRegistry()
        self.request_seconds = Histogram(
            "cloudlet_http_request_duration_seconds",
            "Time to answer an API request, by route template and method.",
            ["route", "method"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30),
            registry=self.registry,
        )
        self.events_ingested = Counter(
            "cloudlet_events_ingested_total",
            "Site events stored, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.events_refused = Counter(
            "cloudlet_events_refused_total",
            "Site events refused (about another site's instance, or a sequence jump).",
            registry=self.registry,
        )
        self.desired_documents = Counter(
            "cloudlet_desired_documents_total",
            "Desired-state documents built for agents: full snapshots and deltas.",
            ["kind"],
            registry=self.registry,
        )
        self.artifact_bytes = Counter(
            "cloudlet_artifact_bytes_served_total",
            "Bytes of images and overlays sent to sites and clients.",
            registry=self.registry,
        )
        self.relay_bytes = Counter(
            "cloudlet_relay_bytes_total",
            "Bytes the handoff relay carried between two sites (both ways).",
            registry=self.registry,
        )
        self.relay_connections = Counter(
            "cloudlet_relay_connections_total",
            "Connections to the handoff relay, by outcome (paired, refused, no-peer, busy, "
            "bad-greeting, gone, superseded).",
            ["outcome"],
            registry=self.registry,
        )
        self.long_polls = Gauge(
            "cloudlet_long_polls_open",
            "Desired-state long polls waiting for a change.",
            registry=self.registry,
        )
        self.long_polls.set_function(lambda: watcher.waiting)
        self.registry.register(FleetCollector(engine, offline_grace_s))


class FleetCollector(Collector):
    """Reads the fleet's state from the database at each scrape."""

    def __init__(self, engine: Any, offline_grace_s: float) -> None:
        self.engine = engine
        self.grace = timedelta(seconds=offline_grace_s)

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        cutoff = utcnow() - self.grace
        lag = Site.revision - Site.applied_revision
        availability = case(
            (Site.last_seen.is_(None), "unknown"),
            (Site.last_seen >= cutoff, "online"),
            else_="offline",
        )
        sync = case(
            (Site.applied_revision >= Site.revision, "in-sync"),
            (Site.last_seen >= cutoff, "syncing"),
            else_="out-of-sync",
        )
        live = Site.state != "decommissioned"
        with self.engine.connect() as conn:
            by_status = conn.execute(
                select(availability, sync, func.count()).where(live).group_by(availability, sync)
            ).all()
            buckets = conn.execute(
                select(
                    *(func.sum(case((lag <= b, 1), else_=0).cast(Integer)) for b in LAG_BUCKETS),
                    func.count(),
                    func.coalesce(func.sum(lag), 0),
                ).where(live)
            ).one()
            top = conn.execute(
                select(Site.name, lag).where(live, lag > 0).order_by(lag.desc()).limit(TOP_LAGGING)
            ).all()
            instances = conn.execute(
                select(Instance.actual_state, func.count())
                .where(Instance.desired_state != DesiredState.DELETED.value)
                .group_by(Instance.actual_state)
            ).all()

        sites = GaugeMetricFamily(
            "cloudlet_sites",
            "Sites not decommissioned, by availability and sync status.",
            labels=["availability", "sync_status"],
        )
        for avail, status, count in by_status:
            sites.add_metric([avail, status], count)
        yield sites

        *cumulative, total, lag_sum = buckets
        histogram = HistogramMetricFamily(
            "cloudlet_site_revision_lag",
            "Revisions of desired state each site has yet to apply.",
        )
        histogram.add_metric(
            [],
            buckets=[(str(b), int(c or 0)) for b, c in zip(LAG_BUCKETS, cumulative, strict=True)]
            + [("+Inf", int(total))],
            sum_value=int(lag_sum),
        )
        yield histogram

        worst = GaugeMetricFamily(
            "cloudlet_site_revision_lag_top",
            f"Revision lag of the {TOP_LAGGING} most lagging sites.",
            labels=["site"],
        )
        for name, value in top:
            worst.add_metric([name], value)
        yield worst

        counts = GaugeMetricFamily(
            "cloudlet_instances",
            "Live instances by the state their site reports.",
            labels=["state"],
        )
        for state, count in instances:
            counts.add_metric([state], count)
        yield counts

        scrape = GaugeMetricFamily(
            "cloudlet_fleet_scrape_duration_seconds",
            "Time the last scrape spent reading the fleet from the database.",
        )
        scrape.add_metric([], time.perf_counter() - started)
        yield scrape


class MetricsMiddleware:
    """Times each request by its route template and counts artifact bytes sent."""

    def __init__(self, app: Any, metrics: ControllerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        send_ = send
        if scope["path"].endswith("/blob"):
            counter = self.metrics.artifact_bytes

            async def send_(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.body":
                    counter.inc(len(message.get("body", b"")))
                await send(message)

        try:
            await self.app(scope, receive, send_)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.request_seconds.labels(template, scope["method"]).observe(
                time.perf_counter() - started
            )
