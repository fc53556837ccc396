"""The compute driver contract every backend (process, qemu, fake) implements."""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


class WorkloadState(enum.StrEnum):
    """What a driver can say about one workload."""

    ABSENT = "absent"  # the driver knows nothing of it
    CREATED = "created"  # prepared, never started or stopped since
    RUNNING = "running"
    SUSPENDED = "suspended"
    STOPPED = "stopped"  # stopped on request, or exited 0 and the policy does not restart it
    FAILED = "failed"  # exited on its own and the restart policy gave up (or is NEVER)


class RestartPolicy(enum.StrEnum):
    """What a driver does when a workload exits on its own (never after a stop).

    ALWAYS restarts after any exit, ON_FAILURE after a non-zero or unknown exit
    code, NEVER not at all; either way at most ``max_restarts`` times since the last
    start(), with a growing delay. Giving up leaves the workload FAILED; a clean exit
    that is not restarted leaves it STOPPED.
    """

    ALWAYS = "always"
    ON_FAILURE = "on-failure"
    NEVER = "never"

    def restarts_after(self, code: int | None) -> bool:
        """Whether an exit with ``code`` (None: unknown) calls for a restart."""
        return self is RestartPolicy.ALWAYS or (self is RestartPolicy.ON_FAILURE and code != 0)


def endpoint(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_endpoint(where: str) -> tuple[str, int]:
    """The inverse of :func:`endpoint`: ``(host, port)``, brackets removed.

    Raises:
        ValueError: the port is not a number.
    """
    host, _, port = where.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class WorkloadSpec:
    """Everything a driver needs to run one workload.

    ``command`` is used by the process driver; ``disk_image`` / ``memory_image``
    by VM drivers. ``port`` is the host port the agent assigned; the driver
    exposes the service there (env ``PORT`` for processes, a forward for VMs).
    """

    workload_id: str
    command: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    port: int | None = None
    guest_port: int | None = None
    vcpus: float = 1.0
    memory_mib: int = 256
    disk_image: Path | None = None
    memory_image: Path | None = None
    restart: RestartPolicy = RestartPolicy.ON_FAILURE
    max_restarts: int = 5


@dataclass(frozen=True)
class WorkloadStatus:
    """One workload as its driver sees it now.

    ``endpoint`` is ``host:port`` while RUNNING with a port. RUNNING with ``pid``
    None means a restart is pending. ``exit_code`` is the last exit's code: negative
    for a signal (-9: SIGKILL), None when unknown (e.g. a workload the driver
    adopted from an earlier agent). ``reason`` says why, in words, for humans.
    """

    workload_id: str
    state: WorkloadState
    endpoint: str | None = None
    pid: int | None = None
    restarts: int = 0
    exit_code: int | None = None
    reason: str | None = None


class ComputeDriver(abc.ABC):
    """A backend that runs workloads on this host.

    Every method is idempotent where the agent may retry it after a crash:
    creating an existing workload with the same spec succeeds, deleting a missing
    one succeeds, stopping a stopped one succeeds. Backend failures surface as
    :class:`cloudlet.errors.DriverError` subclasses with the cause chained.
    """

    name: str = "abstract"
    #: What the agent may ask of this driver beyond the basics. ``listens``: the
    #: workload itself accepts connections on its endpoint, so it is serving only once
    #: a connection there succeeds (a process binds its port some time after it starts).
    capabilities: Mapping[str, bool] = {"suspend": False, "survives_agent": False}

    @abc.abstractmethod
    def create(self, spec: WorkloadSpec) -> None:
        """Prepare a workload without starting it. A failed create leaves nothing."""

    @abc.abstractmethod
    def start(self, workload_id: str) -> WorkloadStatus:
        """Start (or restart) a created or stopped workload.

        Raises:
            WorkloadNotFoundError: it was never created.
            DriverError: the backend could not start it.
        """

    @abc.abstractmethod
    def stop(self, workload_id: str, timeout: float = 10.0) -> None:
        """Stop gracefully, then forcibly after ``timeout`` seconds. Stopping a
        stopped workload succeeds; a missing one raises WorkloadNotFoundError."""

    def suspend(self, workload_id: str) -> None:
        """Save the workload's memory and stop it, so resume() continues it."""
        raise NotImplementedError(f"{self.name} driver cannot suspend")

    def resume(self, workload_id: str) -> WorkloadStatus:
        """Continue a suspended workload."""
        raise NotImplementedError(f"{self.name} driver cannot resume")

    @abc.abstractmethod
    def delete(self, workload_id: str) -> None:
        """Stop if needed and remove every trace. Deleting a missing one succeeds."""

    @abc.abstractmethod
    def status(self, workload_id: str) -> WorkloadStatus:
        """Current state; ABSENT for an unknown workload (never raises for that)."""

    @abc.abstractmethod
    def list(self) -> list[str]:
        """Ids of every workload this driver holds."""

    @abc.abstractmethod
    def log(self, workload_id: str, tail_bytes: int = 64 * 1024) -> str:
        """The end of the workload's console or log output."""

    def close(self, keep_running: bool = False) -> None:
        """Release the driver. Unless ``keep_running``, stop every workload so the
        agent leaves no orphans behind."""
        if keep_running:
            return
        for workload_id in self.list():
            self.stop(workload_id)
