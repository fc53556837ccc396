"""QemuDriver: each workload is a QEMU virtual machine driven over its QMP socket."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from pathlib import Path

from cloudlet.compute._local import LocalDriver, lock_state_dir
from cloudlet.compute._logfiles import read_tail
from cloudlet.compute._proc import Child
from cloudlet.compute._records import Runtime
from cloudlet.compute._supervisor import RUNNING, STOPPED, SUSPENDED, Workload
from cloudlet.compute.base import WorkloadSpec, WorkloadState, WorkloadStatus
from cloudlet.compute.qemu import _vm
from cloudlet.compute.qemu._config import (
    CONSOLE_LOG,
    MEMORY_FILE,
    SNAPSHOT_FILE,
    VMSTATE_FILE,
    VmOptions,
    command_line,
    device_state_of,
    options_of,
    socket_path,
    validate,
)
from cloudlet.compute.qemu._probe import KvmVerdict, kvm_verdict
from cloudlet.compute.qemu._store import VmRuntime
from cloudlet.errors import DriverError, DriverUnavailableError

logger = logging.getLogger(__name__)

QEMU_HINT = "apt-get install -y --no-install-recommends qemu-system-x86 qemu-utils"


class Vm(Workload):
    """The driver's view of one VM."""

    rt: VmRuntime

    def __init__(self, spec: WorkloadSpec, options: VmOptions, path: Path, rt: Runtime) -> None:
        super().__init__(spec, path, rt)
        self.options = options


