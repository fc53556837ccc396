"""What the qemu driver reads from a WorkloadSpec, and the QEMU command line it builds.

VM options the spec has no field for travel in ``spec.env`` under ``CLOUDLET_VM_*``:

``CLOUDLET_VM_KERNEL``  a kernel to boot directly (``-kernel``), instead of the disk's loader
``CLOUDLET_VM_INITRD``  its initramfs (``-initrd``); needs a kernel
``CLOUDLET_VM_APPEND``  its command line (``-append``); needs a kernel
``CLOUDLET_VM_DISK_FORMAT``  ``raw`` or ``qcow2``; by default read from the image's header

``spec.memory_image``, if set, is a guest RAM file saved by suspend() (``memory.ram``) with
its device state beside it as ``<memory_image>.vmstate`` (the ``vmstate`` file). The
first boot then resumes copies of the two instead of booting: the VM starts where the
saved one was suspended. The spec must match the saved VM's (memory_mib, vcpus, devices).

Other ``spec.env`` entries mean nothing to a VM and are ignored; an unknown
``CLOUDLET_VM_*`` key is refused, so a typo fails at create.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cloudlet.compute._records import check_id
from cloudlet.compute.base import WorkloadSpec
from cloudlet.errors import DriverError

KERNEL = "CLOUDLET_VM_KERNEL"
INITRD = "CLOUDLET_VM_INITRD"
APPEND = "CLOUDLET_VM_APPEND"
DISK_FORMAT = "CLOUDLET_VM_DISK_FORMAT"
VM_KEYS = (KERNEL, INITRD, APPEND, DISK_FORMAT)

CONSOLE_LOG = "console.log"
QEMU_LOG = "qemu.log"
MEMORY_FILE = "memory.ram"
VMSTATE_FILE = "vmstate"
SNAPSHOT_FILE = "snapshot.ram"
PID_FILE = "qemu.pid"

_QCOW2_MAGIC = b"QFI\xfb"
# sun_path holds 108 bytes; longer socket paths move to a short per-host directory.
_MAX_SOCKET_PATH = 100


@dataclass(frozen=True)
class VmOptions:
    """A spec's VM options, checked."""

    kernel: Path | None = None
    initrd: Path | None = None
    append: str | None = None
    disk_format: str | None = None


def validate(spec: WorkloadSpec) -> VmOptions:
    """Check that ``spec`` describes a VM this driver can boot; nothing is written.

    Raises:
        DriverError: bad id, port, size or VM option, a missing file, or nothing to boot.
    """
    wid = spec.workload_id
    check_id(wid)
    for name in ("port", "guest_port"):
        value = getattr(spec, name)
        if value is not None and not (isinstance(value, int) and 0 < value < 65536):
            raise DriverError(f"workload {wid!r}: bad {name} {value!r}")
    if not (isinstance(spec.memory_mib, int) and spec.memory_mib >= 16):
        raise DriverError(f"workload {wid!r}: memory_mib must be an integer >= 16")
    if not spec.vcpus > 0:
        raise DriverError(f"workload {wid!r}: vcpus must be positive")
    env = dict(spec.env)
    unknown = sorted(k for k in env if k.startswith("CLOUDLET_VM_") and k not in VM_KEYS)
    if unknown:
        raise DriverError(f"workload {wid!r}: unknown VM options {unknown} (known: {VM_KEYS})")
    kernel = _file(wid, env.get(KERNEL), "kernel")
    initrd = _file(wid, env.get(INITRD), "initrd")
    if kernel is None and (initrd is not None or APPEND in env):
        raise DriverError(f"workload {wid!r}: {INITRD} and {APPEND} need {KERNEL}")
    disk = _file(wid, str(spec.disk_image) if spec.disk_image else None, "disk image")
    if disk is None and kernel is None:
        raise DriverError(f"workload {wid!r}: nothing to boot (no disk_image and no {KERNEL})")
    disk_format = env.get(DISK_FORMAT)
    if disk_format is not None and disk_format not in ("raw", "qcow2"):
        raise DriverError(f"workload {wid!r}: {DISK_FORMAT} must be raw or qcow2")
    if disk is not None and disk_format is None:
        disk_format = sniff_format(disk)
    if spec.memory_image is not None:
        image = _file(wid, str(spec.memory_image), "memory image")
        assert image is not None
        if image.stat().st_size != spec.memory_mib * 1024 * 1024:
            raise DriverError(
                f"workload {wid!r}: memory image {image} is not {spec.memory_mib} MiB"
            )
        _file(wid, str(device_state_of(image)), "device state")
    return VmOptions(kernel, initrd, env.get(APPEND), disk_format)


