"""Simulated site agents for the fleet bench: raw HTTP/1.1 over asyncio, no workloads.

A worker process owns a slice of the sites. It registers and enrolls them through
the real API, then runs one task per agent that every ``interval`` seconds (with
uniform jitter) does one sync round as the agent's report loop does: ``POST
/v1/agent/report`` then ``GET /v1/agent/desired?since=CURSOR&wait=0``. A fraction of
agents also holds a long-poll (``wait=25``) open on a second connection, as every
real agent's pull loop does. httpx costs too much CPU per request for thousands of
clients on the controller's own cores, so requests are preformatted bytes on
keep-alive connections and responses are parsed just enough (status, length).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import resource
import ssl
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson

from cloudlet import pki

#: Seconds a long-poll asks the controller to wait (the agent's default poll_wait_s).
LONG_POLL_WAIT_S = 25.0
#: The agent's pause after a pull answer that moved nothing (sync.IDLE_REPOLL_S).
IDLE_REPOLL_S = 2.0
#: Client-side timeout of one request (a long-poll gets its wait on top).
REQUEST_TIMEOUT_S = 30.0
SETUP_CONCURRENCY = 8
#: Usage records a silent agent queues per interval (ten instances' worth).
STORM_RECORDS = 10


class HTTPFailure(Exception):
    """A request failed: connection lost, timed out, or an unexpected status."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with at most one request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(HTTPFailure("connection lost"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None or self.waiter.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        length = 0
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : stop if stop >= 0 else None])
        total = end + 4 + length
        if len(self.buffer) < total:
            return
        body = bytes(self.buffer[end + 4 : total])
        del self.buffer[:total]
        self.waiter.set_result((int(head[9:12]), body))

    async def request(self, data: bytes, timeout: float) -> tuple[int, bytes]:
        if self.lost or self.transport is None:
            raise HTTPFailure("connection lost")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        try:
            async with asyncio.timeout(timeout):
                return await self.waiter
        except TimeoutError:
            self.close()
            raise HTTPFailure("timeout") from None
        finally:
            self.waiter = None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.lost = True