class QemuDriver(LocalDriver[Vm]):
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
    with its ``.vmstate`` beside it, e.g. synthesized from a resumable overlay) the
    first start resumes that saved VM instead of booting: create() takes its own hard
    link (or copy) of the two, so the caller may delete them, and the first boot moves
    them into place. Later boots (after a stop, a crash or a failed resume) start from
    the disk, since the disk has moved on from the RAM's view of it and resuming the
    image again could corrupt the guest's filesystem.

    stop() presses the ACPI power button, waits ``timeout`` seconds for the guest to
    power off, then quits QEMU. A QEMU that exits on its own is handled by the restart
    policy; a guest that powers off exits QEMU with code 0. delete() removes the
    workload directory, never ``spec.disk_image``. Supervision and adoption work as
    :class:`~cloudlet.compute._local.LocalDriver` says.

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
    runtime_type = VmRuntime
    leader_name = "QEMU"

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
        super().__init__(
            state_dir,
            host=host,
            stop_timeout=stop_timeout,
            poll_interval=poll_interval,
            restart_backoff=restart_backoff,
            max_backoff=max_backoff,
        )
        self.qemu = qemu
        self.accel_setting = accel
        self.boot_timeout = boot_timeout
        self.migrate_timeout = migrate_timeout
        self.probe_timeout = probe_timeout
        self.kvm: KvmVerdict | None = None
        self._accel: str | None = None
        self._accel_lock = threading.Lock()
        # One driver per state dir, as for processes: two would both supervise (and
        # restart) the same QEMUs.
        self._lock_fd = lock_state_dir(self.state_dir, self.name)
        try:
            self._load()
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._start_supervisor()

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
        self._create(spec, lambda path, rt: Vm(spec, options, path, rt))

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
                w.rt.state = SUSPENDED
                w.rt.forget_process()
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

    def _release(self) -> None:
        os.close(self._lock_fd)

    def log(self, workload_id: str, tail_bytes: int = 64 * 1024) -> str:
        """The last ``tail_bytes`` of the guest's serial console (UTF-8, bad bytes replaced).

        Raises:
            WorkloadNotFoundError: unknown workload.
        """
        return read_tail(self._get(workload_id).path / CONSOLE_LOG, tail_bytes)

    # -- internals; *_locked methods expect the caller to hold the workloads' op_lock ------

    def _new_workload(self, spec: WorkloadSpec, path: Path, rt: Runtime) -> Vm:
        return Vm(spec, options_of(spec), path, rt)

    def _mark(self, w: Vm, message: str) -> None:
        _vm.mark(w.path, message)

    def _exit_reason(self, code: int | None) -> str:
        if code == 0:
            return "the guest powered off"
        return f"QEMU exited with code {code}" if code is not None else "QEMU exited"

    def _run_locked(self, w: Vm, reason: str | None = None) -> None:
        """Boot the VM, or resume it if suspended."""
        if w.rt.state is SUSPENDED:
            self._resume_locked(w)
        else:
            self._boot_locked(w, reason)

    def _prepare_dir(self, path: Path, spec: WorkloadSpec) -> None:
        """Take the workload's own reference to ``spec.memory_image`` (a hard link, or a
        sparse copy on another filesystem): the caller may delete its files once
        create() returns, and the first boot consumes these."""
        if spec.memory_image is None:
            return
        snapshot = path / SNAPSHOT_FILE
        for source, target in (
            (spec.memory_image, snapshot),
            (device_state_of(spec.memory_image), device_state_of(snapshot)),
        ):
            try:
                os.link(source, target)
            except OSError:
                _vm.copy_sparse(source, target)

    def _boot_locked(self, w: Vm, reason: str | None = None) -> None:
        """Boot afresh on a new (sparse) RAM file; the first boot of a spec with a
        ``memory_image`` resumes it instead, once: the image is moved into place, and
        later boots (after a stop, a crash or a failed resume) start from the disk."""
        for name in (VMSTATE_FILE, MEMORY_FILE):
            with contextlib.suppress(FileNotFoundError):
                (w.path / name).unlink()
        snapshot = w.path / SNAPSHOT_FILE
        if not (snapshot.is_file() and device_state_of(snapshot).is_file()):
            self._launch_locked(w, self.accelerator(), reason, incoming=False)
            return
        try:
            # The state first: a crash between the renames leaves no resumable pair.
            os.replace(device_state_of(snapshot), w.path / VMSTATE_FILE)
            os.replace(snapshot, w.path / MEMORY_FILE)
        except OSError as exc:
            raise DriverError(f"cannot take the memory image into place: {exc}") from exc
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
                w.rt.state = fallback
                w.rt.forget_process()
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

    def _stop_locked(self, workloads: list[Vm], timeout: float) -> None:
        """Power the VMs off together: the ACPI button, ``timeout`` seconds, quit, kill.
        Each is recorded STOPPED; a suspended one loses its saved state."""
        self._halt(workloads)
        live = {w.child: w for w in workloads if w.child is not None and w.rt.qmp}
        for child, w in live.items():
            if not child.exited():
                _vm.command(Path(w.rt.qmp or ""), "system_powerdown", timeout=2.0)
        pending = _vm.wait_exit(live, timeout)
        for child in pending:
            _vm.command(Path(live[child].rt.qmp or ""), "quit", timeout=2.0)
        pending = _vm.wait_exit(pending, 5.0)
        stuck = set(_vm.terminate(pending)) if pending else set()
        for w in workloads:
            if w.child in stuck:
                continue
            code = w.child.finish() if w.child is not None else None
            if w.rt.state is SUSPENDED:
                with contextlib.suppress(FileNotFoundError):
                    (w.path / VMSTATE_FILE).unlink()
            self._record_stopped_locked(w, code)
        if stuck:
            ids = ", ".join(live[c].spec.workload_id for c in stuck)
            raise DriverError(f"QEMU of {ids} survived SIGKILL")

    def _recover_locked(self, w: Vm) -> None:
        """Bring a record read back from disk in line with what is left of its QEMU,
        finishing or undoing a suspend or resume an earlier driver was cut short in."""
        rt, vmstate = w.rt, w.path / VMSTATE_FILE
        saved = vmstate.is_file()
        if rt.state is SUSPENDED and not saved:
            rt.state, rt.reason = STOPPED, "the saved state is missing"
        if rt.state is not RUNNING:
            return
        child = self._adopt(w)
        if saved:
            # resume() deletes the saved state before the guest runs again, and suspend()
            # renames it into place only once QEMU is gone: so it is still valid.
            if child is not None:
                _vm.terminate([child])
            rt.state = SUSPENDED
            rt.forget_process()
            rt.reason = "suspended (an interrupted suspend or resume was settled)"
            w.want_running = False
            self._persist(w)
            return
        with contextlib.suppress(FileNotFoundError):
            (w.path / (VMSTATE_FILE + ".tmp")).unlink()  # a suspend cut short
        self._rejoin_locked(w, child)
        # A guest left paused by a suspend or resume cut short runs on.
        if (
            child is not None
            and rt.qmp
            and _vm.run_state(Path(rt.qmp)) in ("paused", "postmigrate")
        ):
            _vm.command(Path(rt.qmp), "cont")
