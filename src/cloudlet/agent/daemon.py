"""The site agent's entry point: wires store, driver, reconciler, sync loops and local API.

Start order follows the offline-autonomy rule: record AGENT_STARTED, reconcile from
the local store alone (adopting or restarting workloads), serve the local API (and
announce it by DNS-SD under the site's name, once enrollment has told it: never under
a stand-in name clients would cache), and only then enroll (first start), sync, pre-stage
images and take checkpoints. An agent on trial (an upgrade the supervisor started) commits
it once its local API answers, before sync (see :mod:`cloudlet.agent.upgrade`). Stop order: stop
the loops, stop the instances (unless ``keep_workloads``, or the agent stops to
restart into another install, or it is an agent on trial),
record usage, send a last report within a couple of seconds if the controller
answers, withdraw the announcement, close the drivers.

Process components run on ``settings.driver``; vm components on the qemu driver,
built on first use (the same one when ``settings.driver`` is qemu).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from datetime import UTC, datetime
from typing import Any

from cloudlet import __version__
from cloudlet.agent import client_auth, outbox, usage
from cloudlet.agent._crash_loop import CrashWatch
from cloudlet.agent._specs import DriverSet
from cloudlet.agent.artifacts import GIB, ArtifactCache
from cloudlet.agent.checkpoints import Checkpointer
from cloudlet.agent.client import ControllerClient, controller_urls
from cloudlet.agent.discovery import Announcer, primary_address, service_info
from cloudlet.agent.handoff import HandoffRunner
from cloudlet.agent.local_api import LocalApi, create_app, resolve_token
from cloudlet.agent.metrics import AgentMetrics
from cloudlet.agent.reconciler import Reconciler
from cloudlet.agent.staging import Stager
from cloudlet.agent.store import CONTROLLER_URL, CREDENTIAL, SITE_ID, SITE_NAME, Store
from cloudlet.agent.sync import Syncer
from cloudlet.agent.tls import SiteTls, TlsJoin, renew_loop
from cloudlet.agent.upgrade.supervisor import EXIT_SWITCH
from cloudlet.agent.upgrade.upgrader import Upgrader
from cloudlet.agent.vm import VmBuilder
from cloudlet.compute import ComputeDriver, get_driver
from cloudlet.errors import ConfigError, DriverError
from cloudlet.schemas import ComponentKind, EventKind
from cloudlet.settings import AgentSettings

log = logging.getLogger(__name__)

STORE_FILE = "agent.db"
#: Under data_dir: stateful components' state directories (what handoffs move).
STATE_DIR = "state"
#: Under data_dir: checkpoints taken and not yet sent, and ones being restored.
CHECKPOINT_DIR = "checkpoints"
#: Longest the last report may take at exit.
FINAL_REPORT_S = 2.0


def make_driver(settings: AgentSettings, name: str | None = None) -> ComputeDriver:
    """Build the compute driver ``name`` (default: the one in settings), keeping its
    state under data_dir."""
    name = name or settings.driver
    kwargs: dict[str, Any] = {"host": settings.workload_host}
    if name != "fake":  # the fake keeps everything in memory
        kwargs["state_dir"] = settings.data_dir / "workloads" / name
    if name == "qemu":
        kwargs["accel"] = settings.vm_accel
    return get_driver(name, **kwargs)


class Agent:
    """One running site agent. Build with settings, a store and a driver; then :meth:`run`."""

    def __init__(
        self,
        settings: AgentSettings,
        store: Store,
        driver: ComputeDriver,
        *,
        supervised: bool = False,
    ) -> None:
        self.settings = settings
        self.store = store
        self.driver = driver
        self.metrics = AgentMetrics()
        #: The site's certificates and the CA it pins (None: --insecure, plain HTTP).
        self.tls = None if settings.insecure else SiteTls(settings.data_dir)
        verify = self.tls.client_context() if self.tls is not None else True
        self.verify = verify
        self.cache = ArtifactCache(
            store,
            settings.artifact_dir,
            int(settings.cache_budget_gib * GIB),
            on_change=self._cache_changed,
            on_lookup=self.metrics.cache_lookup,
        )
        self.stager = Stager(
            self.cache, self._remote, backoff_max_s=settings.backoff_max_s, verify=verify
        )
        self.drivers = DriverSet(driver, lambda: make_driver(settings, "qemu"))
        self.reconciler = Reconciler(
            store,
            self.drivers,
            workload_host=settings.workload_host,
            vm=VmBuilder(self.stager, settings.data_dir / "vms"),
            answer_timeout_s=settings.vm_answer_timeout_s,
            state_root=settings.data_dir / STATE_DIR,
            metrics=self.metrics,
            crashes=CrashWatch(
                store, after=settings.crash_loop_restarts, stable_s=settings.crash_loop_stable_s
            ),
        )
        self.metrics.watch(store, self._sync_times)
        self.syncer: Syncer | None = None
        self.checkpoints: Checkpointer | None = None
        self.local_api: LocalApi | None = None
        self.announcer = Announcer()
        self.upgrader = Upgrader(
            store,
            settings.data_dir,
            deadline_s=settings.upgrade_deadline_s,
            supervised=supervised,
            remote=self._remote,
            switch=self._switch,
            backoff_max_s=settings.backoff_max_s,
            verify=verify,
        )
        self.started_at = datetime.now(UTC)
        #: The process's exit code once run() returns: EXIT_SWITCH to restart into a
        #: staged install.
        self.exit_code = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def _remote(self) -> tuple[str, str] | None:
        """The controller's URL and this site's credential, once both are known."""
        url = self.settings.controller_url or self.store.get_meta(CONTROLLER_URL)
        if self.syncer is not None:  # the replica it talks to now
            url = self.syncer.client.base_url
        credential = self.store.get_meta(CREDENTIAL)
        return (url, credential) if url and credential else None

    def _switch(self) -> None:
        """Stop, keeping the workloads, for the supervisor to start the staged install."""
        self.exit_code = EXIT_SWITCH
        if self._stop is not None:
            self._stop.set()

    def _desired_changed(self) -> None:
        self.stager.wake.set()
        self.upgrader.wake.set()

    def _cache_changed(self) -> None:
        # Called from worker threads too (evictions, overlays cached after synthesis).
        if self.syncer is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self.syncer.report_soon.set)

    async def _adopt_vm_driver(self) -> None:
        """Build the VM driver now if VMs of an earlier run may exist, so that the first
        pass can adopt or stop them."""
        state = self.settings.data_dir / "workloads" / "qemu"
        if self.settings.driver == "qemu" or not state.is_dir() or not any(state.iterdir()):
            return
        try:
            await asyncio.to_thread(self.drivers.for_kind, ComponentKind.VM)
        except DriverError as exc:
            log.warning("VMs of an earlier run cannot be managed: %s", exc)

    def _peer_host(self) -> str:
        """The address other sites reach this one at (VM handoffs listen there)."""
        host = self.settings.local_host
        return (primary_address() or "127.0.0.1") if host in ("0.0.0.0", "::", "") else host

    def _local_api_url(self) -> str:
        """The site-local API's URL as clients should call it."""
        assert self.local_api is not None
        host = self.settings.local_host
        if host in ("0.0.0.0", "::", ""):
            host = primary_address() or "127.0.0.1"
        scheme = "http" if self.tls is None else "https"
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{self.local_api.port}"

    def _local_names(self) -> list[str]:
        """What the site-local API's certificate names: the address clients are given
        first, then loopback and the configured extras."""
        url_host = self._local_api_url().split("://", 1)[1].rsplit(":", 1)[0].strip("[]")
        names = [url_host, "127.0.0.1", "localhost", *self.settings.local_names]
        return list(dict.fromkeys(names))

    async def _announce(self) -> None:
        """Announce the local API under the site's name; nothing before it is known."""
        assert self.local_api is not None
        name = self.store.get_meta(SITE_NAME)
        if name is None:
            log.info("not announcing by DNS-SD before enrollment gives the site its name")
            return
        info = service_info(
            name,
            self.local_api.port,
            self.settings.local_host,
            site_id=self.store.get_meta(SITE_ID),
            version=__version__,
            scheme="http" if self.tls is None else "https",
        )
        await self.announcer.start(info)

    # -- health -------------------------------------------------------------------------

    def _sync_times(self) -> dict[str, datetime | None]:
        """When the pull and report loops last succeeded (nothing without a controller)."""
        if self.syncer is None:
            return {}
        status = self.syncer.status
        return {"pull": status.last_pull_at, "report": status.last_report_at}

    def health(self) -> dict[str, Any]:
        status = self.syncer.status if self.syncer else None
        client = self.syncer.client if self.syncer else None

        def iso(when: datetime | None) -> str | None:
            return when.isoformat() if when else None

        return {
            "status": "ok",
            "agent_version": __version__,
            "site_id": self.store.get_meta(SITE_ID),
            "site_name": self.store.get_meta(SITE_NAME),
            "enrolled": self.store.get_meta(CREDENTIAL) is not None,
            "started_at": self.started_at.isoformat(),
            "controller_reachable": status.reachable if status else None,
            "sync_revoked": status.revoked if status else False,
            "last_pull_at": iso(status.last_pull_at) if status else None,
            "last_report_at": iso(status.last_report_at) if status else None,
            "last_error": status.last_error if status else None,
            "cursor": self.store.cursor,
            "outbox_depth": outbox.depth(self.store),
            "outbox_compacted": outbox.compacted(self.store),
            "bytes_sent": client.bytes_sent if client else 0,
            "bytes_received": client.bytes_received if client else 0,
            "artifact_bytes_received": self.stager.bytes_received,
            "announced": self.announcer.announced,
            "upgrade": self.upgrader.status(),
            "client_token_keys": client_auth.held_kids(self.store),
        }

    # -- run ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set.

        Raises:
            AuthError: enrollment refused the join token.
            ConfigError: not enrolled and no join token or controller URL to enroll with.
        """
        s = self.settings
        tasks: list[asyncio.Task[None]] = []
        self._loop = asyncio.get_running_loop()
        self._stop = stop
        try:
            client = self._client()
            if client is not None:
                self.syncer = Syncer(
                    self.store,
                    client,
                    self.reconciler,
                    data_dir=s.data_dir,
                    poll_wait_s=s.poll_wait_s,
                    report_interval_s=s.report_interval_s,
                    backoff_max_s=s.backoff_max_s,
                    probe_interval_s=s.probe_interval_s,
                    reconnect_spread_s=s.reconnect_spread_s,
                    cache=self.cache,
                    on_desired=self._desired_changed,
                    outbox_cap=s.outbox_cap,
                    disk_low_at=s.disk_low_at,
                    cache_full_at=s.cache_full_at,
                )
                self.reconciler.on_change = self.syncer.report_soon.set
                self.reconciler.handoffs = HandoffRunner(
                    self.store,
                    s.data_dir / STATE_DIR,
                    client,
                    self._peer_host(),
                    direct_timeout_s=s.handoff_direct_timeout_s,
                    resume_within_s=s.handoff_resume_within_s,
                )
                syncer = self.syncer
                self.checkpoints = Checkpointer(
                    self.store,
                    s.data_dir / STATE_DIR,
                    s.data_dir / CHECKPOINT_DIR,
                    self.drivers,
                    self.reconciler.vm,
                    client,
                    reachable=lambda: syncer.status.reachable,
                )
                self.reconciler.checkpoints = self.checkpoints
            outbox.record(
                self.store,
                EventKind.AGENT_STARTED,
                data={"agent_version": __version__, "driver": self.driver.name, "pid": os.getpid()},
            )
            # Offline autonomy: local state alone decides what runs, before any network.
            await self._adopt_vm_driver()
            await self.reconciler.reconcile_once()
            self.local_api = LocalApi(
                create_app(
                    self.store,
                    self.health,
                    self.reconciler.wake,
                    self.reconciler.restart,
                    token=resolve_token(s.local_host, s.local_token, s.data_dir),
                    metrics=self.metrics.registry,
                ),
                s.local_host,
                s.local_port,
                s.data_dir,
                ssl_context=self.tls.server_context() if self.tls is not None else None,
            )
            await self.local_api.start()
            if self.syncer is not None:
                self.syncer.local_api = self._local_api_url()
                if self.tls is not None:
                    self.syncer.tls_join = TlsJoin(
                        self.tls, s.ca_file, s.ca_fingerprint, self._local_names()
                    )
            await self.upgrader.settle(self._local_api_url())
            if s.announce:
                tasks.append(asyncio.create_task(self._announce()))
            tasks.append(asyncio.create_task(self.reconciler.run(s.reconcile_interval_s, stop)))
            tasks.append(asyncio.create_task(self.stager.run(s.prestage_interval_s, stop)))
            tasks.append(
                asyncio.create_task(usage.run_usage_loop(self.store, s.usage_interval_s, stop))
            )
            if self.syncer is None:
                await stop.wait()
                return
            tasks.append(asyncio.create_task(self.upgrader.run(stop)))
            if self.checkpoints is not None:
                tasks.append(asyncio.create_task(self.checkpoints.run(stop)))
            sync_task = asyncio.create_task(self._sync(self.syncer, stop))
            tasks.append(sync_task)
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({stopper, sync_task}, return_when="FIRST_COMPLETED")
            stopper.cancel()
            if sync_task.done() and (exc := sync_task.exception()) is not None:
                raise exc
            await stop.wait()
        finally:
            stop.set()
            await self._shutdown(tasks)

    def _client(self) -> ControllerClient | None:
        url = self.settings.controller_url or self.store.get_meta(CONTROLLER_URL)
        credential = self.store.get_meta(CREDENTIAL)
        if url is None:
            if credential is None:
                raise ConfigError(
                    "this agent is not enrolled: give a controller URL and a join token"
                )
            log.warning("no controller URL known; running from local state only")
            return None
        if credential is None and not self.settings.join_token:
            raise ConfigError("this agent is not enrolled: give it a join token (--join)")
        if self.tls is not None and any(u.startswith("http:") for u in controller_urls(url)):
            raise ConfigError(
                f"the controller URL {url} is plain HTTP: give its https:// URL, or run "
                "--insecure (development only)"
            )
        return ControllerClient(
            url,
            credential=credential,
            link_dead_after_s=self.settings.link_dead_after_s,
            verify=self.verify,
        )

    async def _sync(self, syncer: Syncer, stop: asyncio.Event) -> None:
        s = self.settings
        client = syncer.client
        # A site whose certificate expired (cut off past its life) joins again with a
        # new token; one that never had one (it ran --insecure before) too.
        expired = self.tls is not None and client.credential is not None and not self.tls.valid()
        if client.credential is None or (expired and s.join_token):
            assert s.join_token is not None  # checked in _client
            if not await syncer.enroll(s.join_token, stop):
                return
            self.stager.wake.set()
            if s.announce:  # now under the site's own name
                await self._announce()
        elif expired:
            log.warning(
                "the site certificate has expired or is missing: the controller will refuse "
                "this site until it re-joins with a new token (--join)"
            )
        elif s.join_token:
            log.info(
                "already enrolled as %s; ignoring the join token", self.store.get_meta(SITE_NAME)
            )
        async with asyncio.TaskGroup() as group:
            group.create_task(syncer.pull_loop(stop))
            group.create_task(syncer.report_loop(stop))
            group.create_task(syncer.probe_loop(stop))
            if syncer.tls_join is not None:
                group.create_task(
                    renew_loop(
                        syncer.tls_join, client, s.renew_at, stop, backoff_max_s=s.backoff_max_s
                    )
                )

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        keep = (
            self.settings.keep_workloads
            or self.exit_code == EXIT_SWITCH
            or self.upgrader.trial is not None
        )
        try:
            await self.reconciler.shutdown(keep)
            usage.flush(self.store)
        except Exception:
            log.exception("stopping instances at exit failed")
        syncer = self.syncer
        if syncer is not None and not syncer.status.revoked and syncer.client.credential:
            try:
                await asyncio.wait_for(syncer.report_once(), FINAL_REPORT_S)
            except Exception as exc:  # best effort: the outbox keeps what was not sent
                log.info("final report not delivered (%s); it will go at next start", exc)
        if syncer is not None:
            await syncer.client.aclose()
        await self.stager.aclose()
        await self.announcer.stop()
        if self.local_api is not None:
            await self.local_api.stop()
        for driver in self.drivers.built():
            try:
                await asyncio.to_thread(driver.close, keep)
            except Exception:
                log.exception("closing the %s driver failed", driver.name)


async def run_agent(
    settings: AgentSettings,
    *,
    stop: asyncio.Event | None = None,
    driver: ComputeDriver | None = None,
    supervised: bool = False,
) -> int:
    """Run the site agent until ``stop`` is set (or SIGTERM/SIGINT when ``stop`` is None).

    Args:
        settings: the agent's settings, loaded once by the caller.
        stop: set it to stop the agent. When None, the agent installs SIGTERM and
            SIGINT handlers (main thread only) that stop it; a caller passing its own
            event owns signal handling.
        driver: a ready compute driver (tests); default: built from ``settings.driver``.
            The agent closes it on exit either way.
        supervised: a supervisor runs this agent (``cloudlet agent supervise``), so it
            may stop to restart into another install.

    Returns:
        The process's exit code: 0, or EXIT_SWITCH when the agent stopped for the
        supervisor to start a staged install.

    Raises:
        AuthError: the controller refused the join token (unknown, used or expired).
        ConfigError: not enrolled and nothing to enroll with; the store cannot be
            opened; the local API address cannot be bound.
        DriverError: the compute driver cannot be built (unknown name, unavailable
            backend, state directory held by another agent).
    """
    loop = asyncio.get_running_loop()
    own_signals = stop is None and threading.current_thread() is threading.main_thread()
    stop = stop or asyncio.Event()
    store = await asyncio.to_thread(Store.open, settings.data_dir / STORE_FILE)
    try:
        if driver is None:
            driver = await asyncio.to_thread(make_driver, settings)
        if own_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
        agent = Agent(settings, store, driver, supervised=supervised)
        try:
            await agent.run(stop)
        finally:
            if own_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
    finally:
        store.close()
    return agent.exit_code