class Endpoint:
    """Where the controller listens; opens connections to it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.host_header = f"{host}:{port}"

    async def connect(self, tls: ssl.SSLContext | None = None) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                _Connection,
                self.host,
                self.port,
                ssl=tls,
                server_hostname=self.host if tls else None,
            )
        except OSError as exc:
            raise HTTPFailure(f"connect: {exc.strerror or exc}") from None
        return conn

    def get(self, path: str, token: str) -> bytes:
        return (
            f"GET {path} HTTP/1.1\r\nHost: {self.host_header}\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        ).encode()

    def post(self, path: str, token: str | None, body: bytes) -> bytes:
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        return (
            f"POST {path} HTTP/1.1\r\nHost: {self.host_header}\r\n{auth}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body


@dataclass
class Stats:
    """What one worker measured inside the window (latencies in milliseconds)."""

    window: tuple[float, float] = (0.0, 0.0)
    sync_ms: list[float] = field(default_factory=list)
    report_ms: list[float] = field(default_factory=list)
    #: Reports that carried events or an instance list (not plain heartbeats).
    full_report_ms: list[float] = field(default_factory=list)
    #: (start time, sync ms) of every sync, to see when slow ones happen.
    timeline: list[tuple[float, float]] = field(default_factory=list)
    desired_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    events_sent: int = 0
    long_polls: int = 0
    long_polls_open: int = 0
    #: Reconnect storm: seconds from the storm's end until each returning agent's
    #: backlog was all acknowledged, and errors the returning agents met.
    storm_recover_s: list[float] = field(default_factory=list)
    storm_agents: int = 0
    storm_errors: int = 0
    #: Events acknowledged by the controller (the rest still wait in outboxes).
    events_acked: int = 0

    def in_window(self, t: float) -> bool:
        return self.window[0] <= t < self.window[1]

    def error(self, kind: str, at: float) -> None:
        if self.in_window(at):
            self.errors[kind] = self.errors.get(kind, 0) + 1


@dataclass
class Plan:
    """What a worker is asked to simulate (picklable: sent to the child process)."""

    host: str
    port: int
    admin_token: str
    first: int
    count: int
    interval: float
    jitter: float
    long_poll_fraction: float
    events_fraction: float
    instances_fraction: float
    keepalive: bool
    seed: int
    #: Reconnect storm: this fraction of agents goes silent from ``storm`` [0] to
    #: [1] (absolute times), queueing usage records, then all report at once.
    storm_fraction: float = 0.0
    storm: tuple[float, float] = (0.0, 0.0)
    #: When the agents stop (moved later with the window, see ``_run``).
    stop: float = 0.0
    #: More replicas to spread agents over: (host, port) of each (the plan's own first).
    replicas: tuple[tuple[str, int], ...] = ()
    #: The controller's CA (``--tls``): sites join with a CSR and sync over mutual TLS.
    ca_file: str | None = None


class Agent:
    """One simulated site agent: a credential, an outbox sequence and a cursor."""

    def __init__(
        self,
        endpoint: Endpoint,
        name: str,
        credential: str,
        rng: random.Random,
        tls: ssl.SSLContext | None = None,
    ):
        self.endpoint, self.name, self.credential, self.rng = endpoint, name, credential, rng
        #: This site's own client certificate and the pinned CA (None: plain HTTP).
        self.tls = tls
        self.cursor = 0
        self.next_seq = 1
        #: The highest sequence the controller acknowledged: every event up to it
        #: must be stored, exactly once.
        self.acked_seq = 0
        self.outbox: list[dict[str, Any]] = []
        self.conn: _Connection | None = None
        self.instance_id = f"bench-{name}"
        #: A reconnect storm's member (goes silent once, then returns with the others).
        self.storms = False
        self.stormed = False

    def record(self, stats: Stats, count: int) -> None:
        """Queue ``count`` usage records in the outbox, as the agent's usage loop does."""
        now = datetime.now(UTC).isoformat()
        for _ in range(count):
            self.outbox.append(
                {
                    "seq": self.next_seq,
                    "kind": "usage",
                    "instance": self.instance_id,
                    "at": now,
                    "data": {"project": "admin", "app": "bench", "seconds": 15.0},
                }
            )
            self.next_seq += 1
            stats.events_sent += 1

    def _report_body(self, plan: Plan, stats: Stats) -> bytes:
        now = datetime.now(UTC).isoformat()
        if self.rng.random() < plan.events_fraction:
            self.record(stats, self.rng.randint(1, 3))
        report: dict[str, Any] = {
            "agent_version": "bench",
            "applied_revision": self.cursor,
            "capacity": {"vcpus": 8.0, "memory_mib": 16384, "disk_gib": 200.0},
            "utilization": {
                "cpu": round(self.rng.random(), 3),
                "memory": round(self.rng.random(), 3),
                "disk": 0.4,
            },
            "events": self.outbox[:100],
        }
        if self.rng.random() < plan.instances_fraction:
            report["instances"] = [
                {
                    "id": self.instance_id,
                    "name": self.instance_id,
                    "app": "bench",
                    "project": "admin",
                    "state": "running",
                    "endpoint": "127.0.0.1:9000",
                    "timings": {"synthesis_s": 1.5},
                    "updated_at": now,
                }
            ]
        return orjson.dumps(report)

    async def sync_round(self, plan: Plan, stats: Stats) -> None:
        """Report, then pull with wait=0; one round's latency covers both."""
        ep = self.endpoint
        started = time.time()
        try:
            if self.conn is None or self.conn.lost:
                self.conn = await ep.connect(self.tls)
            body = self._report_body(plan, stats)
            full = b'"instances"' in body or b'"events":[]' not in body
            t0 = time.perf_counter()
            status, answer = await self.conn.request(
                ep.post("/v1/agent/report", self.credential, body), REQUEST_TIMEOUT_S
            )
            t1 = time.perf_counter()
            if status != 200:
                raise HTTPFailure(f"report {status}")
            ack = orjson.loads(answer)
            self.acked_seq = max(self.acked_seq, ack["acked_seq"])
            held = len(self.outbox)
            self.outbox = [e for e in self.outbox if e["seq"] > ack["acked_seq"]]
            stats.events_acked += held - len(self.outbox)
            status, answer = await self.conn.request(
                ep.get(f"/v1/agent/desired?since={self.cursor}&wait=0", self.credential),
                REQUEST_TIMEOUT_S,
            )
            t2 = time.perf_counter()
            if status == 200:
                self.cursor = orjson.loads(answer)["revision"]
            elif status != 204:
                raise HTTPFailure(f"desired {status}")
        except HTTPFailure as exc:
            stats.error(exc.kind, started)
            if self.storms and started >= plan.storm[1]:
                stats.storm_errors += 1
            if self.conn is not None:
                self.conn.close()
                self.conn = None
            return
        if not plan.keepalive:
            self.conn.close()
            self.conn = None
        if stats.in_window(started):
            stats.sync_ms.append((t2 - t0) * 1000)
            stats.report_ms.append((t1 - t0) * 1000)
            stats.desired_ms.append((t2 - t1) * 1000)
            stats.timeline.append((started, (t2 - t0) * 1000))
            if full:
                stats.full_report_ms.append((t1 - t0) * 1000)

    async def sync_loop(self, plan: Plan, stats: Stats) -> None:
        due = time.monotonic() + self.rng.uniform(0, plan.interval)
        while True:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if time.time() >= plan.stop:
                return
            if self.storms and not self.stormed and time.time() >= plan.storm[0]:
                await self.storm(plan, stats)
                due = time.monotonic()
                continue
            await self.sync_round(plan, stats)
            # A round that ran late moves the next one a whole interval on (as an agent's
            # timer does): rounds missed while the controller was slow (a cold start) are
            # not made up, which put more rounds in the window than the target.
            step = plan.interval * self.rng.uniform(1 - plan.jitter, 1 + plan.jitter)
            due += step
            if due < time.monotonic():
                due = time.monotonic() + step

    async def storm(self, plan: Plan, stats: Stats) -> None:
        """Go silent until the storm ends (usage records pile up, one per interval),
        then report the backlog at once, as every returning agent does together."""
        self.stormed = True
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        while time.time() < plan.storm[1]:
            self.record(stats, STORM_RECORDS)
            await asyncio.sleep(min(plan.interval, max(0.0, plan.storm[1] - time.time())))
        back = plan.storm[1]
        while self.outbox and time.time() < plan.stop:
            await self.sync_round(plan, stats)
            if self.outbox:
                await asyncio.sleep(0.2)
        if not self.outbox:
            stats.storm_recover_s.append(time.time() - back)

    async def long_poll_loop(self, plan: Plan, stats: Stats) -> None:
        """Hold a long-poll open, re-polling as soon as one answers (the pull loop)."""
        await asyncio.sleep(self.rng.uniform(0, LONG_POLL_WAIT_S))
        conn: _Connection | None = None
        path = f"/v1/agent/desired?since={{}}&wait={LONG_POLL_WAIT_S:g}"
        while time.time() < plan.stop:
            started = time.time()
            if self.storms and plan.storm[0] <= started < plan.storm[1]:
                if conn is not None:
                    conn.close()
                    conn = None
                await asyncio.sleep(plan.storm[1] - started)
                continue
            try:
                if conn is None or conn.lost:
                    conn = await self.endpoint.connect(self.tls)
                stats.long_polls_open += 1
                try:
                    status, answer = await conn.request(
                        self.endpoint.get(path.format(self.cursor), self.credential),
                        LONG_POLL_WAIT_S + REQUEST_TIMEOUT_S,
                    )
                finally:
                    stats.long_polls_open -= 1
                since = self.cursor
                if status == 200:
                    self.cursor = orjson.loads(answer)["revision"]
                elif status != 204:
                    raise HTTPFailure(f"long-poll {status}")
                if stats.in_window(time.time()):
                    stats.long_polls += 1
                if status == 200 and self.cursor == since:
                    # What the agent's pull loop does when an answer moved nothing
                    # (a site at revision 0 answers since=0 at once): pause.
                    await asyncio.sleep(IDLE_REPOLL_S)
            except HTTPFailure as exc:
                stats.error(exc.kind, started)
                if conn is not None:
                    conn.close()
                conn = None
                await asyncio.sleep(1.0)
        if conn is not None:
            conn.close()


