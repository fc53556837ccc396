"""The demo's story, step by step: a fleet comes up, runs two apps, loses a site and gets it back.

Each step polls the controller (and asks sites and workloads directly) every
:data:`TICK_S` seconds until its condition holds or its bounded timeout runs
out; a step that times out raises :class:`CloudletError` with one line saying
what did not happen. Watching phases last a share of ``duration_s``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx

from cloudlet.demo._alarms import cleared_line, offline_alarms, raised_line
from cloudlet.demo._checks import (
    all_answering,
    all_running,
    laggards,
    parse_time,
    problem,
    raise_for,
)
from cloudlet.demo._fleet import Fleet
from cloudlet.demo._plan import (
    CUT_SITE,
    FIRE_WATCH_APP,
    INSTANCES,
    SITES,
    WASTE_ROUTE_APP,
    app_bodies,
)
from cloudlet.demo._probe import probe_instance, probe_local_api
from cloudlet.demo._view import Display
from cloudlet.demo._world import World
from cloudlet.errors import CloudletError
from cloudlet.settings import AlarmSettings, ControllerSettings

_T = TypeVar("_T")

DEFAULT_GRACE_S = ControllerSettings.model_fields["offline_grace_s"].default
DEFAULT_CLEAR_HOLD_S = AlarmSettings.model_fields["clear_hold_s"].default

TICK_S = 0.5
ENROLL_TIMEOUT_S = 60.0
RUNNING_TIMEOUT_S = 60.0
CATCH_UP_TIMEOUT_S = 60.0
LOCAL_TIMEOUT_S = 5.0
ANSWER_TIMEOUT_S = 20.0
#: How often the narrative reports on the cut-off site.
OFFLINE_NEWS_S = 4.0
#: Time the controller may take past the grace period to give its verdict.
VERDICT_SLACK_S = 20.0


@dataclass
class Scenario:
    fleet: Fleet
    display: Display
    world: World
    duration_s: float

    def __post_init__(self) -> None:
        self._http: httpx.Client | None = None
        self.offline_instance: str | None = None
        self.local_instance: dict[str, Any] | None = None
        self.direct_answers = Counter[bool]()

    # -- plumbing -----------------------------------------------------------------------

    @property
    def http(self) -> httpx.Client:
        """Direct requests to sites (HTTPS, verified against the fleet's CA) and workloads:
        no token, and never through a proxy."""
        if self._http is None:
            assert self.fleet.controller is not None, "start the controller first"
            self._http = httpx.Client(trust_env=False, verify=self.fleet.controller.verify)
        return self._http

    def say(self, line: str) -> None:
        self.world.story.append((self.world.elapsed(), line))
        self.display.say(self.world, line)

    def phase(self, name: str) -> None:
        self.world.phase = name

    def _get(self, path: str, **params: Any) -> Any:
        resp = self.fleet.api.get(path, params=params or None)
        resp.raise_for_status()
        return resp.json()

    def tick(self) -> None:
        """Refresh the world from the controller, the relays, the sites and the workloads."""
        if dead := self.fleet.dead_agents():
            agent = self.fleet.agents[dead[0]]
            tail = agent.proc.log_tail(1) if agent.proc else ""
            raise CloudletError(f"the agent of site {dead[0]} exited: {tail}")
        w = self.world
        w.sites = self._get("/v1/sites")
        w.instances = self._get("/v1/instances")
        w.links = {name: relay.stats() for name, relay in self.fleet.relays.items()}
        for name, agent in self.fleet.agents.items():
            w.local[name], health = probe_local_api(self.http, agent.local_api())
            if health.get("sync_revoked"):
                # The agent stops syncing for good: no point waiting for it to catch up.
                raise CloudletError(
                    f"the agent of site {name} stopped syncing: the controller refused its"
                    f" credential ({health.get('last_error')})"
                )
        cut = CUT_SITE in w.links and w.links[CUT_SITE].cut
        for inst in w.instances:
            if inst["actual_state"] == "running":
                w.probes[inst["id"]] = probe = probe_instance(self.http, inst)
                if cut and inst["site"] == CUT_SITE:
                    self.direct_answers[probe.ok] += 1
        self.display.refresh(w)

    def wait(
        self,
        what: str,
        timeout: float,
        check: Callable[[], _T | None],
        why: Callable[[], str] | None = None,
    ) -> _T:
        """Tick until ``check()`` gives something truthy.

        Raises:
            CloudletError: not within ``timeout`` seconds; says ``what``, and ``why()``.
        """
        deadline = time.monotonic() + timeout
        while True:
            self.tick()
            result = check()
            if result:
                return result
            if time.monotonic() >= deadline:
                detail = f": {why()}" if why is not None else ""
                raise CloudletError(f"{what} did not happen within {timeout:g}s{detail}")
            time.sleep(TICK_S)

    def hold(self, until: float, at_least: float) -> None:
        """Keep ticking until ``until`` seconds into the demo, and for ``at_least`` seconds."""
        end = max(self.world.started + until, time.monotonic() + at_least)
        while time.monotonic() < end:
            self.tick()
            time.sleep(min(TICK_S, max(0.0, end - time.monotonic())))

    def watch_offline(self, until: float, at_least: float) -> None:
        """Hold, saying every few seconds how the cut-off site is doing."""
        end = max(self.world.started + until, time.monotonic() + at_least)
        while (left := end - time.monotonic()) > 0:
            # A short remainder joins the last slice rather than making its own line.
            self.hold(until=0, at_least=left if left < 1.5 * OFFLINE_NEWS_S else OFFLINE_NEWS_S)
            ok, total = self.direct_answers[True], sum(self.direct_answers.values())
            local = self.world.local.get(CUT_SITE)
            self.say(
                f"{CUT_SITE} still cut off: {ok}/{total} direct requests answered so far;"
                f" its own API says {local.text if local else 'nothing'}."
            )

    def site(self, name: str) -> dict[str, Any]:
        site = self.world.site(name)
        if site is None:
            raise CloudletError(f"site {name} is missing from the controller's list")
        return site

    # -- the story ----------------------------------------------------------------------

    def run(self) -> None:
        self.start_fleet()
        self.deploy()
        self.phase("steady")
        self.say("Everything runs. The demo asks each instance directly, as a nearby client would.")
        self.hold(until=0.3 * self.duration_s, at_least=3)
        self.display.checkpoint(self.world)
        cut_at = self.cut()
        self.start_locally()
        self.change_while_offline()
        self.phase("offline")
        self.watch_offline(until=0.65 * self.duration_s, at_least=4)
        before = self.offline_events(cut_at, datetime.now(UTC))
        self.say(
            f"Events {CUT_SITE} recorded since the cut that the controller has: {len(before)}"
            " (they wait in the site's outbox)."
        )
        self.display.checkpoint(self.world)
        self.restore(cut_at)
        self.phase("done")
        self.hold(until=self.duration_s, at_least=2)
        self.display.checkpoint(self.world)

    def start_fleet(self) -> None:
        self.phase("starting")
        self.say(
            f"Starting a controller in {self.fleet.root} (offline grace"
            f" {self.fleet.offline_grace_s:g}s, shortened for the demo; the default is"
            f" {DEFAULT_GRACE_S:g}s)."
        )
        ctl = self.fleet.start_controller()
        self.say(
            f"Dashboard: {ctl.url}/ui (while the demo runs); sign in with the admin token,"
            f" the contents of {ctl.data_dir / 'admin.token'}."
        )
        self.say(
            f"TLS: the controller's own CA signs its certificate and each site's ({ctl.ca_file});"
            " sites join with a CSR, then sync over mutual TLS."
        )
        for spec in SITES:
            self.fleet.add_site(spec)
            self.world.delays_ms[spec.name] = spec.link_delay_ms
            relay = self.fleet.relays[spec.name]
            self.say(
                f"Site {spec.name} ({spec.latitude:.2f}, {spec.longitude:.2f}, region"
                f" {spec.region}) registered; its agent reaches the controller through relay"
                f" :{relay.port}, the site's WAN link (+{spec.link_delay_ms:g} ms each way)."
            )
        names = [s.name for s in SITES]

        def all_online() -> bool:
            return all(self.site(n)["availability"] == "online" for n in names)

        self.wait("the three agents enrolling and coming online", ENROLL_TIMEOUT_S, all_online)
        self.say("All three agents enrolled with their one-time join tokens: sites online.")

    def deploy(self) -> None:
        self.phase("deploying")
        for body in app_bodies():
            resp = self.fleet.api.post("/v1/apps", json=body)
            raise_for(resp, f"publishing app {body['name']}")
            bound = body["latency_bound_ms"]
            self.say(
                f"App {body['name']} published: {body['labels']['use-case']}, latency bound"
                f" {bound:,} ms"
                + (f", needs {body['constraints'][0]}" if body["constraints"] else "")
            )
        for app, site, client in INSTANCES:
            request: dict[str, Any] = {"app": app}
            if site:
                request["site"] = site
            if client:
                request["client_latitude"], request["client_longitude"] = client
            resp = self.fleet.api.post("/v1/instances", json=request)
            raise_for(resp, f"creating an instance of {app}")
            inst = resp.json()
            how = "asked for" if site else f"chosen by placement for a client at {client}"
            self.say(f"Instance {inst['name']} of {app} on {inst['site']} ({how}).")
        w = self.world
        self.wait(
            "every instance reaching running",
            RUNNING_TIMEOUT_S,
            lambda: all_running(w),
            lambda: laggards(w),
        )
        self.wait(
            "every instance answering",
            ANSWER_TIMEOUT_S,
            lambda: all_answering(w),
            lambda: laggards(w),
        )
        self.say("All instances running and answering; each site started its own workloads.")

    def cut(self) -> datetime:
        self.phase("link cut")
        cut_at = datetime.now(UTC)
        self.fleet.relays[CUT_SITE].cut()
        started = time.monotonic()
        grace = self.fleet.offline_grace_s
        self.say(
            f"CUT: the link between {CUT_SITE} and the controller is down (relay.cut())."
            f" The controller will call the site offline after {grace:g}s without news."
        )
        own = [i for i in self.world.instances_at(CUT_SITE) if i["actual_state"] == "running"]

        def serving() -> bool:
            local = self.world.local.get(CUT_SITE)
            probes = [self.world.probes.get(i["id"]) for i in own]
            return bool(local and local.ok and all(p and p.ok for p in probes))

        self.wait(f"{CUT_SITE} serving while cut off", ANSWER_TIMEOUT_S, serving)
        for inst in own:
            self.say(
                f"{CUT_SITE} still serves {inst['app']}: {self.world.probes[inst['id']].text}."
            )
        self.say(f"{CUT_SITE}'s own API answers too: {self.world.local[CUT_SITE].text}.")
        self.wait(
            f"the controller marking {CUT_SITE} offline",
            grace + VERDICT_SLACK_S,
            lambda: self.site(CUT_SITE)["availability"] == "offline",
        )
        self.say(
            f"Controller: {CUT_SITE} is offline, {time.monotonic() - started:.1f}s after the cut"
            f" (grace {grace:g}s). Its instances stay where they are: the site is autonomous."
        )
        alarm = self.wait(
            f"the controller raising site.offline for {CUT_SITE}",
            VERDICT_SLACK_S,
            lambda: offline_alarms(self.fleet.api, CUT_SITE),
        )[0]
        self.say(raised_line(alarm, cut_at))
        return cut_at

    def start_locally(self) -> None:
        """A local client asks the cut-off site itself for another fire-watch."""
        url = self.fleet.agents[CUT_SITE].local_api()
        resp = self.http.post(
            f"{url}/v1/local/instances", json={"app": FIRE_WATCH_APP}, timeout=LOCAL_TIMEOUT_S
        )
        raise_for(resp, f"starting {FIRE_WATCH_APP} through {CUT_SITE}'s local API")
        inst_id = resp.json()["id"]
        started = time.monotonic()

        def running() -> dict[str, Any] | None:
            resp = self.http.get(f"{url}/v1/local/instances/{inst_id}", timeout=LOCAL_TIMEOUT_S)
            resp.raise_for_status()
            row = resp.json()
            if row["state"] == "failed":
                raise CloudletError(f"{CUT_SITE} could not start {row['name']}: {row['reason']}")
            return row if row["state"] == "running" and row.get("endpoint") else None

        row = self.wait(f"{CUT_SITE} starting an instance on its own", RUNNING_TIMEOUT_S, running)
        # Running means its process started; its server may need a moment to listen.
        probe = self.wait(
            f"{row['name']}, started offline at {CUT_SITE}, answering",
            ANSWER_TIMEOUT_S,
            lambda: (p := probe_instance(self.http, {**row, "app": FIRE_WATCH_APP})).ok and p,
        )
        self.local_instance = row
        self.say(
            f"A firefighter's tablet near {CUT_SITE} asks the site itself for another"
            f" {FIRE_WATCH_APP}: {row['name']} runs {time.monotonic() - started:.1f}s later,"
            f" without the controller, and answers: {probe.text}."
        )

    def change_while_offline(self) -> None:
        resp = self.fleet.api.post("/v1/instances", json={"app": WASTE_ROUTE_APP, "site": CUT_SITE})
        if resp.is_success:
            inst = resp.json()
            self.offline_instance = inst["id"]
            self.tick()
            lag = self.site(CUT_SITE)["revision_lag"]
            self.say(
                f"While {CUT_SITE} is offline an operator asks for {inst['name']} there: the"
                f" controller stores the desired state (revision lag {lag}) until the link returns."
            )
        else:
            detail = problem(resp)
            self.say(
                f"The controller refuses new work for {CUT_SITE} while it is offline: {detail}"
            )

    def restore(self, cut_at: datetime) -> None:
        self.phase("catching up")
        restored_at = datetime.now(UTC)
        self.fleet.relays[CUT_SITE].restore()
        started = time.monotonic()
        self.say(f"RESTORE: the link to {CUT_SITE} is back (relay.restore()).")
        self.wait(
            f"{CUT_SITE} coming back online",
            CATCH_UP_TIMEOUT_S,
            lambda: self.site(CUT_SITE)["availability"] == "online",
        )
        self.say(f"{CUT_SITE} online again after {time.monotonic() - started:.1f}s.")

        def caught_up() -> bool:
            s = self.site(CUT_SITE)
            if s["sync_status"] != "in-sync" or s["revision_lag"] != 0:
                return False
            if self.offline_instance is None:
                return True
            return all_running(self.world)

        self.wait(f"{CUT_SITE} catching up (in-sync, lag 0)", CATCH_UP_TIMEOUT_S, caught_up)
        if self.offline_instance is not None:
            self.say(f"{CUT_SITE} pulled the change made while it was away; its new instance runs.")
        if self.local_instance is not None:
            local_id = self.local_instance["id"]

            def reported() -> dict[str, Any] | None:
                found = [i for i in self.world.instances if i["id"] == local_id]
                return found[0] if found and found[0]["actual_state"] == "running" else None

            inst = self.wait(
                f"the controller learning of {self.local_instance['name']}",
                CATCH_UP_TIMEOUT_S,
                reported,
            )
            self.say(
                f"The controller now lists {inst['name']} at {inst['site']}"
                f" (origin: {inst['origin']}), started while the site was cut off."
            )
        events = self.wait(
            f"events {CUT_SITE} recorded while cut off reaching the controller",
            CATCH_UP_TIMEOUT_S,
            lambda: self.offline_events(cut_at, restored_at),
        )
        kinds = Counter(e["kind"] for e in events)
        seqs = [e["seq"] for e in events]
        if len(set(seqs)) != len(seqs):
            raise CloudletError(f"events from {CUT_SITE} were stored twice: seqs {sorted(seqs)}")
        detail = ", ".join(f"{kind} x{n}" for kind, n in sorted(kinds.items()))
        self.say(
            f"CATCH-UP: {CUT_SITE} is in-sync (lag 0) after {time.monotonic() - started:.1f}s;"
            f" the {len(events)} events it recorded while cut off arrived ({detail}),"
            f" each once (seq {min(seqs)}..{max(seqs)})."
        )
        hold = self.fleet.alarm_clear_hold_s
        alarms = self.wait(
            f"site.offline for {CUT_SITE} clearing",
            hold + VERDICT_SLACK_S,
            lambda: (found := offline_alarms(self.fleet.api, CUT_SITE))[0]["cleared_at"] and found,
        )
        self.say(cleared_line(alarms[0], hold, DEFAULT_CLEAR_HOLD_S, len(alarms)))
        ok, failed = self.direct_answers[True], self.direct_answers[False]
        self.say(
            f"Summary: {CUT_SITE} was cut off for"
            f" {(restored_at - cut_at).total_seconds():.1f}s and answered {ok} of {ok + failed}"
            " direct requests meanwhile; nothing it recorded was lost."
        )

    def offline_events(self, since: datetime, until: datetime) -> list[dict[str, Any]]:
        """Events the site itself recorded between ``since`` and ``until`` (seq > 0)."""
        rows = self._get("/v1/events", site=CUT_SITE, since=since.isoformat(), limit=10_000)
        return [e for e in rows if e["seq"] > 0 and parse_time(e["at"]) <= until]

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
