"""The reconnect probe: a returning controller is found within about two seconds,
by each site once, and a fleet's retries are spread out rather than in one burst."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from cloudlet.agent.reconciler import Reconciler
from cloudlet.agent.store import Store
from cloudlet.agent.sync import Syncer
from cloudlet.compute import FakeDriver

SPREAD = 0.5


class ProbedClient:
    """Answers probes as ``up`` says and counts them."""

    def __init__(self) -> None:
        self.up = False
        self.probes = 0
        self.credential = "c"

    async def probe(self) -> bool:
        self.probes += 1
        return self.up


def test_a_fleet_finds_the_controller_back_once_each_and_spread_out(
    store: Store, tmp_path: Path
) -> None:
    client = ProbedClient()
    sites = 200

    def syncer() -> Syncer:
        s = Syncer(
            store,
            client,  # type: ignore[arg-type]
            Reconciler(store, FakeDriver()),
            data_dir=tmp_path,
            poll_wait_s=1,
            report_interval_s=1,
            backoff_max_s=30,
            probe_interval_s=1.0,
            reconnect_spread_s=SPREAD,
        )
        s.status.reachable = False  # as after a failed pull and report
        return s

    fleet = [syncer() for _ in range(sites)]
    healthy = syncer()
    healthy.status.reachable = True
    woken: dict[int, list[float]] = {i: [] for i in range(sites)}

    async def watch(i: int, s: Syncer) -> None:
        while True:
            await s.pull_wake.wait()
            s.pull_wake.clear()
            woken[i].append(time.monotonic())

    async def main() -> float:
        stop = asyncio.Event()
        probes = [asyncio.create_task(s.probe_loop(stop)) for s in [*fleet, healthy]]
        watchers = [asyncio.create_task(watch(i, s)) for i, s in enumerate(fleet)]
        await asyncio.sleep(2.0)  # down: every probe fails, nobody is woken
        assert not any(woken.values())
        client.up = True
        back = time.monotonic()
        await asyncio.sleep(4.0)  # up, while the sites still look unreachable
        stop.set()
        await asyncio.gather(*probes)
        for w in watchers:
            w.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        return back

    back = asyncio.run(main())
    delays = [w[0] - back for w in woken.values() if w]
    assert len(delays) == sites, "every site found the controller"
    assert all(len(w) == 1 for w in woken.values()), "woken once per return, not per probe"
    # Probes every 0.5-1.5 s, then up to SPREAD: found within ~2 s...
    assert max(delays) < 1.5 + SPREAD + 0.5
    # ...and spread over most of that window rather than all at once.
    assert max(delays) - min(delays) > 1.0
    # A site that reaches the controller does not probe at all (the probe counts
    # only the fleet's: roughly one per site per second while down).
    assert client.probes < sites * 6 * 1.5