async def _enroll_slice(
    ep: Endpoint, plan: Plan
) -> tuple[list[tuple[str, str, ssl.SSLContext | None]], int]:
    """Register and enroll this worker's sites through the admin and agent APIs (with
    ``plan.ca_file``: each with a CSR, and a client context for what it was issued)."""
    rng = random.Random(plan.seed)
    names = [f"bench-{i:05d}" for i in range(plan.first, plan.first + plan.count)]
    enrolled: list[tuple[str, str, ssl.SSLContext | None]] = []
    retries = [0]
    queue = list(reversed(names))
    anonymous = ssl.create_default_context(cafile=plan.ca_file) if plan.ca_file else None
    certs = Path(tempfile.mkdtemp(prefix="cloudlet-fleet-certs-")) if plan.ca_file else None

    async def one_client() -> None:
        conn = await ep.connect(anonymous)
        while queue:
            name = queue.pop()
            site = {
                "name": name,
                "region": f"region-{rng.randrange(20)}",
                "latitude": round(rng.uniform(-60, 70), 4),
                "longitude": round(rng.uniform(-180, 180), 4),
            }
            status, answer = await conn.request(
                ep.post("/v1/sites", plan.admin_token, orjson.dumps(site)), 120
            )
            if status != 201:
                raise RuntimeError(f"POST /v1/sites {name}: {status} {answer[:300]!r}")
            join = orjson.loads(answer)["join_token"]["token"]
            enroll: dict[str, Any] = {"join_token": join, "agent_version": "bench"}
            key = None
            if certs is not None:
                key = pki.new_key()
                enroll["csr"] = pki.make_csr(key, name).decode()
            body = orjson.dumps(enroll)
            # Until aa5270c the admin API answered before its transaction committed,
            # so a fast client could see its fresh join token as unknown for a
            # moment: retry that (counted, and now expected to stay at zero).
            for _ in range(50):
                status, answer = await conn.request(ep.post("/v1/agent/enroll", None, body), 120)
                if status != 401 or b"unknown join token" not in answer:
                    break
                retries[0] += 1
                await asyncio.sleep(0.02)
            if status != 201:
                raise RuntimeError(f"enroll {name}: {status} {answer[:300]!r}")
            joined = orjson.loads(answer)
            context = None
            if certs is not None and key is not None:
                cert, key_file = certs / f"{name}.crt", certs / f"{name}.key"
                cert.write_text(joined["certificates"]["certificate"])
                key_file.write_bytes(pki.key_pem(key))
                context = ssl.create_default_context(cafile=plan.ca_file)
                context.load_cert_chain(cert, key_file)
            enrolled.append((name, joined["credential"], context))
        conn.close()

    await asyncio.gather(*(one_client() for _ in range(SETUP_CONCURRENCY)))
    return enrolled, retries[0]


