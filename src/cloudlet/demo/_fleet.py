"""The demo's processes: a controller, and per site a relay (its WAN link) and an agent.

Every agent reaches the controller through its own :class:`RelayThread`, so one
site can be cut off while the others keep talking. Stopping is ordered and
idempotent: agents first (they stop their workloads), then relays, then the
controller; anything still running from the demo's directory afterwards is
killed and reported, since it would be a leak.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil

from cloudlet.demo._plan import AGENT_CONFIG, SiteSpec
from cloudlet.errors import CloudletError
from cloudlet.testbed.local import LocalAgent, LocalController, Proc
from cloudlet.testbed.relay import RelayThread

#: How long an agent may take to stop its workloads and send its last report.
AGENT_STOP_S = 15.0
#: How long a site must stay back online before its site.offline alarm clears,
#: shortened from the default as the offline grace is, so the demo shows the clear.
ALARM_CLEAR_HOLD_S = 3.0


def _agent_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDLET_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class DemoAgent(LocalAgent):
    """A :class:`LocalAgent` started with a settings file (quick usage and retry timings)."""

    config_file: Path | None = None

    def start(self) -> DemoAgent:
        args = [sys.executable, "-m", "cloudlet.cli"]
        if self.config_file is not None:
            args += ["--config", str(self.config_file)]
        args += [
            "agent", "run", "--controller", self.controller_url, "--data-dir", str(self.data_dir),
            "--driver", self.driver, "--report-interval", "1", "--log-level", "info",
            "--local-port", str(self.local_port),
        ]  # fmt: skip
        if self.join_token:
            args += ["--join", self.join_token]
        args += self._tls_args()
        self.proc = Proc(f"agent-{self.name}", args, self.data_dir / "agent.log", _agent_env())
        self.proc.start()
        return self


@dataclass
class Fleet:
    """Owns every process and thread the demo starts under ``root``."""

    root: Path
    offline_grace_s: float
    alarm_clear_hold_s: float = ALARM_CLEAR_HOLD_S
    controller: LocalController | None = None
    relays: dict[str, RelayThread] = field(default_factory=dict)
    agents: dict[str, DemoAgent] = field(default_factory=dict)
    _api: httpx.Client | None = None

    def start_controller(self, attempts: int = 3) -> LocalController:
        """Start the controller on a free port, trying another if that one was taken meanwhile."""
        for attempt in range(attempts):
            self.controller = LocalController(
                self.root / "controller",
                offline_grace_s=self.offline_grace_s,
                env={"CLOUDLET_CONTROLLER__ALARMS__CLEAR_HOLD_S": str(self.alarm_clear_hold_s)},
            )
            try:
                return self.controller.start()
            except CloudletError as exc:
                self.controller.stop()
                if "address already in use" not in str(exc).lower() or attempt == attempts - 1:
                    raise
        raise CloudletError(f"no free port for the controller after {attempts} attempts")

    @property
    def api(self) -> httpx.Client:
        """An authenticated client for the controller's API."""
        assert self.controller is not None, "start the controller first"
        if self._api is None:
            self._api = self.controller.client()
        return self._api

    def add_site(self, spec: SiteSpec) -> DemoAgent:
        """Register the site, give it a relay to the controller and start its agent."""
        assert self.controller is not None, "start the controller first"
        resp = self.api.post("/v1/sites", json=spec.body())
        resp.raise_for_status()
        token = resp.json()["join_token"]["token"]
        target = urlsplit(self.controller.url)
        relay = RelayThread(
            target.hostname or "127.0.0.1",
            target.port or 80,
            delay_ms=spec.link_delay_ms,
            name=spec.name,
        )
        self.relays[spec.name] = relay.start()
        data_dir = self.root / "sites" / spec.name
        data_dir.mkdir(parents=True, exist_ok=True)
        config = data_dir / "agent.toml"
        config.write_text(AGENT_CONFIG)
        # The relay passes TLS through untouched: the agent talks HTTPS to the controller.
        scheme = "http" if self.controller.insecure else "https"
        url = relay.url.replace("http://", f"{scheme}://", 1)
        agent = DemoAgent(spec.name, data_dir, url, token, config_file=config)
        self.agents[spec.name] = agent.start()
        return agent

    def dead_agents(self) -> list[str]:
        return [name for name, a in self.agents.items() if a.proc is not None and not a.proc.alive]

    def stop(self) -> list[str]:
        """Stop everything; return a line per process that had to be killed afterwards."""
        if self._api is not None:
            self._api.close()
            self._api = None
        # Signal every agent first so that they stop their workloads in parallel.
        for agent in self.agents.values():
            if agent.proc is not None and agent.proc.popen is not None and agent.proc.alive:
                with contextlib.suppress(OSError):
                    agent.proc.popen.send_signal(signal.SIGTERM)
        for agent in self.agents.values():
            if agent.proc is not None and agent.proc.popen is not None:
                try:
                    agent.proc.popen.wait(AGENT_STOP_S)
                except subprocess.TimeoutExpired:
                    agent.proc.kill()
        for relay in self.relays.values():
            with contextlib.suppress(Exception):
                relay.stop()
        if self.controller is not None:
            with contextlib.suppress(Exception):
                self.controller.stop()
        return sweep(self.root)


def _belongs_to(proc: psutil.Process, root: str) -> bool:
    try:
        if any(root in arg for arg in proc.cmdline()):
            return True
        return proc.cwd().startswith(root)
    except (psutil.Error, OSError):
        return False


def sweep(root: Path) -> list[str]:
    """Kill processes whose command line or working directory lies under ``root``."""
    prefix = str(root.resolve())
    found = [p for p in psutil.process_iter() if p.pid != os.getpid() and _belongs_to(p, prefix)]
    lines = []
    for proc in found:
        with contextlib.suppress(psutil.Error):
            lines.append(f"pid {proc.pid}: {' '.join(proc.cmdline())[:120]}")
            proc.kill()
    psutil.wait_procs(found, timeout=5)
    return lines
