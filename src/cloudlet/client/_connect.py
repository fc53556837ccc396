"""Discover, measure, pick, start or join: what ``cloudlet client connect`` does.

The controller's ``/v1/discover`` ranks sites from geography and what it knows;
the client then measures the round trip to the top few site-local APIs itself
(``GET /healthz``, best of a few tries), picks the lowest measured RTT, and asks
that site for the app: it joins an instance already running there or starts one
through the site's local API (which works offline too). Without a controller, the
candidates come from a DNS-SD browse of the LAN.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass, field

import httpx

from cloudlet.client._browse import browse_sites
from cloudlet.errors import CloudletError, ControllerUnreachableError, NotFoundError
from cloudlet.schemas import ActualInstance, ActualState
from cloudlet.schemas.mobility import Discovery


@dataclass
class Candidate:
    """A site the client may use: where it came from, its endpoint, what was measured."""

    site: str
    endpoint: str
    source: str  # "controller" or "dns-sd"
    estimated_rtt_ms: float | None = None
    measured_rtt_ms: float | None = None
    rank: int | None = None
    details: dict[str, object] = field(default_factory=dict)


@dataclass
class Connection:
    site: str
    site_api: str
    instance: str
    endpoint: str
    joined: bool = False
    measured_rtt_ms: float | None = None
    seconds: float = 0.0
    candidates: list[Candidate] = field(default_factory=list)


#: What a client verifies the controller and the site-local APIs with: a context
#: trusting the fleet's CA (``GET /v1/ca``), or True for the system's trust store.
Verify = ssl.SSLContext | bool


def probe_rtt(
    endpoint: str, tries: int = 3, timeout: float = 1.0, verify: Verify = True
) -> float | None:
    """The lowest of ``tries`` round trips (ms) to a site-local API, None if it is down
    (or its certificate does not verify)."""
    best = None
    with httpx.Client(timeout=timeout, verify=verify) as http:
        for _ in range(tries):
            t0 = time.perf_counter()
            try:
                http.get(f"{endpoint}/healthz").raise_for_status()
            except httpx.HTTPError:
                continue
            rtt = (time.perf_counter() - t0) * 1000
            best = rtt if best is None else min(best, rtt)
    return None if best is None else round(best, 3)


def discover(
    controller: str,
    app: str,
    lat: float | None,
    lon: float | None,
    timeout: float = 5.0,
    verify: Verify = True,
) -> Discovery:
    """Ask the controller which sites can serve ``app`` near ``(lat, lon)``.

    Raises:
        ControllerUnreachableError: no answer.
        NotFoundError: the controller knows no such app.
    """
    params: dict[str, str | float] = {"app": app}
    if lat is not None and lon is not None:
        params |= {"lat": lat, "lon": lon}
    try:
        answer = httpx.get(
            f"{controller.rstrip('/')}/v1/discover", params=params, timeout=timeout, verify=verify
        )
    except httpx.HTTPError as exc:
        raise ControllerUnreachableError(f"controller {controller}: {exc}") from exc
    if answer.status_code == 404:
        raise NotFoundError(f"the controller knows no app {app!r}")
    if answer.status_code >= 500:
        raise ControllerUnreachableError(f"controller {controller}: {answer.status_code}")
    answer.raise_for_status()
    return Discovery.model_validate_json(answer.content)


def candidates(
    controller: str | None,
    app: str,
    lat: float | None = None,
    lon: float | None = None,
    *,
    top: int = 3,
    browse_s: float = 2.0,
    verify: Verify = True,
) -> list[Candidate]:
    """The sites to try, measured, best measured RTT first (unreachable ones last)."""
    found: list[Candidate] = []
    if controller is not None:
        try:
            ranked = discover(controller, app, lat, lon, verify=verify)
        except ControllerUnreachableError:
            ranked = None
        if ranked is not None:
            found = [
                Candidate(
                    site=s.site,
                    endpoint=s.endpoint or "",
                    source="controller",
                    estimated_rtt_ms=s.estimated_rtt_ms,
                    rank=s.rank,
                    details=s.model_dump(mode="json"),
                )
                for s in ranked.sites
                if s.endpoint
            ][:top]
    if not found:  # no controller, or it is unreachable or knows no site: ask the LAN
        found = [
            Candidate(site=name, endpoint=url, source="dns-sd")
            for name, url in sorted(browse_sites(browse_s).items())
        ]
    for c in found:
        c.measured_rtt_ms = probe_rtt(c.endpoint, verify=verify)
    return sorted(found, key=lambda c: (c.measured_rtt_ms is None, c.measured_rtt_ms or 0))


def _running(http: httpx.Client, site_api: str, app: str) -> ActualInstance | None:
    answer = http.get(f"{site_api}/v1/local/instances")
    answer.raise_for_status()
    for item in answer.json():
        inst = ActualInstance.model_validate(item)
        if inst.app == app and inst.state is ActualState.RUNNING and inst.endpoint:
            return inst
    return None


def connect(
    controller: str | None,
    app: str,
    lat: float | None = None,
    lon: float | None = None,
    *,
    top: int = 3,
    timeout: float = 60.0,
    token: str | None = None,
    local_token: str | None = None,
    verify: Verify = True,
) -> Connection:
    """Join ``app`` at the best measured site, starting it there if it does not run.

    A site starts an app through its local API only if it holds the app's
    definition already; otherwise, given an API ``token``, the controller is asked
    to start it at that site. ``local_token`` is what the site-local API is shown: a
    client token naming ``app`` (the site checks it offline too and meters the
    instance to its project), or the site operator's site-local token. ``verify``:
    trusts the fleet's CA, which the controller and every site-local API chain to.

    Raises:
        CloudletError: no site answered, or none could start the app in time.
    """
    t0 = time.monotonic()
    found = candidates(controller, app, lat, lon, top=top, verify=verify)
    reachable = [c for c in found if c.measured_rtt_ms is not None]
    if not reachable:
        raise CloudletError(f"no cloudlet reachable for app {app!r} ({len(found)} found)")
    errors = []
    headers = {"Authorization": f"Bearer {local_token}"} if local_token else {}
    with httpx.Client(timeout=10, headers=headers, verify=verify) as http:
        for c in reachable:
            try:
                inst = _running(http, c.endpoint, app)
                joined = inst is not None
                if inst is None:
                    started = http.post(f"{c.endpoint}/v1/local/instances", json={"app": app})
                    if started.status_code == 404 and controller and token:
                        started = http.post(
                            f"{controller.rstrip('/')}/v1/instances",
                            json={
                                "app": app,
                                "site": c.site,
                                "client_latitude": lat,
                                "client_longitude": lon,
                            },
                            headers={"Authorization": f"Bearer {token}"},
                        )
                    if started.status_code == 404:
                        errors.append(f"{c.site}: holds no definition of {app!r}")
                        continue
                    started.raise_for_status()
                    inst = _wait(http, c.endpoint, started.json()["id"], t0 + timeout)
            except httpx.HTTPError as exc:
                errors.append(f"{c.site}: {exc}")
                continue
            assert inst.endpoint is not None
            return Connection(
                site=c.site,
                site_api=c.endpoint,
                instance=inst.id,
                endpoint=inst.endpoint,
                joined=joined,
                measured_rtt_ms=c.measured_rtt_ms,
                seconds=round(time.monotonic() - t0, 3),
                candidates=found,
            )
    raise CloudletError(f"no cloudlet could serve {app!r}: " + "; ".join(errors))


def _wait(http: httpx.Client, site_api: str, instance_id: str, deadline: float) -> ActualInstance:
    while True:
        answer = http.get(f"{site_api}/v1/local/instances/{instance_id}")
        if answer.status_code == 404 and time.monotonic() < deadline:
            time.sleep(0.2)  # asked of the controller: the site has not heard yet
            continue
        answer.raise_for_status()
        inst = ActualInstance.model_validate(answer.json())
        if inst.state is ActualState.RUNNING and inst.endpoint:
            return inst
        if inst.state is ActualState.FAILED:
            raise CloudletError(f"instance {inst.name} failed at the site: {inst.reason}")
        if time.monotonic() > deadline:
            raise CloudletError(f"instance {inst.name} still {inst.state} at the site")
        time.sleep(0.2)
