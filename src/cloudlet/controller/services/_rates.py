"""What each site's instances measured: the rate it fetches artifacts at and the time
it takes to start an app, from the phase timings its agent reported (``fetch``,
``synthesize``, ``first_answer`` for VMs, ``starting`` for processes). A site with no
measurement gets the defaults below, and says so (``measured`` False).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloudlet.controller.db.models import App, Instance, Overlay

#: Fetch rate assumed for a site that has not fetched anything measurable yet (38 Mbit/s).
DEFAULT_FETCH_BPS = 38e6 / 8
#: Start times assumed without measurements: a VM's synthesis and boot, a process's start.
DEFAULT_VM_START_S = 3.0
DEFAULT_PROCESS_START_S = 0.5
#: A fetch shorter than this says nothing about the link's rate.
_MIN_FETCH_S = 0.05


@dataclass(frozen=True)
class SiteRates:
    fetch_bps: float
    start_s: float
    measured: bool


def measure(session: Session) -> dict[bool, dict[str, SiteRates]]:
    """Per site (``""``: the defaults), its rates for VM apps (key True) and for
    process apps (False), in one pass over every instance's timings."""
    conn = session.connection()  # Core rows: this reads every instance
    sizes = dict(conn.execute(select(Overlay.id, Overlay.size)).tuples().all())
    overlay_size = {
        app_id: sum(sizes.get(c["overlay"], 0) for c in components if c.get("overlay"))
        for app_id, components in conn.execute(select(App.id, App.components))
    }
    fetches: dict[str, list[tuple[int, float]]] = defaultdict(list)
    starts: dict[bool, dict[str, list[float]]] = {True: defaultdict(list), False: defaultdict(list)}
    for site_id, app_id, timings in conn.execute(
        select(Instance.site_id, Instance.app_id, Instance.timings)
    ):
        if not timings:
            continue
        fetch_s = timings.get("fetch")
        if fetch_s and fetch_s >= _MIN_FETCH_S and overlay_size.get(app_id):
            fetches[site_id].append((overlay_size[app_id], fetch_s))
        synthesize = float(timings.get("synthesize", 0.0))
        for has_vm, key in ((True, "first_answer"), (False, "starting")):
            if (start := timings.get(key)) is not None:
                starts[has_vm][site_id].append(float(start) + synthesize)
    return {has_vm: _per_site(fetches, starts[has_vm], has_vm) for has_vm in (True, False)}


def _per_site(
    fetches: dict[str, list[tuple[int, float]]], starts: dict[str, list[float]], has_vm: bool
) -> dict[str, SiteRates]:
    default_start = DEFAULT_VM_START_S if has_vm else DEFAULT_PROCESS_START_S
    out = {}
    for site_id in set(fetches) | set(starts):
        f = fetches.get(site_id)
        rate = sum(b for b, _ in f) / sum(s for _, s in f) if f else DEFAULT_FETCH_BPS
        start = statistics.median(starts[site_id]) if starts.get(site_id) else default_start
        out[site_id] = SiteRates(rate, start, True)
    out[""] = SiteRates(DEFAULT_FETCH_BPS, default_start, False)
    return out
