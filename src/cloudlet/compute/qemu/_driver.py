"""QemuDriver: each workload is a QEMU virtual machine driven over its QMP socket."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from cloudlet.compute._logfiles import read_tail
from cloudlet.compute._proc import Child
from cloudlet.compute._records import SPEC_FILE, STATE_FILE, spec_to_json, valid_id, write_json
from cloudlet.compute.base import ComputeDriver, WorkloadSpec, WorkloadState, WorkloadStatus
from cloudlet.compute.qemu import _vm
from cloudlet.compute.qemu._config import (
    CONSOLE_LOG,
    MEMORY_FILE,
    VMSTATE_FILE,
    command_line,
    device_state_of,
    socket_path,
    validate,
)
from cloudlet.compute.qemu._probe import KvmVerdict, kvm_verdict
from cloudlet.compute.qemu._store import VmRuntime
from cloudlet.compute.qemu._supervise import Supervisor, Vm
from cloudlet.errors import DriverError, DriverUnavailableError

logger = logging.getLogger(__name__)

QEMU_HINT = "apt-get install -y --no-install-recommends qemu-system-x86 qemu-utils"
RUNNING, SUSPENDED, STOPPED = WorkloadState.RUNNING, WorkloadState.SUSPENDED, WorkloadState.STOPPED


class QemuDriver(Supervisor, ComputeDriver):
    """Runs each workload as a QEMU x86-64 VM: virtio disk, user-mode network, serial log.

    ``spec.disk_image`` (raw or qcow2, written in place) is attached as virtio-blk; a
    kernel, initrd and command line can be given in ``spec.env`` (see
    :mod:`cloudlet.compute.qemu._config`). ``spec.port`` on ``host`` is forwarded to
    ``spec.guest_port`` (default: the same port) in the guest. The serial console goes
    to ``console.log`` in the workload directory, which :meth:`log` returns.

    Guest RAM is the file ``memory.ram`` in the workload directory. suspend() pauses
    the guest, saves its device state to ``vmstate`` and ends QEMU; resume() starts a
    new QEMU on the same RAM file and loads the state: the same guest runs on, with a
    new pid. start() of a suspended workload resumes it; stop() of one discards its
    saved state, so the next start boots afresh. With ``spec.memory_image`` (a RAM file
    with its ``.vmstate`` beside it) every boot resumes copies of that saved VM instead.

    stop() presses the ACPI power button, waits ``timeout`` seconds for the guest to
    power off, then quits QEMU. A QEMU that exits on its own is handled by the restart
    policy; a guest that powers off exits QEMU with code 0.

    ``accel``: ``kvm``, ``tcg`` (software emulation) or ``auto``: KVM if a probe guest
    really runs under it (probed once, the verdict cached in ``state_dir``), else TCG.
    A suspended VM resumes with the accelerator it was started with.

    Capabilities: ``suspend``, and ``survives_agent`` (QEMU runs in its own session; a
    new driver on the same ``state_dir`` adopts it by pid and create time).

    Raises:
        DriverUnavailableError: ``qemu-system-x86_64`` is not installed.
    """

    name = "qemu"
    capabilities = {"suspend": True, "survives_agent": True}

    def __init__(
        self,
        state_dir: Path,
        *,
        host: str = "127.0.0.1",
        accel: str = "auto",
        stop_timeout: float = 30.0,
        qemu_binary: str | None = None,
        boot_timeout: float = 30.0,
        migrate_timeout: float = 120.0,
        probe_timeout: float = 5.0,
        poll_interval: float = 0.2,
        restart_backoff: float = 1.0,
        max_backoff: float = 60.0,
    ) -> None:
        qemu = qemu_binary or shutil.which("qemu-system-x86_64")
        if qemu is None:
            raise DriverUnavailableError(f"qemu-system-x86_64 is not installed ({QEMU_HINT})")
        if accel not in ("auto", "kvm", "tcg"):
            raise DriverError(f"accel must be auto, kvm or tcg, not {accel!r}")
        self.qemu = qemu
        self.host = host
        self.accel_setting = accel
        self.stop_timeout = stop_timeout
        self.boot_timeout = boot_timeout
        self.migrate_timeout = migrate_timeout
        self.probe_timeout = probe_timeout
        self.kvm: KvmVerdict | None = None
        self._accel: str | None = None
        self._accel_lock = threading.Lock()
        self.state_dir = Path(state_dir).absolute()
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DriverError(f"cannot create state dir {self.state_dir}: {exc}") from exc
        super().__init__(poll_interval, restart_backoff, max_backoff)
        self._load(self.state_dir)
        self._start_supervisor("cloudlet-qemu-supervisor")

    def accelerator(self) -> str:
        """``kvm`` or ``tcg``: what new VMs start with (probing KVM once if ``auto``)."""
        with self._accel_lock:
            if self._accel is None:
                if self.accel_setting == "auto":
                    cache = self.state_dir / ".kvm-probe.json"
                    self.kvm = kvm_verdict(self.qemu, cache, self.probe_timeout)
                    self._accel = "kvm" if self.kvm.usable else "tcg"
                    logger.info("qemu driver uses %s: %s", self._accel, self.kvm.reason)
                else:
                    self._accel = self.accel_setting
            return self._accel

    # -- the contract ------------------------------------------------------------------

    def create(self, spec: WorkloadSpec) -> None:
        """Check the spec and record the workload; nothing runs yet. Creating an existing
        workload with an equal spec succeeds.

        Raises:
            DriverError: bad spec (see :func:`~cloudlet.compute.qemu._config.validate`),
                the workload exists with a different spec, or the directory could not be
                written. Nothing is left behind.
        """
        self._check_open()
        options = validate(spec)
        wid = spec.workload_id
        with self._lock:
            existing = self._workloads.get(wid)
            if existing is not None:
                if spec_to_json(existing.spec) == spec_to_json(spec):
                    return
                raise DriverError(f"workload {wid!r} exists with a different spec")
            tmp: Path | None = None
            try:
                tmp = Path(tempfile.mkdtemp(prefix=f".create-{wid}-", dir=self.state_dir))
                write_json(tmp / SPEC_FILE, spec_to_json(spec))
                write_json(tmp / STATE_FILE, VmRuntime().to_json())
                os.rename(tmp, self.state_dir / wid)
            except OSError as exc:
                if tmp is not None:
                    shutil.rmtree(tmp, ignore_errors=True)
                raise DriverError(f"cannot create workload {wid!r}: {exc}") from exc
            self._workloads[wid] = Vm(spec, options, self.state_dir / wid, VmRuntime())

    def start(self, workload_id: str) -> WorkloadStatus:
        """Boot the VM (resume it if suspended); a running one is left alone.

        Raises:
            WorkloadNotFoundError: it was never created.
            DriverError: QEMU did not come up; the cause is in the message and ``reason``.
        """
        w = self._get(workload_id)
        with w.op_lock:
            self._check_alive(w)
            if w.want_running:
                return self.status(workload_id)
            if w.child is not None:
                raise DriverError(f"workload {workload_id!r} is still stopping")
            with self._lock:
                w.rt.restarts = 0
            if w.rt.state is SUSPENDED:
                self._resume_locked(w)
            else:
                self._boot_locked(w)
            return self.status(workload_id)

    def stop(self, workload_id: str, timeout: float | None = None) -> None:
        """Power the guest off by ACPI, quit QEMU after ``timeout`` seconds (default: the
        driver's ``stop_timeout``), kill it if it still runs. A suspended workload's
        saved state is discarded.

        Raises:
            WorkloadNotFoundError: it was never created.
            DriverError: QEMU survived SIGKILL.
        """
        w = self._get(workload_id)
        with w.op_lock:
            self._check_alive(w)
            self._stop_locked([w], self.stop_timeout if timeout is None else timeout)

    def suspend(self, workload_id: str) -> None:
        """Pause the guest, save its device state next to its RAM file, and end QEMU.
        Suspending a suspended workload succeeds.

        Raises:
            WorkloadNotFoundError: it was never created.
            DriverError: it is not running, or saving failed (the guest then runs on).
        """
        w = self._get(workload_id)
        with w.op_lock:
            self._check_alive(w)
            if w.rt.state is SUSPENDED:
                return
            child = w.child
            if child is None or w.rt.qmp is None:
                raise DriverError(f"workload {workload_id!r} is not running ({w.rt.state})")
            qmp, tmp = Path(w.rt.qmp), w.path / (VMSTATE_FILE + ".tmp")
            _vm.save_state(qmp, tmp, self.migrate_timeout)
            _vm.command(qmp, "quit")
            if _vm.wait_exit([child], 10.0) and _vm.terminate([child]):
                raise DriverError(f"QEMU of {workload_id!r} survived SIGKILL")
            child.finish()
            try:
                # RAM reaches the disk before the state that makes it resumable appears.
                _vm.fsync(w.path / MEMORY_FILE)
                os.replace(tmp, w.path / VMSTATE_FILE)
            except OSError as exc:
                raise DriverError(f"cannot keep the state of {workload_id!r}: {exc}") from exc
            _vm.mark(w.path, "suspended")
            with self._lock:
                w.child, w.want_running, w.restart_at = None, False, None
                w.rt.state, w.rt.pid, w.rt.create_time, w.rt.qmp = SUSPENDED, None, None, None
                w.rt.exit_code, w.rt.reason = None, "suspended"
            self._persist(w)

    def resume(self, workload_id: str) -> WorkloadStatus:
        """Start a new QEMU on the saved RAM and device state; a running one is left alone.

        Raises:
            WorkloadNotFoundError: it was never created.
            DriverError: it is neither suspended nor running, or the state did not load
                (it stays SUSPENDED, its files untouched).
        """
        w = self._get(workload_id)
        with w.op_lock:
            self._check_alive(w)
            if not w.want_running:
                if w.rt.state is not SUSPENDED:
                    raise DriverError(f"workload {workload_id!r} is not suspended")
                with self._lock:
                    w.rt.restarts = 0
                self._resume_locked(w)
            return self.status(workload_id)

    def delete(self, workload_id: str) -> None:
        """Stop the VM if needed, then remove its directory (not ``spec.disk_image``); a
        missing workload succeeds."""
        self._check_open()
        trash: Path | None = None
        with self._lock:
            w = self._workloads.get(workload_id)
            if w is None and valid_id(workload_id):
                trash = self._move_aside(self.state_dir, workload_id)
        if w is not None:
            with w.op_lock:
                if w.deleted:
                    return
                self._stop_locked([w], self.stop_timeout)
                with self._lock:
                    trash = self._move_aside(self.state_dir, workload_id)
                    w.deleted = True
                    del self._workloads[workload_id]
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    def status(self, workload_id: str) -> WorkloadStatus:
        with self._lock:
            w = self._workloads.get(workload_id)
            if w is None:
                return WorkloadStatus(workload_id, WorkloadState.ABSENT)
            endpoint = None
            if w.spec.port is not None and w.rt.state is RUNNING:
                host = f"[{self.host}]" if ":" in self.host else self.host
                endpoint = f"{host}:{w.spec.port}"
            return WorkloadStatus(
                workload_id=workload_id,
                state=w.rt.state,
                endpoint=endpoint,
                pid=w.child.pid if w.child is not None else None,
                restarts=w.rt.restarts,
                exit_code=w.rt.exit_code,
                reason=w.rt.reason,
            )

    def list(self) -> list[str]:
        with self._lock:
            return sorted(self._workloads)

    def log(self, workload_id: str, tail_bytes: int = 64 * 1024) -> str:
        """The last ``tail_bytes`` of the guest's serial console (UTF-8, bad bytes replaced).

        Raises:
            WorkloadNotFoundError: unknown workload.
        """
        return read_tail(self._get(workload_id).path / CONSOLE_LOG, tail_bytes)

    def close(self, keep_running: bool = False) -> None:
        """Stop supervising. Unless ``keep_running``, stop every VM first (all at once, one
        ``stop_timeout`` in all); with it, the VMs run on for a later driver to adopt."""
        workloads = self._stop_supervisor()
        if workloads is None:
            return
        for w in workloads:
            w.op_lock.acquire()
        try:
            if keep_running:
                for w in workloads:
                    if w.child is not None:
                        w.child.detach()
            else:
                running = [w for w in workloads if w.want_running or w.child is not None]
                self._stop_locked(running, self.stop_timeout)
        finally:
            for w in workloads:
                w.op_lock.release()

    # -- internals; *_locked methods expect the caller to hold the workloads' op_lock ------

    def _boot_locked(self, w: Vm, reason: str | None = None) -> None:
        """Boot afresh on a new (sparse) RAM file, or from copies of ``spec.memory_image``
        and its device state when the spec has one."""
        for name in (VMSTATE_FILE, MEMORY_FILE):
            with contextlib.suppress(FileNotFoundError):
                (w.path / name).unlink()
        image = w.spec.memory_image
        if image is None:
            self._launch_locked(w, self.accelerator(), reason, incoming=False)
            return
        _vm.copy_sparse(image, w.path / MEMORY_FILE)
        _vm.copy_sparse(device_state_of(image), w.path / VMSTATE_FILE)
        reason = reason or "started from its memory image"
        self._resume_locked(w, reason, fallback=w.rt.state, accel=self.accelerator())

    def _resume_locked(
        self,
        w: Vm,
        reason: str = "resumed",
        *,
        fallback: WorkloadState = SUSPENDED,
        accel: str | None = None,
    ) -> None:
        """Start QEMU on the workload's RAM file and load its saved device state. On
        failure the state is ``fallback``; the files are kept only if that is SUSPENDED."""
        vmstate = w.path / VMSTATE_FILE
        if not vmstate.is_file() or not (w.path / MEMORY_FILE).is_file():
            raise DriverError(f"workload {w.spec.workload_id!r} has no saved state to resume")
        started = time.monotonic()
        try:
            self._launch_locked(w, accel or w.rt.accel or self.accelerator(), reason)
            # Once the guest runs, its RAM moves on and the saved device state no longer
            # fits it: the state goes first, so a crash never resumes it twice.
            _vm.load_state(socket_path(w.path), vmstate, self.migrate_timeout, vmstate.unlink)
        except DriverError as exc:
            if w.child is not None:
                _vm.terminate([w.child])
            if not vmstate.is_file():
                fallback = STOPPED  # it failed after the saved state was consumed
            if fallback is not SUSPENDED:
                for name in (VMSTATE_FILE, MEMORY_FILE):
                    with contextlib.suppress(FileNotFoundError):
                        (w.path / name).unlink()
            with self._lock:
                w.child, w.want_running = None, False
                w.rt.state, w.rt.pid, w.rt.create_time, w.rt.qmp = fallback, None, None, None
                w.rt.reason = f"resume failed: {exc}"
            self._persist(w)
            raise
        _vm.mark(w.path, f"{reason} in {time.monotonic() - started:.2f}s")

    def _launch_locked(
        self, w: Vm, accel: str, reason: str | None, *, incoming: bool = True
    ) -> Child:
        qmp = socket_path(w.path)
        command = command_line(
            self.qemu, w.spec, w.options, w.path, accel=accel, host=self.host, qmp=qmp,
            incoming=incoming,
        )  # fmt: skip
        try:
            child = _vm.launch(command, w.path, qmp, self.boot_timeout)
        except DriverError as exc:
            _vm.mark(w.path, str(exc))
            with self._lock:
                w.rt.reason = str(exc)
            self._persist(w)
            raise
        with self._lock:
            w.child, w.want_running, w.restart_at = child, True, None
            w.rt.state, w.rt.pid, w.rt.create_time = RUNNING, child.pid, child.create_time
            w.rt.qmp, w.rt.accel, w.rt.exit_code, w.rt.reason = str(qmp), accel, None, reason
        self._persist(w)
        return child

    def _restart_locked(self, w: Vm, reason: str) -> None:
        self._boot_locked(w, reason)
