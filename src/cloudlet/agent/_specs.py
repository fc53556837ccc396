"""From desired instances to workload specs: ids, host ports, fingerprints, one driver per kind."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from cloudlet.compute import ComputeDriver, WorkloadSpec
from cloudlet.errors import DriverError
from cloudlet.schemas import Component, ComponentKind, DesiredInstance

VM_UNSUPPORTED = "vm components need the qemu driver"


def workload_id(instance_id: str, component: str) -> str:
    return f"{instance_id}-{component}"


def spec_digest(specs: Iterable[WorkloadSpec]) -> str:
    """A fingerprint of an instance's workload specs, to notice a changed definition."""
    body = json.dumps([dataclasses.asdict(s) for s in specs], sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()


def state_dir(root: Path, instance_id: str, component: str) -> Path:
    """Where a stateful component keeps what moves with its instance."""
    return root / instance_id / component


def build_spec(
    inst: DesiredInstance,
    comp: Component,
    port: int | None,
    disk_image: Path | None = None,
    state_root: Path | None = None,
) -> WorkloadSpec:
    """The driver's view of one component of one instance (``disk_image``: vm kind;
    ``state_root``: where stateful components get their state directory)."""
    env = dict(comp.env)
    env.update({"CLOUDLET_INSTANCE": inst.id, "CLOUDLET_APP": inst.app})
    if comp.stateful and state_root is not None:
        path = state_dir(state_root, inst.id, comp.name)
        path.mkdir(parents=True, exist_ok=True)
        env["CLOUDLET_STATE_DIR"] = str(path)
    command = list(comp.command)
    if port is not None:
        env["PORT"] = str(port)
        command = [a.replace("${PORT}", str(port)).replace("$PORT", str(port)) for a in command]
    return WorkloadSpec(
        workload_id=workload_id(inst.id, comp.name),
        command=tuple(command),
        env=env,
        port=port,
        guest_port=comp.guest_port,
        vcpus=inst.resources.vcpus,
        memory_mib=inst.resources.memory_mib,
        disk_image=disk_image,
    )


class DriverSet:
    """One compute driver per component kind: processes on the default driver, VMs on
    the VM driver, built on first use by ``vm_factory``.

    Without a factory, VMs go to the default driver if it declares the ``vm``
    capability (or is the qemu driver itself).
    """

    def __init__(
        self, default: ComputeDriver, vm_factory: Callable[[], ComputeDriver] | None = None
    ) -> None:
        self.default = default
        self._vm_factory = vm_factory
        self._vm: ComputeDriver | None = None
        self._lock = threading.Lock()  # built at most once, from any thread

    def _default_runs_vms(self) -> bool:
        return self.default.name == "qemu" or bool(self.default.capabilities.get("vm", False))

    def for_kind(self, kind: ComponentKind) -> ComputeDriver:
        """The driver for ``kind``.

        Raises:
            DriverError: no driver here runs VMs (``VM_UNSUPPORTED``), or building the
                VM driver failed (its own message: e.g. QEMU is not installed).
        """
        if kind is not ComponentKind.VM or self._default_runs_vms():
            return self.default
        with self._lock:
            if self._vm is None:
                if self._vm_factory is None:
                    raise DriverError(VM_UNSUPPORTED)
                self._vm = self._vm_factory()
            return self._vm

    def built(self) -> list[ComputeDriver]:
        """Every driver in use so far (the default first)."""
        return [self.default] + ([self._vm] if self._vm is not None else [])
