"""An emulated WAN: a controller namespace and N site namespaces, each link shaped and cuttable.

Layout (root only; ``ip``, ``tc`` and ``nft`` must be installed)::

    this namespace (operator, local clients, probes)
      │ 10.215.0.1 ── mgmt ── 10.215.0.2  <prefix>-ctl: `cloudlet controller serve` on 0.0.0.0,
      │                                    and per site a relay on 10.214.<i>.1 (delay, stall,
      │                                    reset) forwarding to the controller
      │                                       │ w<i> ── wan ── (tc tbf, nftables cut)
      └ 10.216.<i>.1 ── lan ── 10.216.<i>.2  <prefix>-s<i>: `cloudlet agent run`, 10.214.<i>.2

A site's agent reaches the controller only over its ``wan`` veth and through its
relay; its local API and its workloads listen on the ``lan`` address, which the
testbed's own namespace reaches directly, as a local client on the site's LAN would.
A cut (:meth:`WanSite.cut`) drops every packet on ``wan`` both ways: TCP sees silence.
The controller's handoff relay listens on every address of its namespace.

Sites do not reach each other unless asked: :meth:`Wan.interconnect` routes each
site's traffic for the others through the controller's namespace (the internet
between them), and :meth:`Wan.part_sites` drops what that namespace would forward
from site to site (a firewall, NAT), while both still reach the controller.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from cloudlet.errors import CloudletError
from cloudlet.testbed import netns
from cloudlet.testbed.local import LocalAgent, LocalController, wait_for
from cloudlet.testbed.relay import RelayThread

__all__ = ["AGENT_ENV", "HELLO_APP", "Wan", "WanSite", "hello_app"]

#: Agent settings for the testbed: short intervals so that scenarios stay short.
AGENT_ENV = {
    "CLOUDLET_AGENT__ANNOUNCE": "false",
    "CLOUDLET_AGENT__POLL_WAIT_S": "5",
    "CLOUDLET_AGENT__BACKOFF_MAX_S": "2",
    "CLOUDLET_AGENT__RECONCILE_INTERVAL_S": "1",
    "CLOUDLET_AGENT__USAGE_INTERVAL_S": "1",
    "CLOUDLET_AGENT__PRESTAGE_INTERVAL_S": "2",
    # A cut link is noticed within 3 s; a restored one is found by a probe every
    # 0.25-0.75 s, and a few dozen sites spread their return over 0.2 s.
    "CLOUDLET_AGENT__LINK_DEAD_AFTER_S": "3",
    "CLOUDLET_AGENT__PROBE_INTERVAL_S": "0.5",
    "CLOUDLET_AGENT__RECONNECT_SPREAD_S": "0.2",
}
MAX_SITES = 250
#: The nftables table in the controller's namespace that parts sites from each other.
_PART_TABLE = "cloudlet_part"
#: The app :func:`hello_app` defines.
HELLO_APP = "hello"
HELLO_PAGE = "hello from the edge"


def hello_app(directory: Path) -> dict[str, Any]:
    """An app definition (``POST /v1/apps`` body): a tiny HTTP server on every address
    of its site, its script written into ``directory``."""
    script = directory / "hello.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import http.server, os
            class H(http.server.BaseHTTPRequestHandler):
                def do_GET(self):
                    body = {HELLO_PAGE!r}.encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                def log_message(self, *args):
                    pass
            http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
            """
        )
    )
    return {
        "name": HELLO_APP,
        "components": [{"name": "main", "command": [sys.executable, str(script)]}],
        "resources": {"vcpus": 0.01, "memory_mib": 16, "disk_gib": 0.01},
        "latency_bound_ms": 50,
    }


