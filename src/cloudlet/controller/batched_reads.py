"""Point reads that many requests make at once, coalesced into one query.

A thousand agents a second each ask "which site holds this credential?" and "what
is my site's revision now?". Run one by one, every answer costs a statement's fixed
overhead (SQLAlchemy's execution path, with PostgreSQL a round trip and a hop to a
worker thread), which is far more than the indexed lookup itself. Here the keys
asked for while the event loop is busy wait for the next batch, and one
``WHERE key IN (...)`` answers them all.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from sqlalchemy import Connection, Engine
from starlette.concurrency import run_in_threadpool

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
T = TypeVar("T")

#: Keys per statement at most (SQLite allows 32,766 bound parameters).
MAX_BATCH = 1000

#: Reads one batch of keys; a key it does not return reads as None.
ReadMany = Callable[[Connection, list[K]], dict[K, V]]


class ShortReads:
    """Runs a short read, holding no connection afterwards (a long poll must not pin
    one while it waits).

    With SQLite the event loop runs it itself, through a connection of its own: an
    indexed local read costs less than a hop to a worker thread, and a crowd of
    worker threads contending for the GIL is what limited the agent endpoints. With a
    database across the network, a worker thread runs it on a connection kept for
    these reads in autocommit: a pooled one would cost a ping at checkout, a BEGIN
    and a ROLLBACK, three round trips besides the query's own.
    """

    def __init__(self, engine: Engine, loop_connection: Connection | None) -> None:
        self._engine = engine
        self._loop_connection = loop_connection
        self._idle: queue.SimpleQueue[Connection] = queue.SimpleQueue()

    async def run(self, query: Callable[..., T], *args: object) -> T:
        connection = self._loop_connection
        if connection is None:
            return await run_in_threadpool(self._in_thread, query, *args)
        try:
            return query(connection, *args)
        finally:
            connection.rollback()

    def _in_thread(self, query: Callable[..., T], *args: object) -> T:
        try:
            connection = self._idle.get_nowait()
        except queue.Empty:
            connection = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            result = query(connection, *args)
        except BaseException:
            connection.invalidate()  # maybe broken: the next read connects anew
            connection.close()
            raise
        self._idle.put(connection)
        return result

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


class BatchedRead(Generic[K, V]):
    """``await get(key)`` for many concurrent callers, one query per batch.

    One batch is read at a time: keys that arrive meanwhile form the next, so the
    batches grow with the load instead of the statements.
    """

    def __init__(self, read_many: ReadMany[K, V], reads: ShortReads) -> None:
        self._read_many = read_many
        self._reads = reads
        self._pending: dict[K, list[asyncio.Future[V | None]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def get(self, key: K) -> V | None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[V | None] = loop.create_future()
        self._pending.setdefault(key, []).append(future)
        if self._task is None:
            self._task = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = dict(list(self._pending.items())[:MAX_BATCH])
                for key in batch:
                    del self._pending[key]
                await self._answer(batch)
        finally:
            self._task = None

    async def _answer(self, batch: dict[K, list[asyncio.Future[V | None]]]) -> None:
        try:
            found = await self._reads.run(self._read_many, list(batch))
        except Exception as exc:
            for futures in batch.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            return
        for key, futures in batch.items():
            value = found.get(key)
            for future in futures:
                if not future.done():  # its request may have gone
                    future.set_result(value)