def device_state_of(memory_image: Path) -> Path:
    """Where the device state that goes with a memory image lives: beside it, ``.vmstate``."""
    return memory_image.with_name(memory_image.name + ".vmstate")


def options_of(spec: WorkloadSpec) -> VmOptions:
    """``spec``'s VM options without checking files: for records read back from disk,
    whose kernel or disk may be missing now (start() then fails with QEMU's reason)."""
    env = dict(spec.env)
    kernel, initrd = env.get(KERNEL), env.get(INITRD)
    disk_format = env.get(DISK_FORMAT)
    if spec.disk_image is not None and disk_format is None:
        try:
            disk_format = sniff_format(spec.disk_image)
        except DriverError:
            disk_format = "raw"
    return VmOptions(
        Path(kernel) if kernel else None,
        Path(initrd) if initrd else None,
        env.get(APPEND),
        disk_format,
    )


def _file(wid: str, value: str | None, what: str) -> Path | None:
    if value is None:
        return None
    path = Path(value)
    if not path.is_absolute() or not path.is_file():
        raise DriverError(f"workload {wid!r}: {what} {value!r} is not an existing absolute path")
    return path


def sniff_format(disk: Path) -> str:
    """``qcow2`` if the image starts with qcow2's magic, else ``raw``."""
    try:
        with disk.open("rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise DriverError(f"cannot read disk image {disk}: {exc}") from exc
    return "qcow2" if head == _QCOW2_MAGIC else "raw"


def socket_path(workload_dir: Path) -> Path:
    """Where the workload's QMP socket goes: in its directory when the path is short enough."""
    path = workload_dir / "qmp.sock"
    if len(str(path)) <= _MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(str(workload_dir).encode()).hexdigest()[:24]
    return Path(tempfile.gettempdir()) / f"cloudlet-qmp-{digest}.sock"


def _opt(value: object) -> str:
    """``value`` escaped for a QEMU option list, where a comma is written twice."""
    return str(value).replace(",", ",,")


def command_line(
    qemu: str,
    spec: WorkloadSpec,
    options: VmOptions,
    workload_dir: Path,
    *,
    accel: str,
    host: str,
    qmp: Path,
    incoming: bool = False,
) -> list[str]:
    """The QEMU command for ``spec``. Guest RAM is the shared file ``memory.ram`` in the
    workload directory, so a suspend only has to save device state. With ``incoming``
    QEMU waits paused for ``migrate-incoming`` (a resume)."""
    mib = spec.memory_mib
    ram = _opt(workload_dir / MEMORY_FILE)
    args = [
        qemu,
        "-name", f"guest={spec.workload_id},debug-threads=on",
        "-machine", "pc,memory-backend=mem",
        "-accel", accel,
        "-cpu", "host" if accel == "kvm" else "qemu64",
        "-smp", str(max(1, math.ceil(spec.vcpus))),
        "-m", f"{mib}M",
        "-object",
        f"memory-backend-file,id=mem,size={mib}M,mem-path={ram},share=on",
        "-nodefaults", "-no-user-config", "-display", "none",
        "-chardev", f"file,id=console,path={_opt(workload_dir / CONSOLE_LOG)},append=on",
        "-serial", "chardev:console",
        "-qmp", f"unix:{_opt(qmp)},server=on,wait=off",
        "-pidfile", str(workload_dir / PID_FILE),
    ]  # fmt: skip
    if spec.disk_image is not None:
        args += [
            "-drive", f"file={_opt(spec.disk_image)},format={options.disk_format},if=none,id=disk0",
            "-device", "virtio-blk-pci,drive=disk0",
        ]  # fmt: skip
    netdev = "user,id=net0"
    if spec.port is not None:
        netdev += f",hostfwd=tcp:{host}:{spec.port}-:{spec.guest_port or spec.port}"
    args += ["-netdev", netdev, "-device", "virtio-net-pci,netdev=net0,romfile="]
    if options.kernel is not None:
        args += ["-kernel", str(options.kernel)]
        if options.initrd is not None:
            args += ["-initrd", str(options.initrd)]
        if options.append is not None:
            args += ["-append", options.append]
    if incoming:
        args += ["-incoming", "defer", "-S"]
    return args
