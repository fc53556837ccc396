"""Short and long cuts of a site's WAN link, with instances created at the controller and
at the site-local API before and during the cut."""

from __future__ import annotations

import time

import pytest
from partition_bed import Bed

from cloudlet.testbed.invariants import Probe
from cloudlet.testbed.local import wait_for

pytestmark = pytest.mark.partition


@pytest.mark.parametrize(
    ("cut_s", "report_s"),
    [(2.0, 1.0), (12.0, 0.1)],
    ids=["short-cut-under-grace", "long-cut-120-reports"],
)
def test_cut_keeps_serving_and_catches_up_exactly_once(
    bed: Bed, cut_s: float, report_s: float
) -> None:
    name = f"cut{int(cut_s)}"
    site = bed.site(
        name,
        env={
            "CLOUDLET_AGENT__REPORT_INTERVAL_S": str(report_s),
            "CLOUDLET_AGENT__USAGE_INTERVAL_S": "0.5",
        },
    )
    before = [
        bed.create_at_controller(site, f"{name}-ctl-a"),
        bed.create_at_site(site, f"{name}-loc-a"),
    ]
    running = bed.wait_local_running(site, before)

    with Probe() as probe:
        for iid, inst in running.items():
            probe.set(iid, inst["endpoint"])
        site.cut()
        cut_at = time.monotonic()
        during_ctl = bed.create_at_controller(site, f"{name}-ctl-b")  # desired, not yet seen
        during_loc = bed.create_at_site(site, f"{name}-loc-b")  # started offline
        probe.set(during_loc, bed.wait_local_running(site, [during_loc])[during_loc]["endpoint"])
        assert during_ctl not in bed.local_states(site)
        time.sleep(max(0.0, cut_s - (time.monotonic() - cut_at)))
        offline = bed.wan.site_view(name)["availability"]
        site.restore()
        restored = time.monotonic()
        took = bed.converge(site, [*before, during_ctl, during_loc], since=restored)
        time.sleep(0.5)  # probe a little past convergence too

    # Shorter than the grace, the controller never calls the site offline; longer, it does.
    assert offline == ("online" if cut_s < bed.wan.offline_grace_s else "offline")
    assert probe.misses() == 0, (probe.errors, before, during_loc)
    assert sum(probe.asked.values()) > 10 * cut_s
    events, usage = bed.check(site)
    assert usage.instances == 4
    print(
        f"{name}: converged {took:.2f}s after restore; {events}; usage {usage.intervals} intervals"
    )


def test_outage_past_the_outbox_cap_folds_usage_and_loses_nothing(bed: Bed) -> None:
    site = bed.site(
        "cap",
        env={"CLOUDLET_AGENT__OUTBOX_CAP": "40", "CLOUDLET_AGENT__USAGE_INTERVAL_S": "0.1"},
    )
    ids = [bed.create_at_controller(site, f"cap-{n}") for n in range(3)]
    bed.wait_local_running(site, ids)
    site.cut()
    time.sleep(6.0)  # ~180 usage records for a cap of 40
    depth = site.agent.health()["outbox_depth"]
    assert depth > 40
    site.restore()
    took = bed.converge(site, ids, since=time.monotonic())
    events, usage = bed.check(site)
    assert usage.instances == 3
    health = site.agent.health()
    assert events.folded > 0 and health["outbox_compacted"] >= events.folded
    alarms = [e["data"] for e in bed.site_events(site) if e["kind"] == "alarm"]
    notices = [a for a in alarms if "folded_total" in a]
    assert notices and notices[-1]["folded_total"] >= events.folded

    # Every lifecycle event made it one by one.
    states = [e for e in bed.site_events(site) if e["kind"] == "instance.state"]
    assert len(states) == 3 * 3  # pending, starting, running

    # The backlog was an alarm too: raised during the cut, cleared once the outbox is
    # under half its cap at a report. The usage flood (30 records a second against a
    # report a second) keeps the depth between the clear and raise thresholds, where
    # only a report right after a batch sees it low; stopping the instances ends it.
    def backlog() -> list[dict]:
        found = bed.api.get("/v1/alarms", params={"site": site.name}).json()
        return [a for a in found if a["alarm_id"] == "site.outbox-backlog"]

    for instance in ids:
        bed.api.post(f"/v1/instances/{instance}/stop").raise_for_status()
    wait_for(lambda: [a["cleared_at"] is not None for a in backlog()] == [True], 30, "its clear")
    (alarm,) = backlog()
    assert alarm["raised_at"] < alarm["cleared_at"]
    print(f"cap: {depth} waiting, {events.folded} folded; converged {took:.2f}s; {events}")