@dataclass
class WanSite:
    """One site: its namespace, its link (veth, shaping, relay, cut) and its agent."""

    index: int
    name: str
    ns: str
    relay: RelayThread
    agent: LocalAgent
    rate_mbit: float | None = None
    is_cut: bool = False

    @property
    def lan_addr(self) -> str:
        return f"10.216.{self.index}.2"

    @property
    def relay_addr(self) -> str:
        return f"10.214.{self.index}.1"

    def cut(self) -> None:
        """Blackhole the WAN link (nftables drop both ways on the site's ``wan``)."""
        netns.cut(self.ns, "wan")
        self.is_cut = True

    def restore(self) -> None:
        netns.restore(self.ns)
        self.is_cut = False

    def shape(self, rate_mbit: float | None) -> None:
        """Rate-limit the link both ways (tc tbf on each end; None: unlimited)."""
        netns.shape(self.ns, "wan", rate_mbit)
        netns.shape(self.ns.rsplit("-", 1)[0] + "-ctl", f"w{self.index}", rate_mbit)
        self.rate_mbit = rate_mbit

    def power_off(self) -> int:
        """SIGKILL every process in the site's namespace (agent and workloads), as a
        power cut would; returns how many."""
        pids = [int(p) for p in netns.run("ip", "netns", "pids", self.ns).stdout.split()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.agent.proc is not None and self.agent.proc.popen is not None:
            self.agent.proc.popen.wait(10)
        deadline = time.monotonic() + 10
        while netns.run("ip", "netns", "pids", self.ns).stdout.split():
            if time.monotonic() > deadline:
                raise CloudletError(f"processes of site {self.name} survive SIGKILL")
            time.sleep(0.05)
        return len(pids)

    def local(self, timeout: float = 5.0) -> httpx.Client:
        """A client of the site-local API (over the LAN: works while the WAN is cut)."""
        url = self.agent.local_api()
        if url is None:
            raise CloudletError(f"site {self.name} has no local API yet")
        # Beyond loopback, changing instances needs the token the agent made.
        token_file = self.agent.data_dir / "local-api.token"
        headers = (
            {"Authorization": f"Bearer {token_file.read_text().strip()}"}
            if token_file.exists()
            else {}
        )
        return httpx.Client(base_url=url, timeout=timeout, headers=headers)


@dataclass
class Wan:
    """The controller and its sites. A context manager; :meth:`close` is idempotent.

    Args:
        root: directory for every data dir and log.
        prefix: namespace and device name prefix (keep it short: device names are
            at most 15 characters).
        offline_grace_s: the controller's offline verdict delay.
    """

    root: Path
    prefix: str = "clwan"
    offline_grace_s: float = 5.0
    agent_env: dict[str, str] = field(default_factory=dict)
    sites: dict[str, WanSite] = field(default_factory=dict)
    controller: LocalController | None = None
    _namespaces: list[str] = field(default_factory=list)
    _ctl_pool: ThreadPoolExecutor | None = None
    _api: httpx.Client | None = None

    @property
    def ctl_ns(self) -> str:
        return f"{self.prefix}-ctl"

    def __enter__(self) -> Wan:
        atexit.register(self.close)
        try:
            netns.add_namespace(self.ctl_ns)
            self._namespaces.append(self.ctl_ns)
            netns.add_veth(
                (None, f"{self.prefix}m", "10.215.0.1"), (self.ctl_ns, "mgmt", "10.215.0.2")
            )
            self._ctl_pool = netns.executor(self.ctl_ns)
            self.controller = LocalController(
                self.root / "ctl", offline_grace_s=self.offline_grace_s,
                host="10.215.0.2", netns=self.ctl_ns,
                # The relay where sites meet: on the address each reaches this namespace at.
                env={"CLOUDLET_CONTROLLER__MOBILITY__RELAY_HOST": "0.0.0.0"},
                # Plain HTTP: sites reach the controller through their link relays, at
                # addresses its certificate does not name, and this bed measures links
                # and partitions, not TLS (tested in tests/integration/fleet/test_tls.py).
                insecure=True,
            )  # fmt: skip
            self.controller.start()
        except BaseException:
            self.close()
            raise
        return self

    @property
    def api(self) -> httpx.Client:
        """The operator's client of the controller (admin token)."""
        assert self.controller is not None
        if self._api is None:
            self._api = self.controller.client()
        return self._api

    # -- sites --------------------------------------------------------------------------

    def add_site(
        self,
        name: str,
        *,
        rate_mbit: float | None = None,
        delay_ms: float = 0.0,
        env: dict[str, str] | None = None,
        start: bool = True,
        data_dir: Path | None = None,
    ) -> WanSite:
        """Register site ``name`` at the controller, build its namespace and link, and
        (unless ``start`` is False) start its agent, which enrolls over the WAN."""
        assert self.controller is not None and self._ctl_pool is not None
        index = len(self.sites) + 1
        if index > MAX_SITES:
            raise CloudletError(f"the testbed holds at most {MAX_SITES} sites")
        ns = f"{self.prefix}-s{index}"
        netns.add_namespace(ns)
        self._namespaces.append(ns)
        netns.add_veth(
            (self.ctl_ns, f"w{index}", f"10.214.{index}.1"), (ns, "wan", f"10.214.{index}.2")
        )
        netns.add_veth(
            (None, f"{self.prefix}l{index}", f"10.216.{index}.1"), (ns, "lan", f"10.216.{index}.2")
        )
        relay = RelayThread(
            "10.215.0.2", self.controller.port, listen_host=f"10.214.{index}.1",
            delay_ms=delay_ms, name=f"relay-{name}",
        )  # fmt: skip
        # Started from a thread in the controller's namespace, the relay's own thread
        # and its sockets live there.
        self._ctl_pool.submit(relay.start).result()
        made = self.api.post("/v1/sites", json={"name": name, "latitude": 45.0, "longitude": 5.0})
        made.raise_for_status()
        lan = f"10.216.{index}.2"
        agent = LocalAgent(
            name, data_dir or self.root / name, f"http://{relay.relay.listen[0]}:{relay.port}",
            join_token=made.json()["join_token"]["token"],
            env={**AGENT_ENV, "CLOUDLET_AGENT__LOCAL_HOST": lan,
                 "CLOUDLET_AGENT__WORKLOAD_HOST": lan, **self.agent_env, **(env or {})},
            netns=ns, local_host=lan,
        )  # fmt: skip
        site = WanSite(index, name, ns, relay, agent)
        self.sites[name] = site
        if rate_mbit is not None:
            site.shape(rate_mbit)
        if start:
            agent.start()
        return site

    def site_view(self, name: str) -> dict[str, Any]:
        """The controller's view of a site (availability, revisions, sync status)."""
        response = self.api.get(f"/v1/sites/{name}")
        response.raise_for_status()
        return response.json()

    def wait_online(self, name: str, timeout: float = 60.0) -> None:
        site = self.sites[name]
        wait_for(
            lambda: self.site_view(name)["availability"] == "online",
            timeout,
            f"site {name} online\n{site.agent.proc.log_tail() if site.agent.proc else ''}",
        )

    def wait_in_sync(self, name: str, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until the agent reports the site's latest revision applied."""

        def in_sync() -> dict[str, Any] | None:
            view = self.site_view(name)
            ok = view["sync_status"] == "in-sync" and view["availability"] == "online"
            return view if ok else None

        return wait_for(in_sync, timeout, f"site {name} in sync", interval=0.05)

    def interconnect(self) -> None:
        """Let every site reach the others' LANs (and so their handoff listeners)
        through the controller's namespace, as over the internet."""
        netns.run("ip", "netns", "exec", self.ctl_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for site in self.sites.values():
            gateway = site.relay_addr
            netns.run("ip", "-n", site.ns, "route", "replace", "default", "via", gateway)
            netns.run(
                "ip", "-n", self.ctl_ns, "route", "replace", f"10.216.{site.index}.0/30",
                "via", f"10.214.{site.index}.2",
            )  # fmt: skip

    def part_sites(self) -> None:
        """Drop every packet the controller's namespace would forward from one site to
        another (both still reach the controller): TCP between sites sees silence."""
        script = (
            f"table inet {_PART_TABLE} {{\n"
            " chain forward { type filter hook forward priority -10;"
            ' iifname "w*" oifname "w*" drop; }\n'
            "}\n"
        )
        self.join_sites()
        netns.run("ip", "netns", "exec", self.ctl_ns, "nft", "-f", "-", stdin=script)

    def join_sites(self) -> None:
        """Undo :meth:`part_sites`."""
        netns.run(
            "ip", "netns", "exec", self.ctl_ns, "nft", "delete", "table", "inet", _PART_TABLE,
            check=False,
        )  # fmt: skip

    # -- controller ---------------------------------------------------------------------

    def restart_controller(self, kill: bool = True) -> None:
        """Stop the controller (SIGKILL by default) and start it again on the same port."""
        assert self.controller is not None
        if kill:
            self.controller.kill()
        else:
            self.controller.stop()
        self.controller.start()

    # -- teardown -----------------------------------------------------------------------

    def close(self) -> None:
        """Stop agents, relays and controller; delete every namespace. Safe to repeat."""
        for site in self.sites.values():
            with contextlib.suppress(Exception):
                site.agent.stop()
            with contextlib.suppress(Exception):
                site.relay.stop()
        if self.controller is not None:
            with contextlib.suppress(Exception):
                self.controller.stop()
        if self._api is not None:
            self._api.close()
            self._api = None
        if self._ctl_pool is not None:
            self._ctl_pool.shutdown(wait=False, cancel_futures=True)
            self._ctl_pool = None
        while self._namespaces:
            netns.delete_namespace(self._namespaces.pop())

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[WanSite]:
        return iter(self.sites.values())
