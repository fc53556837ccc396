"""The qemu compute driver: workloads as QEMU virtual machines, KVM when it really works.

VM options the spec has no field for go in ``spec.env``: :data:`VM_KERNEL`,
:data:`VM_INITRD`, :data:`VM_APPEND`, :data:`VM_DISK_FORMAT` (see ``_config``).
"""

from __future__ import annotations

from cloudlet.compute.qemu._config import APPEND as VM_APPEND
from cloudlet.compute.qemu._config import DISK_FORMAT as VM_DISK_FORMAT
from cloudlet.compute.qemu._config import INITRD as VM_INITRD
from cloudlet.compute.qemu._config import KERNEL as VM_KERNEL
from cloudlet.compute.qemu._config import device_state_of
from cloudlet.compute.qemu._driver import QEMU_HINT, QemuDriver
from cloudlet.compute.qemu._probe import KvmVerdict, kvm_verdict, probe_kvm

__all__ = [
    "QEMU_HINT",
    "VM_APPEND",
    "VM_DISK_FORMAT",
    "VM_INITRD",
    "VM_KERNEL",
    "KvmVerdict",
    "QemuDriver",
    "device_state_of",
    "kvm_verdict",
    "probe_kvm",
]
