"""Coalesced point reads (controller/batched_reads.py) on a real SQLite database, and
the long-poll wake-ups spread over time (state.RevisionWatcher)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from sqlalchemy import Connection, bindparam, create_engine, text

from cloudlet.controller.batched_reads import MAX_BATCH, BatchedRead, ShortReads
from cloudlet.controller.state import WAKE_BURST, RevisionWatcher


@pytest.fixture
def reads(tmp_path: Path) -> ShortReads:
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with engine.begin() as c:
        c.execute(text("CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER)"))
        c.execute(
            text("INSERT INTO kv VALUES (:k, :v)"), [{"k": f"k{i}", "v": i} for i in range(50)]
        )
    return ShortReads(engine, engine.connect())


class Counted:
    """A read_many that counts its statements and the keys of each."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.fail = False

    def __call__(self, connection: Connection, keys: list[str]) -> dict[str, int]:
        self.batches.append(len(keys))
        if self.fail:
            raise RuntimeError("database gone")
        query = text("SELECT k, v FROM kv WHERE k IN :keys").bindparams(
            bindparam("keys", expanding=True)
        )
        return {k: v for k, v in connection.execute(query, {"keys": keys})}


def test_concurrent_reads_share_one_statement(reads: ShortReads) -> None:
    read_many = Counted()
    batched = BatchedRead(read_many, reads)

    async def main() -> list[int | None]:
        return await asyncio.gather(
            *(batched.get(f"k{i % 60}") for i in range(120))  # k50..k59 do not exist
        )

    got = asyncio.run(main())
    assert got == [i % 60 if i % 60 < 50 else None for i in range(120)]
    assert read_many.batches == [60], "one statement, each key once"


def test_a_batch_is_split_at_the_bound(reads: ShortReads) -> None:
    read_many = Counted()
    batched = BatchedRead(read_many, reads)

    async def main() -> None:
        await asyncio.gather(*(batched.get(f"x{i}") for i in range(MAX_BATCH + 5)))

    asyncio.run(main())
    assert read_many.batches == [MAX_BATCH, 5]


def test_a_failed_read_fails_its_batch_and_not_the_next(reads: ShortReads) -> None:
    read_many = Counted()
    batched = BatchedRead(read_many, reads)

    async def main() -> tuple[list[object], int | None]:
        read_many.fail = True
        failed = await asyncio.gather(batched.get("k1"), batched.get("k2"), return_exceptions=True)
        read_many.fail = False
        return failed, await batched.get("k3")

    failed, later = asyncio.run(main())
    assert all(isinstance(f, RuntimeError) for f in failed) and later == 3


def test_a_caller_that_goes_away_does_not_break_the_others(reads: ShortReads) -> None:
    batched = BatchedRead(Counted(), reads)

    async def main() -> int | None:
        gone = asyncio.ensure_future(batched.get("k4"))
        stays = asyncio.ensure_future(batched.get("k4"))
        gone.cancel()
        return await stays

    assert asyncio.run(main()) == 4


def test_a_crowd_of_changes_wakes_long_polls_a_burst_at_a_time() -> None:
    watcher = RevisionWatcher()
    sites = [f"s{i}" for i in range(WAKE_BURST * 3)]

    async def main() -> tuple[list[float], float]:
        watcher.bind(asyncio.get_running_loop())
        started = time.monotonic()
        woken: list[float] = []

        async def poll(site: str) -> None:
            if await watcher.wait(site, 5):
                woken.append(time.monotonic() - started)

        polls = [asyncio.ensure_future(poll(s)) for s in sites]
        await asyncio.sleep(0)  # every poll waits
        for site in sites:
            watcher.notify(site)
        await asyncio.gather(*polls)
        lone = asyncio.ensure_future(poll("alone"))
        await asyncio.sleep(0)
        at = time.monotonic()
        watcher.notify("alone")
        await lone
        return woken, woken[-1] - (at - started)

    woken, lone_delay = asyncio.run(main())
    assert len(woken) == len(sites) + 1
    first = sorted(woken[:-1])
    assert first[WAKE_BURST] - first[WAKE_BURST - 1] >= 0.05, "a pause after the first burst"
    assert first[-1] >= 0.15, "the third burst two passes later"
    assert lone_delay < 1.0, "a lone change does not wait for a pass"
