"""Live VM handoff between two qemu drivers: only what differs from a shared base travels.

The destination holds the base disk (and, if there is one, the base RAM image the
app's memory was made against). The source sends, over a TCP stream, the 4 KiB
chunks of the VM's disk and RAM that differ from what the destination has, while
the VM keeps running; each pre-copy round sends only the chunks that changed since
the last round (the guest's RAM is a shared file, so the host reads it as it is; the
disk is a raw file). When a round is small enough (or rounds stop shrinking), the
source pauses the guest (QMP ``stop`` drains and flushes its disk), sends the last
delta and the device state (a QEMU migration with ``x-ignore-shared``: devices only,
hundreds of KiB) and waits for the destination to say the VM runs there. Only then
does the source QEMU quit; on any failure before that (the destination dies or
refuses, the link stays down) the source guest is let run again, with one exception
below.

Why content comparison and not QEMU's own dirty tracking: QEMU's dirty bitmaps for
disks can only be read out through an NBD export with the ``qemu:dirty-bitmap``
metadata context, and its RAM dirty log is internal to its migration; QEMU 7.2 has
no ``mapped-ram`` (9.0+) to write RAM against a base file either. Comparing each
round's image with the last one is exact, costs one read per round of the parts of
RAM and disk that hold data (SEEK_DATA: a hole where the destination holds zeros too
is skipped; the two are compared side by side, while the round before is sent), and
needs nothing from QEMU but the device state. The base is mapped copy-on-write, not
read up front.

A broken link does not restart the transfer. The destination keeps its partial disk
and RAM across connections, and every chunk frame is followed by a mark (``R`` with a
sequence number); on each (re)connect it first says how far it got: the last mark it
took in. The source keeps, per mark the destination has not confirmed, the chunk
indexes it sent before it; after a reconnect it resends those (with what they hold
now) besides the usual changes: for every other chunk the destination holds exactly
what the source remembers as sent. Reconnects go through the same ``connect``
callable, with backoff, until ``resume_within_s`` after the break.

Never two live copies: the destination runs the VM only once it has the complete
``E``. A break before the source handed ``E`` to its kernel lets the paused source
guest run again at once (the destination cannot have it); a break after that leaves
it paused until the destination's hello on a reconnect says which: ``done`` (the VM
runs there; the answer was lost) or how far it got (then it does not run it, and the
source guest runs again). If no reconnect succeeds in time, the source cannot know:
:class:`HandoffUncertain`, its guest stays paused, and the caller asks a third party.

Wire format (big-endian)::

    hello  (destination -> source, first on every connection) := 'H' status:u8 mark:u32
           status 0 resume: it holds everything sent up to mark ``mark`` (0: the base)
           status 1 done: the VM runs at the destination already
    then frames, source -> destination, one after another:
    frame  := kind:u8 region:u8 count:u32 length:u32 payload[length]
    kind   'C' chunks: payload = zstd(u32 index * count ++ 4 KiB data * count)
           'R' mark: count = its sequence number (1, 2, ...), no payload; after every 'C'
           'S' device state: payload = zstd(the migration stream)
           'E' end: payload = disk size:u64 memory size:u64
    region 0 disk, 1 memory
    answer (destination -> source, after 'E'): b"OK" or b"NO" + u32 length + message
    ack    (source -> destination, after b"OK" or a done hello): b"K"
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import struct
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zstandard

from cloudlet.compute.base import WorkloadSpec, WorkloadState
from cloudlet.compute.qemu import _vm
from cloudlet.compute.qemu._config import MEMORY_FILE, device_state_of
from cloudlet.compute.qemu._driver import QemuDriver
from cloudlet.compute.qemu._qmp import QmpSession
from cloudlet.compute.qemu._resume import (
    _DONE,
    _HELLO,
    _RESUME,
    Accept,
    Connect,
    HandoffError,
    HandoffUncertain,
    _Link,
    _LinkDown,
    _next_source,
    _recv_exact,
    _ResendLog,
    _send_all,
    _settle,
    tcp_accept,
    tcp_connect,
)
from cloudlet.errors import DriverError

CHUNK = 4096
#: Chunks per frame: frames of up to 4 MiB keep the link busy while the next is read.
FRAME_CHUNKS = 1024
#: Chunks compared at a time (16 MiB).
WINDOW_CHUNKS = 4096
_HEADER = struct.Struct("!BBII")
DISK, MEMORY = 0, 1
_REGION_NAMES = {DISK: "disk", MEMORY: "memory"}
_IGNORE_SHARED = {"capabilities": [{"capability": "x-ignore-shared", "state": True}]}

log = logging.getLogger(__name__)


@dataclass
class HandoffStats:
    """What one handoff cost, as the source saw it."""

    rounds: list[dict[str, float]] = field(default_factory=list)  # chunks, bytes, seconds
    bytes_sent: int = 0  # whole frames over all connections (one a break cut is not)
    raw_bytes: int = 0  # before compression
    region_bytes: dict[str, int] = field(default_factory=lambda: {"disk": 0, "memory": 0})
    device_state_bytes: int = 0
    downtime_s: float = 0.0  # guest paused at the source until it ran at the destination
    total_s: float = 0.0
    reconnects: int = 0  # connections after the first (bytes count over all of them)


def _live(path: Path) -> np.ndarray:
    """The file's bytes as 4 KiB rows, mapped (no copy: a round reads only what it
    compares and copies only what it sends); a private copy when not 4 KiB aligned."""
    size = path.stat().st_size
    if size and size % CHUNK == 0:
        return np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, CHUNK)
    return _read(path)


def _read(path: Path) -> np.ndarray:
    """The file's bytes as 4 KiB rows (zero padded), a private copy."""
    data = np.fromfile(path, dtype=np.uint8)
    pad = (-len(data)) % CHUNK
    if pad:
        data = np.concatenate([data, np.zeros(pad, np.uint8)])
    return data.reshape(-1, CHUNK)


