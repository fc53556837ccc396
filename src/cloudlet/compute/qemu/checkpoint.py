"""Periodic checkpoints of a running VM: what a failover restarts it from.

A checkpoint is the live handoff (:mod:`cloudlet.compute.qemu.handoff`) written to a
file instead of a socket: the 4 KiB chunks of the VM's disk and RAM that differ from
the base disk and the base RAM (or zeros), in the handoff's frames. Pre-copy rounds
run with the guest running; then a short pause (QMP ``stop``) for the last delta and
the device state, and ``cont``: the pause is what the checkpoint costs the client.
Later frames overwrite earlier ones, so a restore replays the file in order onto a
copy of the base and then resumes the VM from the RAM image and device state.

File format: ``MAGIC`` then the handoff's frames (``C`` chunks, ``S`` device state,
``E`` end with the disk and memory sizes). A file without its ``E`` frame is not a
checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from cloudlet.compute.qemu._config import device_state_of
from cloudlet.compute.qemu._qmp import QmpSession
from cloudlet.compute.qemu.handoff import (
    CHUNK,
    DISK,
    MEMORY,
    WINDOW_CHUNKS,
    HandoffStats,
    LiveSource,
    _base,
    _device_state,
    _dirty,
    _Intake,
    _live,
    _resume_here,
    _Sender,
    _start_images,
    _windows,
)
from cloudlet.errors import DriverError

MAGIC = b"CLDCKPT1"


class CheckpointError(DriverError):
    """A checkpoint could not be written (the guest runs on) or restored (nothing kept)."""


@dataclass
class CheckpointStats:
    """What one checkpoint cost."""

    bytes: int = 0  # the file's size
    raw_bytes: int = 0  # chunk bytes before compression
    region_bytes: dict[str, int] = field(default_factory=dict)
    rounds: list[dict[str, float]] = field(default_factory=list)
    device_state_bytes: int = 0
    pause_s: float = 0.0  # guest paused (stop to cont)
    total_s: float = 0.0


class _FileSink:
    """A file with the one socket method :class:`_Sender` calls."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f

    def sendall(self, data: bytes) -> None:
        self.f.write(data)


def write_checkpoint(
    source: LiveSource,
    out: Path,
    *,
    max_rounds: int = 4,
    final_bytes: int = 256 * 1024,
    timeout: float = 60.0,
) -> CheckpointStats:
    """Write a checkpoint of the running VM to ``out`` (replaced whole or not at all);
    the guest runs on afterwards, paused only for the last round.

    Pre-copy rounds go on while the last one shrank, fewer than ``max_rounds`` ran, and
    it found more than ``final_bytes`` of changed chunks.

    Raises:
        CheckpointError: QMP, the device state or the file failed; the guest runs on.
    """
    t_start = time.monotonic()
    hstats = HandoffStats()
    tmp = out.with_name(f".{out.name}.part")
    pool = ThreadPoolExecutor(2, thread_name_prefix="checkpoint-zstd")
    scanner = ThreadPoolExecutor(2, thread_name_prefix="checkpoint-scan")
    images = [(DISK, source.disk, source.base_disk), (MEMORY, source.memory, source.base_memory)]
    paused = False
    stats = CheckpointStats()
    try:
        with tmp.open("wb") as f:
            f.write(MAGIC)
            send = _Sender(_FileSink(f), hstats, pool)  # type: ignore[arg-type]
            current = {r: _live(p) for r, p, _ in images}
            written = {r: _base(b, len(current[r])) for r, _, b in images}
            held = {r: _windows(b, len(current[r])) for r, _, b in images}

            def scan(region: int, path: Path, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                index = _dirty(rows, written[region], held[region] | _windows(path, len(rows)))
                return index, np.array(rows[index])

            def one_round(session: QmpSession | None) -> int:
                t0 = time.monotonic()
                found = [scanner.submit(scan, r, p, _live(p)) for r, p, _ in images]
                state = _device_state(session, timeout) if session is not None else None
                chunks = wire = 0
                for (region, _, _), scanned in zip(images, found, strict=True):
                    index, data = scanned.result()
                    wire += send.chunks(region, data, index)
                    chunks += len(index)
                    written[region][index] = data
                    held[region][index // WINDOW_CHUNKS] = True
                entry = {"chunks": chunks, "bytes": wire}
                if state is not None:
                    send.frame(b"S", 0, 1, send.zstd.compress(state))
                    stats.device_state_bytes = len(state)
                    entry["paused"] = 1
                entry["seconds"] = round(time.monotonic() - t0, 3)
                stats.rounds.append(entry)
                return chunks * CHUNK

            last = None
            for _ in range(max_rounds):
                raw = one_round(None)
                if raw <= final_bytes or (last is not None and raw >= last):
                    break
                last = raw
            with QmpSession(source.qmp, timeout=timeout) as session:
                session.execute("stop")
                paused, t_pause = True, time.monotonic()
                try:
                    one_round(session)
                finally:
                    with contextlib.suppress(DriverError):
                        session.execute("cont")
                    paused = False
                    stats.pause_s = round(time.monotonic() - t_pause, 3)
            sizes = struct.pack("!QQ", source.disk.stat().st_size, source.memory.stat().st_size)
            send.frame(b"E", 0, 0, sizes)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except (OSError, DriverError) as exc:
        if paused:
            _resume_here(source.qmp)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise CheckpointError(f"checkpoint failed; the VM runs on: {exc}") from exc
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        scanner.shutdown(wait=False, cancel_futures=True)
    stats.bytes = out.stat().st_size
    stats.raw_bytes = hstats.raw_bytes
    stats.region_bytes = dict(hstats.region_bytes)
    stats.total_s = round(time.monotonic() - t_start, 3)
    return stats


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise CheckpointError("the checkpoint is truncated")
    return data


def restore_checkpoint(
    path: Path,
    disk: Path,
    memory: Path,
    base_disk: Path | None,
    base_memory: Path | None,
    memory_mib: int,
) -> None:
    """Rebuild a checkpointed VM: ``disk`` from ``base_disk``, ``memory`` (``memory_mib``
    MiB, from ``base_memory`` or zeros) and its device state beside it
    (:func:`device_state_of`), ready for a workload spec whose ``memory_image`` is
    ``memory``. Either all three are written or none is left.

    Raises:
        CheckpointError: not a checkpoint, truncated or corrupt, or of another memory size.
    """
    state = device_state_of(memory)
    try:
        disk.parent.mkdir(parents=True, exist_ok=True)
        memory.parent.mkdir(parents=True, exist_ok=True)
        files = _start_images(disk, memory, base_disk, base_memory, memory_mib)
        try:
            with path.open("rb") as f:
                if f.read(len(MAGIC)) != MAGIC:
                    raise CheckpointError(f"{path.name} is not a VM checkpoint")
                memory_size = _Intake(files, state).take(lambda n: _read_exact(f, n))
        finally:
            for fd in files.values():
                os.close(fd)
        if memory_size != memory_mib * 1024 * 1024:
            raise CheckpointError(
                f"the checkpoint holds {memory_size >> 20} MiB of RAM, the VM has {memory_mib} MiB"
            )
    except Exception as exc:
        for p in (disk, memory, state):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"restoring the checkpoint failed: {exc}") from exc


__all__ = ["MAGIC", "CheckpointError", "CheckpointStats", "restore_checkpoint", "write_checkpoint"]
