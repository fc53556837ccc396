"""The agent against a stub controller: enrollment, offline autonomy, exactly-once events.

The agent runs in the test's event loop with the real process driver; the stub
controller runs with uvicorn in a thread on a free loopback port.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from agent_stub_controller import TOKEN, ServerThread, StubController
from zeroconf.asyncio import AsyncZeroconf

from cloudlet.agent import Store, outbox, run_agent
from cloudlet.agent.discovery import SERVICE_TYPE
from cloudlet.agent.local_api import PORT_FILE
from cloudlet.agent.store import CREDENTIAL, SITE_NAME
from cloudlet.errors import AuthError, ConfigError
from cloudlet.schemas import DesiredInstance
from cloudlet.settings import AgentSettings

pytestmark = pytest.mark.integration

HTTP_SERVER = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "$PORT"]


def settings(data_dir: Path, url: str, join_token: str | None = TOKEN) -> AgentSettings:
    return AgentSettings(
        data_dir=data_dir,
        controller_url=url,
        join_token=join_token,
        insecure=True,  # the stub controller speaks plain HTTP (TLS: fleet/test_tls.py)
        driver="process",
        poll_wait_s=1,
        report_interval_s=0.2,
        reconcile_interval_s=0.2,
        usage_interval_s=0.2,
        backoff_max_s=0.2,
        local_port=0,
    )


def web_instance() -> DesiredInstance:
    return DesiredInstance.model_validate(
        {
            "id": "inst1",
            "name": "web-1",
            "app": "web",
            "project": "admin",
            "desired_state": "running",
            "components": [{"command": HTTP_SERVER}],
            "resources": {},
            "revision": 0,
        }
    )


async def until(check: Callable[[], Awaitable[bool]], what: str, tries: int = 400) -> None:
    """Poll ``check`` a bounded number of times (not a timing assertion)."""
    for _ in range(tries):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


class LocalApi:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    async def get(self, path: str) -> Any:
        port = int((self.data_dir / PORT_FILE).read_text())
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            response = await client.get(path)
            response.raise_for_status()
            return response.json()

    async def ready(self) -> bool:
        return (self.data_dir / PORT_FILE).exists()


def test_bad_join_token_is_one_auth_error(tmp_path: Path) -> None:
    stub = StubController()
    with (
        ServerThread(stub.app) as server,
        pytest.raises(AuthError, match="401 to POST /v1/agent/enroll: unknown, used or expired"),
    ):
        asyncio.run(asyncio.wait_for(run_agent(settings(tmp_path, server.url, "wrong-token")), 30))
    assert not (tmp_path / PORT_FILE).exists()


def test_offline_events_are_delivered_exactly_once(tmp_path: Path) -> None:
    stub = StubController()
    stub.set_instance(web_instance())
    api = LocalApi(tmp_path)

    async def main() -> None:
        stop = asyncio.Event()
        agent = asyncio.create_task(run_agent(settings(tmp_path, server.url), stop=stop))

        async def reported_running() -> bool:
            return any(i["state"] == "running" for i in stub.last_instances or [])

        await until(reported_running, "the instance reported running")
        assert stub.enrolled == 1
        await until(api.ready, "the local API port file")
        [inst] = await api.get("/v1/local/instances")
        assert inst["state"] == "running"
        async with httpx.AsyncClient() as client:  # the workload really serves
            assert (await client.get(f"http://{inst['endpoint']}/")).status_code == 200

        # The link goes down: the instance keeps running, events pile up locally.
        stub.offline = True

        async def offline_with_backlog() -> bool:
            health = await api.get("/healthz")
            return health["controller_reachable"] is False and health["outbox_depth"] >= 5

        await until(offline_with_backlog, "offline with a backlog of events")
        assert (await api.get("/v1/local/instances"))[0]["state"] == "running"
        health = await api.get("/healthz")
        assert health["last_pull_at"] and health["last_report_at"] and health["cursor"] == 1
        assert health["bytes_sent"] > 0 and health["bytes_received"] > 0
        backlog_top = max(stub.received_seqs) + (await api.get("/healthz"))["outbox_depth"]

        # The link returns, but the first answer is lost after the events were stored.
        stub.drop_next_report = True
        stub.offline = False

        async def caught_up() -> bool:
            return stub.dropped == 1 and stub.acked_seq >= backlog_top

        await until(caught_up, "the backlog delivered after the lost answer")
        stop.set()
        await asyncio.wait_for(agent, 30)

    with ServerThread(stub.app) as server:
        asyncio.run(main())

    # Everything the agent recorded reached the controller, under distinct seqs ...
    store = Store.open(tmp_path / "agent.db")
    assert outbox.depth(store) == 0  # the final report at exit went through
    assert store.get_meta(CREDENTIAL) and store.get_meta(SITE_NAME) == "edge-1"
    top = int(store.get_meta("next_seq") or 0) - 1
    store.close()
    assert sorted(stub.events) == list(range(1, top + 1))
    # ... some of them twice on the wire (the lost answer), stored once each.
    assert len(stub.received_seqs) > len(stub.events)
    # Usage intervals are back to back: no instance-second counted twice or lost.
    usage = sorted(
        (e for e in stub.events.values() if e["kind"] == "usage"), key=lambda e: e["data"]["start"]
    )
    assert len(usage) >= 5
    for a, b in itertools.pairwise(usage):
        assert a["data"]["end"] == b["data"]["start"]
    kinds = [e["kind"] for e in stub.events.values()]
    assert kinds.count("agent.started") == 1
    states = [e["data"]["state"] for e in stub.events.values() if e["kind"] == "instance.state"]
    assert states == ["pending", "starting", "running", "stopping", "stopped"]


def test_restart_offline_runs_from_local_state(tmp_path: Path) -> None:
    stub = StubController()
    stub.set_instance(web_instance())
    api = LocalApi(tmp_path)

    async def first_run() -> None:
        stop = asyncio.Event()
        agent = asyncio.create_task(run_agent(settings(tmp_path, server.url), stop=stop))

        async def running() -> bool:
            return any(i["state"] == "running" for i in stub.last_instances or [])

        await until(running, "the instance reported running")
        stop.set()
        await asyncio.wait_for(agent, 30)

    async def second_run() -> None:
        # No join token, controller down: the agent starts what it holds anyway.
        stop = asyncio.Event()
        agent = asyncio.create_task(run_agent(settings(tmp_path, server.url, None), stop=stop))

        async def running_locally() -> bool:
            if not await api.ready():
                return False
            instances = await api.get("/v1/local/instances")
            return bool(instances) and instances[0]["state"] == "running"

        await until(running_locally, "the instance running again from local state")
        health = await api.get("/healthz")
        assert health["enrolled"] and health["site_name"] == "edge-1"
        assert health["cursor"] == 1
        stop.set()
        await asyncio.wait_for(agent, 30)

    with ServerThread(stub.app) as server:
        asyncio.run(first_run())
        stub.offline = True
        asyncio.run(second_run())
    assert stub.enrolled == 1


def test_refused_credential_pauses_sync_but_not_workloads(tmp_path: Path) -> None:
    stub = StubController()
    stub.set_instance(web_instance())
    api = LocalApi(tmp_path)

    async def main() -> None:
        stop = asyncio.Event()
        agent = asyncio.create_task(run_agent(settings(tmp_path, server.url), stop=stop))

        async def running() -> bool:
            return any(i["state"] == "running" for i in stub.last_instances or [])

        await until(running, "the instance reported running")
        stub.revoked = True

        async def revoked() -> bool:
            return (await api.get("/healthz"))["sync_revoked"] is True

        await until(revoked, "sync stopped on 401")
        assert (await api.get("/v1/local/instances"))[0]["state"] == "running"
        assert not agent.done()

        # The refusal was transient: the agent's slow probe finds the credential good.
        stub.revoked = False

        async def resumed() -> bool:
            return (await api.get("/healthz"))["sync_revoked"] is False

        await until(resumed, "sync resumed once the credential is accepted again")
        stop.set()
        await asyncio.wait_for(agent, 30)

    with ServerThread(stub.app) as server:
        asyncio.run(main())


def test_kept_workloads_are_adopted_by_the_next_agent(tmp_path: Path) -> None:
    stub = StubController()
    stub.set_instance(web_instance())
    api = LocalApi(tmp_path)

    async def run_once(keep: bool, *, expect_reported: bool) -> str:
        cfg = settings(tmp_path, server.url).model_copy(update={"keep_workloads": keep})
        stop = asyncio.Event()
        agent = asyncio.create_task(run_agent(cfg, stop=stop))

        async def serving() -> bool:
            if expect_reported and not any(
                i["state"] == "running" for i in stub.last_instances or []
            ):
                return False
            if not await api.ready():
                return False
            instances = await api.get("/v1/local/instances")
            return bool(instances) and instances[0]["state"] == "running"

        await until(serving, "the instance serving")
        [inst] = await api.get("/v1/local/instances")
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://{inst['endpoint']}/")).status_code == 200
        stop.set()
        await asyncio.wait_for(agent, 30)
        return str(inst["endpoint"])

    with ServerThread(stub.app) as server:
        first = asyncio.run(run_once(True, expect_reported=True))
        stub.offline = True  # the second agent adopts with no controller at all
        second = asyncio.run(run_once(False, expect_reported=False))
    assert first == second

    store = Store.open(tmp_path / "agent.db")
    left = outbox.pending(store, 1000)
    store.close()
    # Adoption is silent: the only transitions after the restart are the final stop.
    states = [e.data["state"] for e in left if e.kind.value == "instance.state"]
    assert states == ["stopping", "stopped"]
    assert [e.kind.value for e in left].count("agent.started") == 1


def test_sigterm_stops_workloads_and_flushes_a_final_report(tmp_path: Path) -> None:
    stub = StubController()
    stub.set_instance(web_instance())
    cfg = settings(tmp_path, "URL")
    code = (
        "import asyncio, sys\n"
        "from cloudlet.agent import run_agent\n"
        "from cloudlet.settings import AgentSettings\n"
        "asyncio.run(run_agent(AgentSettings.model_validate_json(sys.argv[1])))\n"
    )

    async def main() -> None:
        cfg.controller_url = server.url
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, cfg.model_dump_json(), stderr=asyncio.subprocess.PIPE
        )
        try:

            async def running() -> bool:
                return any(i["state"] == "running" for i in stub.last_instances or [])

            await until(running, "the instance reported running")
            endpoint = stub.last_instances[0]["endpoint"]  # type: ignore[index]
            proc.terminate()
            _, stderr = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, stderr.decode()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        # The final report told the controller; no workload outlived the agent.
        assert [i["state"] for i in stub.last_instances or []] == ["stopped"]
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://{endpoint}/")

    with ServerThread(stub.app) as server:
        asyncio.run(main())


def test_local_port_in_use_is_one_config_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cfg = settings(tmp_path, "http://127.0.0.1:9").model_copy(
            update={"local_port": taken.getsockname()[1], "driver": "fake"}
        )
        with pytest.raises(ConfigError, match="cannot serve the site-local API"):
            asyncio.run(asyncio.wait_for(run_agent(cfg), 30))


def test_dns_sd_announces_only_under_the_site_name(tmp_path: Path) -> None:
    """Before enrollment the agent serves its local API but announces nothing (a
    stand-in host name would be cached by clients); enrolled, it announces its name."""
    stub = StubController()
    stub.offline = True  # enrollment waits
    api = LocalApi(tmp_path)
    conf = settings(tmp_path, "").model_copy(update={"announce": True})

    async def main() -> None:
        stop = asyncio.Event()
        agent = asyncio.create_task(
            run_agent(conf.model_copy(update={"controller_url": server.url}), stop=stop)
        )
        await until(api.ready, "the local API port file")

        async def refused_enrollment() -> bool:
            return (await api.get("/healthz"))["controller_reachable"] is False

        await until(refused_enrollment, "a refused enrollment")
        health = await api.get("/healthz")
        assert health["site_name"] is None and health["announced"] is False
        stub.offline = False

        async def enrolled() -> bool:
            return (await api.get("/healthz"))["site_name"] == "edge-1"

        await until(enrolled, "enrolled")
        browser = AsyncZeroconf()
        try:
            found = None
            for _ in range(50):
                if (await api.get("/healthz"))["announced"]:
                    found = await browser.async_get_service_info(
                        SERVICE_TYPE, f"edge-1.{SERVICE_TYPE}", timeout=3000
                    )
                    break
                await asyncio.sleep(0.1)
            if found is None and not (await api.get("/healthz"))["announced"]:
                pytest.skip("multicast DNS does not work in this environment")
            assert found is not None
            assert found.port == int((tmp_path / PORT_FILE).read_text())
        finally:
            await browser.async_close()
            stop.set()
            await agent

    with ServerThread(stub.app) as server:
        asyncio.run(main())