def _base(path: Path | None, rows: int) -> np.ndarray:
    """What the destination starts from, as ``rows`` 4 KiB rows we may write to: the
    base mapped copy-on-write (read only where compared, copied only where sent; a
    2 GiB base read up front took longer than the first round's transfer)."""
    if path is None:
        return np.zeros((rows, CHUNK), np.uint8)
    if rows and path.stat().st_size >= rows * CHUNK:
        return np.memmap(path, dtype=np.uint8, mode="c", shape=(rows, CHUNK))
    base = _read(path)
    if len(base) < rows:
        base = np.concatenate([base, np.zeros((rows - len(base), CHUNK), np.uint8)])
    return base[:rows]


def _windows(path: Path | None, rows: int) -> np.ndarray:
    """Per window of ``rows``: whether the file may hold data there (False: a hole,
    zeros), from SEEK_DATA/SEEK_HOLE; all True where the file system cannot say."""
    n = -(-rows // WINDOW_CHUNKS)
    out = np.zeros(n, bool)
    if path is None:
        return out
    span = WINDOW_CHUNKS * CHUNK
    fd = os.open(path, os.O_RDONLY)
    try:
        end, at = min(os.fstat(fd).st_size, rows * CHUNK), 0
        while at < end:
            try:
                start = os.lseek(fd, at, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after ``at``
                break
            at = min(os.lseek(fd, start, os.SEEK_HOLE), end)
            out[start // span : -(-at // span)] = True
    except OSError:
        out[:] = True
    finally:
        os.close(fd)
    return out


def _dirty(cur: np.ndarray, prev: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
    """Indexes of the rows that differ, compared a window at a time (the temporaries
    stay small), only in the windows ``where`` says either side may hold data."""
    a, b = cur.view(np.uint64), prev.view(np.uint64)
    found = []
    for start in range(0, len(a), WINDOW_CHUNKS):
        if where is not None and not where[start // WINDOW_CHUNKS]:
            continue
        ne = a[start : start + WINDOW_CHUNKS] != b[start : start + WINDOW_CHUNKS]
        if ne.any():
            found.append(np.flatnonzero(ne.any(axis=1)) + start)
    return np.concatenate(found).astype(np.uint32) if found else np.zeros(0, np.uint32)


class _Sender:
    """Frames onto the socket; chunk frames are compressed by a small pool (zstd lets
    go of the GIL) while earlier ones are being sent."""

    def __init__(self, sock: socket.socket, stats: HandoffStats, pool: ThreadPoolExecutor) -> None:
        self.sock = sock
        self.stats = stats
        self.pool = pool
        self.zstd = zstandard.ZstdCompressor(level=1)

    def frame(self, kind: bytes, region: int, count: int, payload: bytes) -> None:
        _send_all(self.sock, _HEADER.pack(kind[0], region, count, len(payload)) + payload)
        self.stats.bytes_sent += _HEADER.size + len(payload)

    def chunks(
        self, region: int, data: np.ndarray, index: np.ndarray, marks: _ResendLog | None = None
    ) -> int:
        """Send rows ``data`` (one per entry of ``index``, already copied out); with
        ``marks``, each frame is registered there before anything goes, and followed by
        its mark."""

        def pack(start: int) -> tuple[int, int, bytes]:
            part = index[start : start + FRAME_CHUNKS]
            rows = data[start : start + FRAME_CHUNKS]
            raw = part.astype(">u4").tobytes() + rows.tobytes()
            return len(part), len(raw), zstandard.ZstdCompressor(level=1).compress(raw)

        starts = range(0, len(index), FRAME_CHUNKS)
        seqs = (
            [marks.register(region, index[i : i + FRAME_CHUNKS]) for i in starts] if marks else []
        )
        sent = 0
        for n, (count, raw_len, packed) in enumerate(self.pool.map(pack, starts)):
            self.stats.raw_bytes += raw_len
            self.stats.region_bytes[_REGION_NAMES[region]] += _HEADER.size + len(packed)
            self.frame(b"C", region, count, packed)
            sent += _HEADER.size + len(packed)
            if seqs:
                self.frame(b"R", 0, seqs[n], b"")
                sent += _HEADER.size
        return sent


@dataclass(frozen=True)
class LiveSource:
    """The running VM to hand off, and the base the destination holds."""

    qmp: Path
    disk: Path
    memory: Path
    base_disk: Path | None
    base_memory: Path | None = None

    @classmethod
    def of(
        cls,
        driver: QemuDriver,
        workload_id: str,
        base_disk: Path | None,
        base_memory: Path | None = None,
    ) -> LiveSource:
        """The live files of a running workload of ``driver``.

        Raises:
            DriverError: it is not running.
        """
        w = driver._get(workload_id)
        if w.rt.qmp is None or w.child is None or w.spec.disk_image is None:
            raise DriverError(f"workload {workload_id!r} is not a running VM with a disk")
        return cls(Path(w.rt.qmp), w.spec.disk_image, w.path / MEMORY_FILE, base_disk, base_memory)


def send_live(
    source: LiveSource,
    connect: Connect,
    *,
    max_rounds: int = 8,
    final_bytes: int = 256 * 1024,
    target_pause_s: float = 0.1,
    answer_timeout: float = 120.0,
    resume_within_s: float = 60.0,
    link_timeout_s: float = 30.0,
    on_paused: Callable[[], None] | None = None,
) -> HandoffStats:
    """Hand the VM over through connections from ``connect``; on success its QEMU here
    is paused for good (the caller stops the workload); on failure the guest runs on
    here, except after :class:`HandoffUncertain`.

    Pre-copy rounds go on while the last one shrank, fewer than ``max_rounds`` ran
    (since the last reconnect), and it moved more raw bytes than the larger of
    ``final_bytes`` and what the link moves in ``target_pause_s`` (at the pace the
    fastest round so far showed): the last delta is sent with the guest paused, so it
    should take about that long. A connection that breaks (or makes no progress for
    ``link_timeout_s``) is reopened until ``resume_within_s`` after the break, and the
    transfer goes on from where the destination got to.

    Raises:
        HandoffUncertain: the destination may run the VM; the guest here stays paused.
        HandoffError: the transfer or the resume at the destination failed, or no
            connection came back in time; the guest runs on here.
    """
    stats = HandoffStats()
    t_start = time.monotonic()
    pool = ThreadPoolExecutor(2, thread_name_prefix="handoff-zstd")
    images = [(DISK, source.disk, source.base_disk), (MEMORY, source.memory, source.base_memory)]
    current = {r: _live(p) for r, p, _ in images}
    sent_view = {r: _base(b, len(current[r])) for r, _, b in images}
    # Windows where what the destination holds may not be zeros: the base's data, and
    # wherever we sent something. Elsewhere a hole in the live file needs no compare.
    held = {r: _windows(b, len(current[r])) for r, _, b in images}
    marks = _ResendLog()
    link = _Link(connect, resume_within_s, link_timeout_s)

    # Regions are compared side by side, and while the one before is being sent.
    scanner = ThreadPoolExecutor(2, thread_name_prefix="handoff-scan")

    def scan(
        region: int, path: Path, rows: np.ndarray, again: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The region's changed rows (and ``again``, to send whatever they hold): their
        indexes and one copy of them, taken once: the guest writes on meanwhile, and
        what we remember as sent must be exactly what went."""
        index = _dirty(rows, sent_view[region], held[region] | _windows(path, len(rows)))
        if again is not None and len(again):
            index = np.union1d(index, again[again < len(rows)]).astype(np.uint32)
        return index, np.array(rows[index])

    def submit(rows: dict[int, np.ndarray], again: dict[int, np.ndarray]) -> list:
        return [scanner.submit(scan, r, p, rows[r], again.get(r)) for r, p, _ in images]

    def send_scanned(send: _Sender, scans: list) -> tuple[int, int]:
        chunks = wire = 0
        for (region, _, _), scanned in zip(images, scans, strict=True):
            index, data = scanned.result()
            # Remembered before it goes: what a break cuts off is in ``marks``.
            sent_view[region][index] = data
            held[region][index // WINDOW_CHUNKS] = True
            wire += send.chunks(region, data, index, marks)
            chunks += len(index)
        return chunks, wire

    paused = False  # the guest here is stopped
    handed = False  # 'E' went to the kernel: the destination may run the VM now
    t_pause = 0.0
    pace = 0.0  # raw bytes per second the best round moved
    try:
        status, mark = link.open()
        while True:
            try:
                if status == _DONE:
                    if not handed:  # cannot happen: it would be two live copies
                        raise HandoffError("the destination runs a VM it was never handed")
                    link.ack()
                    break
                if handed:  # it holds less than all: it does not run it, we do again
                    _resume_here(source.qmp)
                    paused = handed = False
                again = marks.confirm(mark)
                assert link.sock is not None
                send = _Sender(link.sock, stats, pool)
                last = None
                for n in range(max_rounds):
                    t0 = time.monotonic()
                    if n or stats.rounds:
                        current = {r: _live(p) for r, p, _ in images}
                    chunks, wire = send_scanned(send, submit(current, again))
                    again = {}
                    seconds = time.monotonic() - t0
                    stats.rounds.append(
                        {"chunks": chunks, "bytes": wire, "seconds": round(seconds, 3)}
                    )
                    raw = chunks * CHUNK
                    if seconds > 0.05:
                        pace = max(pace, raw / seconds)
                    small = raw <= max(final_bytes, pace * target_pause_s)
                    if small or (last is not None and raw >= last):
                        break
                    last = raw
                with QmpSession(source.qmp, timeout=answer_timeout) as session:
                    session.execute("stop")
                    paused, t_pause = True, time.monotonic()
                    if on_paused is not None:
                        on_paused()
                    t0 = time.monotonic()
                    scans = submit({r: _live(p) for r, p, _ in images}, again)
                    state = _device_state(session, answer_timeout)  # while the last delta is found
                chunks, wire = send_scanned(send, scans)
                packed = send.zstd.compress(state)
                stats.device_state_bytes = len(state)
                send.frame(b"S", 0, 1, packed)
                sizes = struct.pack("!QQ", source.disk.stat().st_size, source.memory.stat().st_size)
                send.frame(b"E", 0, 0, sizes)
                handed = True
                stats.rounds.append(
                    {
                        "chunks": chunks,
                        "bytes": wire + len(packed),
                        "seconds": round(time.monotonic() - t0, 3),
                        "paused": 1,
                    }
                )
                assert link.sock is not None
                link.sock.settimeout(answer_timeout)
                verdict = _recv_exact(link.sock, 2)
                if verdict != b"OK":
                    (length,) = struct.unpack("!I", _recv_exact(link.sock, 4))
                    message = _recv_exact(link.sock, length).decode(errors="replace")
                    handed = False  # it said no: it does not run it
                    raise HandoffError(f"the destination could not resume the VM: {message}")
                link.ack()
                break
            except _LinkDown as exc:
                if paused and not handed:  # the destination cannot have it: run on here
                    _resume_here(source.qmp)
                    paused = False
                log.warning(
                    "handoff link broke (%s); reconnecting%s",
                    exc, " with the guest paused: the destination may run it" if handed else "",
                )  # fmt: skip
                stats.reconnects += 1
                status, mark = link.open()
        stats.downtime_s = round(time.monotonic() - t_pause, 3)
    except (OSError, HandoffError, DriverError) as exc:
        if handed:
            stats.total_s = round(time.monotonic() - t_start, 3)
            raise HandoffUncertain(
                f"handoff uncertain; the VM is paused at the source: the link broke after "
                f"the last frame and the destination did not say whether it runs it: {exc}",
                stats,
            ) from exc
        if paused:
            _resume_here(source.qmp)
        raise HandoffError(f"handoff failed; the VM runs on at the source: {exc}") from exc
    finally:
        link.close()
        pool.shutdown(wait=False, cancel_futures=True)
        scanner.shutdown(wait=False, cancel_futures=True)
    stats.total_s = round(time.monotonic() - t_start, 3)
    return stats


def _device_state(session: QmpSession, timeout: float) -> bytes:
    """The paused guest's device state (RAM left out: it is shared and sent already)."""
    session.execute("migrate-set-capabilities", _IGNORE_SHARED)
    with tempfile.TemporaryFile() as tmp:
        session.send_fd(tmp.fileno(), "handoff")
        session.execute("migrate", {"uri": "fd:handoff"})
        _vm._wait_migration(session, timeout, "saving the device state")
        tmp.seek(0)
        return tmp.read()


def _resume_here(qmp: Path) -> None:
    """Let the source guest run again after a failed handoff (from paused or postmigrate)."""
    with contextlib.suppress(DriverError), QmpSession(qmp, timeout=10) as session:
        with contextlib.suppress(DriverError):
            session.execute("migrate_cancel")
        session.execute("cont")


def _start_images(
    disk: Path, memory: Path, base_disk: Path | None, base_memory: Path | None, memory_mib: int
) -> dict[int, int]:
    """What a VM stream is written onto: ``disk`` a copy of the base disk (empty without
    one), ``memory`` of the base RAM (zeros without one) at ``memory_mib`` MiB; both
    opened for writing, by region."""
    if base_disk is not None:
        _vm.copy_sparse(base_disk, disk)
    else:
        disk.touch()
    if base_memory is not None:
        _vm.copy_sparse(base_memory, memory)
    else:
        memory.unlink(missing_ok=True)
    with memory.open("ab") as f:
        f.truncate(memory_mib * 1024 * 1024)
    return {DISK: os.open(disk, os.O_RDWR), MEMORY: os.open(memory, os.O_RDWR)}


class _Intake:
    """The destination's files and how far the stream got, kept across connections."""

    def __init__(self, files: dict[int, int], state: Path) -> None:
        self.files = files
        self.state = state
        self.mark = 0  # the last mark taken in: everything before it is written
        self.unzstd = zstandard.ZstdDecompressor()

    def take(self, read: Callable[[int], bytes]) -> int:
        """Write the frames ``read(n)`` yields (exactly ``n`` bytes each call, from a
        connection or a checkpoint file) up to the 'E'; returns the memory size it names.

        Raises:
            _LinkDown: the connection broke; what came before the last mark is kept.
            HandoffError: a frame makes no sense (not a link matter).
        """
        with contextlib.suppress(FileNotFoundError):
            self.state.unlink()  # a device state from a broken final phase is stale
        while True:
            kind, region, count, length = _HEADER.unpack(read(_HEADER.size))
            payload = read(length) if length else b""
            if kind == ord("C"):
                if region not in self.files:
                    raise HandoffError(f"unknown region {region}")
                raw = self.unzstd.decompress(payload, max_output_size=count * (CHUNK + 4))
                _write_runs(self.files[region], raw, count)
            elif kind == ord("R"):
                self.mark = count
            elif kind == ord("S"):
                self.state.write_bytes(self.unzstd.decompress(payload, max_output_size=64 << 20))
            elif kind == ord("E"):
                disk_size, memory_size = struct.unpack("!QQ", payload)
                os.ftruncate(self.files[DISK], disk_size)
                if not self.state.is_file():
                    raise HandoffError("the stream ended without the device state")
                return int(memory_size)
            else:
                raise HandoffError(f"unknown frame kind {kind}")


def receive_live(
    accept: Accept,
    driver: QemuDriver,
    spec: WorkloadSpec,
    base_disk: Path | None,
    base_memory: Path | None = None,
    *,
    accept_within_s: float = 120.0,
    link_timeout_s: float = 30.0,
) -> str:
    """Take a VM in from connections from ``accept`` and run it as ``spec`` (its
    ``disk_image`` is written; created from ``base_disk``). Returns the workload's
    endpoint once the guest runs and the source knows it (or stopped asking).

    A connection that breaks is followed by the next one ``accept`` gives within
    ``accept_within_s``; the partial disk and RAM stay, and the source goes on from
    the last mark they hold.

    Raises:
        HandoffError: no source came back in time, a frame made no sense, or the VM
            did not resume; nothing is kept.
    """
    if spec.disk_image is None:
        raise HandoffError("a handoff needs the spec's disk image path")
    disk = spec.disk_image
    work = Path(tempfile.mkdtemp(prefix="cloudlet-handoff-", dir=disk.parent))
    # Written aside until the last frame: a destination that gives up after its
    # instance moved on (the source settled it with the controller) removes only its
    # own partial files, never what the site may start at the instance's disk path.
    partial = work / "disk.img"
    memory = work / "memory.ram"
    state = device_state_of(memory)
    placed = created = False
    conn: socket.socket | None = None
    try:
        files = _start_images(partial, memory, base_disk, base_memory, spec.memory_mib)
        intake = _Intake(files, state)
        try:
            while True:
                conn = _next_source(accept, accept_within_s, link_timeout_s)
                try:
                    _send_all(conn, _HELLO.pack(b"H", _RESUME, intake.mark))
                    intake.take(lambda n, c=conn: _recv_exact(c, n))
                    break
                except _LinkDown as exc:
                    log.warning("handoff link broke at mark %d (%s); waiting", intake.mark, exc)
                    conn.close()
                    conn = None
        finally:
            for fd in files.values():
                os.close(fd)
        os.replace(partial, disk)
        placed = True
        driver.create(dataclasses.replace(spec, memory_image=memory))
        created = True
        status = driver.start(spec.workload_id)
        if status.state is not WorkloadState.RUNNING:
            raise HandoffError(f"the VM did not resume: {status.reason}")
    except Exception as exc:
        message = str(exc).encode()[:2000]
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.sendall(b"NO" + struct.pack("!I", len(message)) + message)
            conn.close()
        if created:
            with contextlib.suppress(DriverError):
                driver.delete(spec.workload_id)
        if placed:
            with contextlib.suppress(FileNotFoundError):
                disk.unlink()
        if isinstance(exc, HandoffError):
            raise
        raise HandoffError(f"receiving the VM failed: {exc}") from exc
    finally:
        for path in (partial, memory, state):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        with contextlib.suppress(OSError):
            work.rmdir()
    _settle(conn, accept, accept_within_s, link_timeout_s)
    return status.endpoint or ""


def _write_runs(fd: int, raw: bytes, count: int) -> None:
    """Write a chunk frame's ``count`` chunks, one ``pwrite`` per run of consecutive
    indexes (a chunk at a time kept a destination's CPU busy at 100 Mbit/s)."""
    index = np.frombuffer(raw[: 4 * count], ">u4").astype(np.int64)
    body = memoryview(raw)[4 * count :]
    cuts = (np.flatnonzero(np.diff(index) != 1) + 1).tolist()
    for start, end in zip([0, *cuts], [*cuts, count], strict=True):
        os.pwrite(fd, body[start * CHUNK : end * CHUNK], int(index[start]) * CHUNK)


def resume_source(driver: QemuDriver, workload_id: str) -> None:
    """After :class:`HandoffUncertain` settled as failed: let the paused source guest run."""
    w = driver._get(workload_id)
    if w.rt.qmp is not None:
        _resume_here(Path(w.rt.qmp))


def finish_source(driver: QemuDriver, workload_id: str) -> None:
    """After a handoff succeeded: end the paused source QEMU and forget the workload."""
    w = driver._get(workload_id)
    if w.rt.qmp is not None:
        _vm.command(Path(w.rt.qmp), "quit")
    driver.delete(workload_id)


__all__ = [
    "Accept",
    "Connect",
    "HandoffError",
    "HandoffStats",
    "HandoffUncertain",
    "LiveSource",
    "finish_source",
    "receive_live",
    "resume_source",
    "send_live",
    "tcp_accept",
    "tcp_connect",
]