async def _run(plan: Plan, pipe: Connection) -> None:
    ep = Endpoint(plan.host, plan.port)
    t0 = time.time()
    enrolled, retries = await _enroll_slice(ep, plan)
    pipe.send({"enrolled": len(enrolled), "retries": retries, "seconds": time.time() - t0})
    # The parent answers with the measuring window and the time to stop.
    window_start, window_end, plan.stop, plan.storm = await asyncio.to_thread(pipe.recv)
    stats = Stats(window=(window_start, window_end))
    rng = random.Random(plan.seed + 1)
    endpoints = [ep, *(Endpoint(h, p) for h, p in plan.replicas)]
    agents = [
        Agent(endpoints[i % len(endpoints)], name, cred, random.Random(rng.random()), tls)
        for i, (name, cred, tls) in enumerate(enrolled)
    ]
    stormers = agents[: round(len(agents) * plan.storm_fraction)]
    for agent in stormers:
        agent.storms = True
    stats.storm_agents = len(stormers)
    tasks = [asyncio.create_task(a.sync_loop(plan, stats)) for a in agents]
    pollers = agents[: round(len(agents) * plan.long_poll_fraction)]
    tasks += [asyncio.create_task(a.long_poll_loop(plan, stats)) for a in pollers]
    peak_open = 0
    while time.time() < plan.stop:
        await asyncio.sleep(1.0)
        if pipe.poll():  # the parent moved the window later (the warm-up ran long)
            shift = pipe.recv()
            stats.window = (stats.window[0] + shift, stats.window[1] + shift)
            plan.stop += shift
            plan.storm = (plan.storm[0] + shift, plan.storm[1] + shift)
        if stats.in_window(time.time()):
            peak_open = max(peak_open, stats.long_polls_open)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for agent in agents:
        if agent.conn is not None:
            agent.conn.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    pipe.send(
        {
            "sync_ms": stats.sync_ms,
            "report_ms": stats.report_ms,
            "full_report_ms": stats.full_report_ms,
            "timeline": stats.timeline,
            "desired_ms": stats.desired_ms,
            "errors": stats.errors,
            "events_sent": stats.events_sent,
            "long_polls": stats.long_polls,
            "long_pollers": len(pollers),
            "long_polls_open_peak": peak_open,
            "storm_agents": stats.storm_agents,
            "storm_recover_s": stats.storm_recover_s,
            "storm_errors": stats.storm_errors,
            "events_acked": stats.events_acked,
            "acked_seqs": {agent.name: agent.acked_seq for agent in agents},
            "cpu_s": usage.ru_utime + usage.ru_stime,
        }
    )


def run_worker(plan: Plan, pipe: Connection) -> None:
    """Child-process entry point: enroll, wait for the window, simulate, send stats."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.environ.pop("PYTHONASYNCIODEBUG", None)
    runner: Any = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        runner = uvloop.run
    runner(_run(plan, pipe))
