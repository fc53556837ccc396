"""The KVM probe: a verdict within its timeout, and cached so a driver probes once."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from compute_helpers import gone

from cloudlet.compute.qemu import KvmVerdict, QemuDriver, _probe, kvm_verdict, probe_kvm

QEMU = shutil.which("qemu-system-x86_64")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.qemu,
    pytest.mark.skipif(
        QEMU is None,
        reason="qemu-system-x86_64 is not installed"
        " (apt-get install -y --no-install-recommends qemu-system-x86 qemu-utils)",
    ),
]


def test_the_probe_gives_a_verdict() -> None:
    assert QEMU is not None
    verdict = probe_kvm(QEMU, timeout=5.0)
    assert isinstance(verdict.usable, bool)
    assert verdict.reason
    print(f"KVM probe: usable={verdict.usable} ({verdict.reason}, {verdict.seconds:.2f}s)")


@pytest.mark.skipif(
    not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="no usable /dev/kvm to probe"
)
def test_a_hanging_guest_is_killed_at_the_timeout(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    hanging = tmp_path / "qemu-that-hangs"
    hanging.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 600\n")
    hanging.chmod(0o755)
    verdict = probe_kvm(str(hanging), timeout=1.0)
    assert not verdict.usable
    assert "did not finish within 1s" in verdict.reason
    assert gone(int(pid_file.read_text()))


@pytest.mark.skipif(
    not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="no usable /dev/kvm to probe"
)
@pytest.mark.parametrize(
    ("console", "usable"),
    [("Kernel panic - not syncing: VFS: Unable to mount root fs", True), ("", False)],
)
def test_a_kernel_passes_only_once_it_reaches_its_panic(
    tmp_path: Path, console: str, usable: bool
) -> None:
    """The guest kernel must get as far as looking for its root filesystem: an exit
    without the panic on the console (QEMU gave up on the vCPU) is not a pass."""
    qemu = tmp_path / "qemu"
    qemu.write_text(f"#!/bin/sh\necho '{console}'\nexit 0\n")
    qemu.chmod(0o755)
    verdict = probe_kvm(str(qemu), timeout=5.0, kernel=tmp_path / "vmlinuz")
    assert verdict.usable is usable, verdict


def test_the_verdict_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert QEMU is not None
    calls: list[str] = []

    def fake_probe(qemu: str, timeout: float = 5.0, kernel: Path | None = None) -> KvmVerdict:
        calls.append(qemu)
        return KvmVerdict(False, "pretend KVM hangs", 0.1)

    monkeypatch.setattr(_probe, "probe_kvm", fake_probe)
    monkeypatch.setattr(_probe, "_verdicts", {})
    cache = tmp_path / "kvm.json"
    first = kvm_verdict(QEMU, cache)
    assert kvm_verdict(QEMU, cache) == first
    assert (first.usable, first.reason, len(calls)) == (False, "pretend KVM hangs", 1)

    monkeypatch.setattr(_probe, "_verdicts", {})  # as in a new process: only the file is left
    assert kvm_verdict(QEMU, cache) == first
    assert len(calls) == 1

    driver = QemuDriver(tmp_path / "state", accel="auto")
    try:
        assert driver.accelerator() == "tcg"
        assert driver.kvm == first
        assert len(calls) == 1
    finally:
        driver.close()
