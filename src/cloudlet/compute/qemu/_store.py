"""On-disk records of the qemu driver: one directory per workload, JSON written atomically.

Layout of ``state_dir/<workload_id>/``::

    spec.json      the WorkloadSpec, written once by create()
    state.json     runtime record (state, pid, create time, QMP socket, ...), rewritten on change
    console.log    the guest's serial console, appended across boots
    qemu.log       QEMU's own stdout and stderr, plus driver marker lines
    qemu.pid       written by QEMU (-pidfile); the record's pid is what the driver trusts
    memory.ram     the guest's RAM (a shared memory-backend-file), kept across suspend
    vmstate        device state saved by suspend(); present only while SUSPENDED
    snapshot.ram   the spec's memory_image (and snapshot.ram.vmstate), taken at create
                   (a hard link, or a copy) and renamed into memory.ram by the first boot
    qmp.sock       the QMP socket while QEMU runs (elsewhere if this path is too long)
"""

from __future__ import annotations

from dataclasses import dataclass

from cloudlet.compute._records import Runtime


@dataclass
class VmRuntime(Runtime):
    """What the driver remembers about a VM between agent restarts."""

    qmp: str | None = None  # the QMP socket of the running QEMU
    accel: str | None = None  # what the running QEMU (or the suspended state) was started with

    def forget_process(self) -> None:
        super().forget_process()
        self.qmp = None
