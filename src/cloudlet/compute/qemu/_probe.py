"""Whether KVM really runs guests here: boot a guest under KVM, with a hard timeout.

``/dev/kvm`` existing is not enough: on some hosts (nested virtualisation, odd kernels)
a KVM guest hangs without output. Where the host has a Linux kernel in /boot the probe
boots it, with no root disk, until it panics for want of a root filesystem; QEMU then
exits (``panic=-1``, ``-no-reboot``) and the serial console shows the panic. A 64-bit
kernel is the test that matters: one such host (a ``kvm-pvm`` nested hypervisor) runs
real-mode code under KVM, but its instruction emulation fails on the guest kernel's
``lock cmpxchg16b`` and the vCPU stops with nothing on the console. Without a kernel,
the probe boots a boot sector that writes 0x2a to QEMU's isa-debug-exit port, so QEMU
exits with code 0x2a * 2 + 1 = 85 only if guest code really ran. Anything else within
the timeout, or no exit at all, means "use software emulation". The probe uses ``-cpu
host`` like the driver's KVM VMs. (Asking QMP ``query-kvm`` is not enough: it says
enabled and running while the vCPU is stuck.) The verdict is cached in a JSON file
keyed by the QEMU binary, the probe guest and the host kernel, so a driver does not
probe on every start.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cloudlet.compute._records import write_json

#: mov al, 0x2a; out 0xf4, al; hlt; jmp $  -- padded to a boot sector.
_CODE = bytes([0xB0, 0x2A, 0xE6, 0xF4, 0xF4, 0xEB, 0xFE])
BOOT_SECTOR = _CODE + bytes(510 - len(_CODE)) + b"\x55\xaa"
EXPECTED_EXIT = 0x2A * 2 + 1
#: What a kernel booted without a root filesystem prints before it stops.
PANIC_MARKER = b"Kernel panic"

# Verdicts by cache key, so the drivers of one process probe once whatever their state dirs.
_verdicts: dict[str, KvmVerdict] = {}
_verdicts_lock = threading.Lock()

# QEMU processes that survived SIGKILL (a vCPU stuck in the kernel); kept referenced so
# the subprocess module neither warns about them nor loses track of them.
_stuck: list[subprocess.Popen[bytes]] = []


@dataclass(frozen=True)
class KvmVerdict:
    """The outcome of one probe."""

    usable: bool
    reason: str
    seconds: float = 0.0
    key: str = ""


def host_kernel() -> Path | None:
    """A Linux kernel image this host boots from (its own first), if one is readable."""
    own = Path(f"/boot/vmlinuz-{os.uname().release}")
    candidates = [own, *(Path(p) for p in sorted(glob.glob("/boot/vmlinuz-*"), reverse=True))]
    return next((p for p in candidates if os.access(p, os.R_OK)), None)


def probe_kvm(qemu: str, timeout: float = 5.0, kernel: Path | None = None) -> KvmVerdict:
    """Boot the probe guest with ``-accel kvm`` and say whether it ran; never blocks
    longer than ``timeout`` seconds plus a short grace to reap a killed QEMU.

    ``kernel``: the Linux kernel to boot (default: :func:`host_kernel`; without one, the
    boot sector)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return KvmVerdict(False, "/dev/kvm is missing or not accessible")
    kernel = kernel or host_kernel()
    with tempfile.TemporaryDirectory(prefix="cloudlet-kvm-probe-") as tmp:
        command = [
            qemu, "-accel", "kvm", "-cpu", "host", "-machine", "pc", "-nodefaults",
            "-no-user-config", "-display", "none", "-monitor", "none", "-no-reboot",
        ]  # fmt: skip
        if kernel is not None:
            command += [
                "-m", "256", "-serial", "stdio", "-kernel", str(kernel),
                "-append", "console=ttyS0 panic=-1 loglevel=1 root=/dev/nonexistent",
            ]  # fmt: skip
        else:
            image = Path(tmp) / "boot.img"
            image.write_bytes(BOOT_SECTOR)
            command += [
                "-m", "16", "-serial", "none",
                "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
                "-drive", f"file={image},format=raw,if=floppy",
            ]  # fmt: skip
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            return KvmVerdict(False, f"cannot run {qemu}: {exc}")
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            try:
                proc.communicate(timeout=5.0)
            except subprocess.TimeoutExpired:
                _stuck.append(proc)
            seconds = time.monotonic() - started
            guest = f"the kernel {kernel}" if kernel else "a KVM guest"
            return KvmVerdict(False, f"{guest} did not finish within {timeout:g}s", seconds)
        seconds = time.monotonic() - started
    if kernel is not None and PANIC_MARKER in output:
        return KvmVerdict(True, f"a KVM guest booted {kernel}", seconds)
    if kernel is None and proc.returncode == EXPECTED_EXIT:
        return KvmVerdict(True, "a KVM guest ran", seconds)
    last = output.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
    return KvmVerdict(False, f"KVM guest failed (exit {proc.returncode}): {last[0]}", seconds)


def _cache_key(qemu: str, kernel: Path | None) -> str:
    try:
        st = os.stat(qemu)
        binary = f"{os.path.realpath(qemu)}:{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        binary = qemu
    return f"{binary}|{kernel or 'boot sector'}|{os.uname().release}"


def kvm_verdict(qemu: str, cache_file: Path, timeout: float = 5.0) -> KvmVerdict:
    """The verdict for this QEMU on this kernel: remembered in this process, else read
    from ``cache_file``, else probed (and written there)."""
    kernel = host_kernel()
    key = _cache_key(qemu, kernel)
    with _verdicts_lock:
        if key in _verdicts:
            return _verdicts[key]
        verdict = None
        with contextlib.suppress(OSError, ValueError, TypeError):
            data = json.loads(cache_file.read_text())
            if data.get("key") == key:
                verdict = KvmVerdict(**data)
        if verdict is None:
            probed = probe_kvm(qemu, timeout, kernel)
            verdict = KvmVerdict(probed.usable, probed.reason, round(probed.seconds, 3), key)
            with contextlib.suppress(OSError):
                write_json(cache_file, asdict(verdict))
        _verdicts[key] = verdict
        return verdict
