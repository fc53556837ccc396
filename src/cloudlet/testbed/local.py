"""Real controller and agent processes on loopback, for the demo, tests and benches."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from cloudlet.compute.ports import free_port
from cloudlet.errors import CloudletError


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``check`` until it returns something truthy; raise with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # the thing is not up yet
            last_exc = exc
        time.sleep(interval)
    raise CloudletError(f"timed out after {timeout:g}s waiting for {what} (last error: {last_exc})")


@dataclass
class Proc:
    """One child process with its log file; stopping it is idempotent."""

    name: str
    args: list[str]
    log_path: Path
    env: dict[str, str]
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        log.close()
        return self

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash would: no cleanup runs."""
        self.stop(signal.SIGKILL)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _cli(*args: str, netns: str | None = None) -> list[str]:
    """The command line of ``cloudlet ARGS``, inside network namespace ``netns`` if given
    (``ip netns exec`` execs it, so the process's pid is the cloudlet process's)."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return [*prefix, sys.executable, "-m", "cloudlet.cli", *args]


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDLET_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@dataclass
class LocalController:
    """A controller process on a free loopback port with its own data directory."""

    data_dir: Path
    database_url: str | None = None
    offline_grace_s: float = 30.0
    port: int = field(default_factory=free_port)
    proc: Proc | None = None
    #: Address to listen on, and the one clients use.
    host: str = "127.0.0.1"
    #: Network namespace to run in (None: this one).
    netns: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    #: Plain HTTP (``--insecure``) instead of HTTPS with its own CA.
    insecure: bool = False

    @property
    def url(self) -> str:
        return f"{'http' if self.insecure else 'https'}://{self.host}:{self.port}"

    @property
    def token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    @property
    def ca_file(self) -> Path:
        """The controller's CA certificate: another replica's (``ca_env``) or its own,
        made at its first start."""
        given = self.env.get("CLOUDLET_CONTROLLER__TLS__CA_CERT_FILE")
        return Path(given) if given else self.data_dir / "ca.crt"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What an httpx client verifies this controller with: its CA."""
        return True if self.insecure else ssl.create_default_context(cafile=self.ca_file)

    def ca_env(self) -> dict[str, str]:
        """Environment giving another replica this controller's CA (start this one first)."""
        return {
            "CLOUDLET_CONTROLLER__TLS__CA_CERT_FILE": str(self.ca_file),
            "CLOUDLET_CONTROLLER__TLS__CA_KEY_FILE": str(self.data_dir / "ca.key"),
        }

    def cli_env(self) -> dict[str, str]:
        """Environment for ``cloudlet`` commands talking to this controller."""
        return {"CLOUDLET_URL": self.url, "CLOUDLET_CA_FILE": str(self.ca_file)}

    def start(self, timeout: float = 60.0) -> LocalController:
        args = _cli(
            "controller", "serve", "--port", str(self.port), "--data-dir", str(self.data_dir),
            "--offline-grace", str(self.offline_grace_s), "--log-level", "warning",
            "--host", self.host, netns=self.netns,
        )  # fmt: skip
        if self.database_url:
            args += ["--database-url", self.database_url]
        if self.insecure:
            args.append("--insecure")
        log = self.data_dir / "controller.log"
        # Any free port for the handoff relay: many controllers share a test machine.
        env = {"CLOUDLET_CONTROLLER__MOBILITY__RELAY_PORT": "0", **self.env}
        self.proc = Proc("controller", args, log, _env(env)).start()
        wait_for(self._healthy, timeout, f"controller on {self.url}\n{self.proc.log_tail()}")
        return self

    def _healthy(self) -> bool:
        if self.proc is not None and not self.proc.alive:
            raise CloudletError(f"controller exited:\n{self.proc.log_tail()}")
        answer = httpx.get(f"{self.url}/healthz", timeout=2, verify=self.verify)
        return answer.status_code == 200

    def client(self, token: str | None = None) -> httpx.Client:
        """An HTTP client sending ``token`` (default: the admin token), verifying the
        controller against its CA."""
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, verify=self.verify)

    def create_token(self, name: str, project: str, role: str) -> str:
        """A new API token, made with ``cloudlet controller token create`` as an
        operator would, on this controller's database."""
        args = _cli("controller", "token", "create", name, "--project", project, "--role", role)
        args += ["--data-dir", str(self.data_dir)]
        if self.database_url:
            args += ["--database-url", self.database_url]
        done = subprocess.run(args, capture_output=True, text=True, env=_env(), timeout=60)
        if done.returncode != 0:
            raise CloudletError(f"token create failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def kill(self) -> None:
        """SIGKILL the controller, as a crash would."""
        if self.proc is not None:
            self.proc.kill()


@dataclass
class LocalAgent:
    """An agent process for one site, with its own data directory."""

    name: str
    data_dir: Path
    controller_url: str
    join_token: str | None = None
    driver: str = "process"
    extra_args: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    #: 0: any free port (the agent writes it to data_dir/local-api.port).
    local_port: int = 0
    proc: Proc | None = None
    #: Network namespace to run in (None: this one).
    netns: str | None = None
    #: The address its local API listens on, as seen from here.
    local_host: str = "127.0.0.1"
    #: ``run``, or ``supervise`` for an agent that can upgrade (its pid is the supervisor's).
    command: str = "run"
    #: The controller's CA to trust at join; default: its fingerprint, read from the
    #: controller (the testbed plays the operator who knows it) and given to the agent.
    ca_file: Path | None = None

    @property
    def insecure(self) -> bool:
        """Plain HTTP (``--insecure``) exactly when the controller serves plain HTTP."""
        return self.controller_url.startswith("http:")

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What a client verifies the site-local API with: the CA the site stored at join
        (before join its API has a throwaway certificate: not verified)."""
        ca = self.data_dir / "tls" / "ca.crt"
        if self.insecure:
            return True
        return ssl.create_default_context(cafile=ca) if ca.exists() else False

    def _tls_args(self) -> list[str]:
        if self.insecure:
            return ["--insecure"]
        if self.ca_file is not None:
            return ["--ca-file", str(self.ca_file)]
        if (self.data_dir / "tls" / "ca.crt").exists():
            return []
        url = self.controller_url.split(",")[0]
        # verify=False: the harness reads the fingerprint it hands the agent to check.
        answer = httpx.get(f"{url}/v1/ca", verify=False, timeout=10)
        return ["--ca-fingerprint", answer.json()["fingerprint"]]

    def start(self) -> LocalAgent:
        args = _cli(
            "agent", self.command, "--controller", self.controller_url,
            "--data-dir", str(self.data_dir),
            "--driver", self.driver, "--report-interval", "1", "--log-level", "info",
            "--local-port", str(self.local_port),
            netns=self.netns,
        )  # fmt: skip
        if self.join_token:
            args += ["--join", self.join_token]
        args += self._tls_args()
        args += list(self.extra_args)
        self.proc = Proc(f"agent-{self.name}", args, self.data_dir / "agent.log", _env(self.env))
        self.proc.start()
        return self

    def local_api(self) -> str | None:
        """The site-local API's URL, once the agent has written its port."""
        try:
            port = int((self.data_dir / "local-api.port").read_text().strip())
        except (OSError, ValueError):
            return None
        return f"{'http' if self.insecure else 'https'}://{self.local_host}:{port}"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def health(self) -> dict[str, Any] | None:
        """The agent's /healthz answer, or None while it is not serving."""
        url = self.local_api()
        if url is None:
            return None
        try:
            return httpx.get(f"{url}/healthz", timeout=2, verify=self.verify).json()
        except httpx.HTTPError:
            return None
