"""Running means serving, for process workloads: the reconciler keeps an instance
``starting`` until its port accepts connections, looking again less and less often."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudlet.agent import actual, desired
from cloudlet.agent.reconciler import Reconciler
from cloudlet.agent.store import Store
from cloudlet.compute import ProcessDriver
from cloudlet.schemas import ActualState
from unit.agent.agent_fakes import doc, instance

pytestmark = pytest.mark.integration


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "agent.db")
    yield s
    s.close()


SERVE_LATE = [sys.executable, "-c", "import time; time.sleep(1.5); import http.server, os; "
              "http.server.HTTPServer(('127.0.0.1', int(os.environ['PORT'])), "
              "http.server.SimpleHTTPRequestHandler).serve_forever()"]  # fmt: skip


def _run(store: Store, driver: ProcessDriver, seconds: float) -> Reconciler:
    rec = Reconciler(store, driver)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(rec.run(60.0, stop))
        await asyncio.sleep(seconds)
        stop.set()
        rec.wake()
        await task

    asyncio.run(main())
    return rec


def test_a_workload_that_never_listens_stays_starting_and_is_rechecked_less_often(
    store: Store, tmp_path: Path
) -> None:
    driver = ProcessDriver(tmp_path / "procs")
    try:
        never = {"name": "main", "command": ["sleep", "600"]}
        desired.apply_doc(store, doc(1, [instance("i1", components=[never])], full=True))
        rec = _run(store, driver, 4.0)
        row = actual.get(store, "i1")
        assert row is not None and row.state is ActualState.STARTING
        # Rechecks at 0.25, 0.5, 1 and 2 s after each other: a handful of passes in
        # 4 s (every 0.25 s would be 16).
        assert rec.passes <= 7, rec.passes
    finally:
        driver.close()


def test_a_workload_that_listens_late_reads_running_once_it_serves(
    store: Store, tmp_path: Path
) -> None:
    driver = ProcessDriver(tmp_path / "procs")
    try:
        late = {"name": "main", "command": SERVE_LATE}
        desired.apply_doc(store, doc(1, [instance("i1", components=[late])], full=True))
        _run(store, driver, 6.0)
        row = actual.get(store, "i1")
        assert row is not None and row.state is ActualState.RUNNING, row
    finally:
        driver.close()
