"""Create an overlay: classify the chunks of the modified images, then write segments."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import blake3
import numpy as np
import zstandard

from cloudlet.errors import SynthesisError

from . import _segments
from ._classify import Classifier, Target
from ._fs import AtomicFile, os_error, pwrite_all
from ._image import ImageReader, raw_view
from .format import (
    CHUNK_SIZE,
    DELTA,
    HEADER_SIZE,
    KIND_NAMES,
    LITERAL,
    MAX_DEVICE_STATE,
    VERSION,
    Header,
    Manifest,
    compress_manifest,
)
from .index import BaseIndex, build_index

DEFAULT_LEVEL = 3
MAX_LEVEL = 19

Progress = Callable[[str, int, int], None]
"""progress(phase, advance_bytes, phase_total_bytes or 0 when not known in advance)."""


@dataclass
class CreateSummary:
    """What create_overlay wrote."""

    path: Path
    overlay_size: int
    disk_size: int
    memory_size: int | None
    chunks: dict[str, int]
    literal_bytes: int
    segments: int
    seconds: float


def _concat(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if not pairs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])


def _ordered_refs(pairs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Reference values sorted by the position of the chunk that holds them."""
    pos, val = _concat(pairs)
    return val[np.argsort(pos, kind="stable")].astype(np.uint64)


def _merged_index(disk: BaseIndex, memory: BaseIndex | None) -> BaseIndex:
    if memory is None:
        return disk
    fps = np.concatenate((disk.fps, memory.fps))
    chunks = np.concatenate((disk.chunks, memory.chunks + disk.n_chunks))
    # stable: for equal fingerprints the disk base candidate comes first
    order = np.argsort(fps, kind="stable")
    return BaseIndex(disk.size, disk.digest, fps[order], chunks[order])


def create_overlay(
    base: str | os.PathLike[str],
    modified: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    memory_base: str | os.PathLike[str] | None = None,
    memory: str | os.PathLike[str] | None = None,
    device_state: str | os.PathLike[str] | None = None,
    level: int = DEFAULT_LEVEL,
    threads: int | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> CreateSummary:
    """Write the overlay that turns `base` (+ `memory_base`) into `modified` (+ `memory`).

    A VM suspended with its RAM in a file gives `memory` (that file) and `device_state`
    (QEMU's saved device state, e.g. the qemu driver's ``memory.ram`` and ``vmstate``);
    `modified` must be its disk as it was when it was suspended. The overlay then
    resumes the VM where it was instead of booting it.

    Args:
        base, modified: disk images, raw or qcow2.
        out: overlay path; written atomically (temp file, fsync, rename).
        memory_base, memory: optional raw memory images; memory_base needs memory.
        device_state: optional device state that goes with `memory`; needs memory.
        level: 1..19, the zstd level; higher levels also use larger segments and windows.
        threads: compression threads (default: all cores).
        force: replace an existing `out`.
        progress: called as progress(phase, advance, total).

    Raises:
        ConflictError: `out` exists and not force.
        SynthesisError: unreadable input, qemu-img failure, disk full.
    """
    t0 = time.monotonic()
    if not 1 <= level <= MAX_LEVEL:
        raise SynthesisError(f"level must be 1..{MAX_LEVEL}, not {level}")
    if memory_base is not None and memory is None:
        raise SynthesisError("a memory base was given without a memory image")
    if device_state is not None and memory is None:
        raise SynthesisError("a device state was given without a memory image")
    out = Path(out)
    inputs = (base, modified, memory_base, memory, device_state)
    paths = [Path(p) for p in inputs if p is not None]
    for p in paths:
        if not p.is_file():
            raise SynthesisError(f"no such image: {p}")
    if out.resolve() in {p.resolve() for p in paths}:
        raise SynthesisError("the overlay would overwrite one of its inputs")
    state = _read_device_state(Path(device_state)) if device_state is not None else None
    target = AtomicFile(out, force=force)
    try:
        summary = _create(
            Path(base), Path(modified), target, memory_base, memory, state, level, threads,
            progress,
        )  # fmt: skip
        target.commit()
    except OSError as exc:
        target.discard()
        raise os_error(exc, f"creating {out}") from exc
    except BaseException:
        target.discard()
        raise
    summary.seconds = time.monotonic() - t0
    return summary


def _create(
    base: Path,
    modified: Path,
    target: AtomicFile,
    memory_base: str | os.PathLike[str] | None,
    memory: str | os.PathLike[str] | None,
    device_state: bytes | None,
    level: int,
    threads: int | None,
    progress: Progress | None,
) -> CreateSummary:
    scratch = target.path.parent

    def phase(name: str, total: int) -> Callable[[int], None] | None:
        return (lambda n: progress(name, n, total)) if progress else None

    with contextlib.ExitStack() as stack:
        base_size = os.stat(base).st_size
        disk_index = build_index(base, phase("index base", base_size))
        mem_index = None
        if memory_base is not None:
            mb = Path(memory_base)
            mem_index = build_index(mb, phase("index memory base", mb.stat().st_size))
        base_raw = stack.enter_context(raw_view(base, scratch))
        mod_raw = stack.enter_context(raw_view(modified, scratch))
        base_r = stack.enter_context(ImageReader(base_raw))
        mod_r = stack.enter_context(ImageReader(mod_raw))
        base_readers = [(0, base_r)]
        targets = [Target(mod_r, base_r, 0, 0, base_r.n_chunks)]
        mem_r = mbase_r = None
        if memory is not None:
            mem_r = stack.enter_context(ImageReader(Path(memory)))
            if memory_base is not None:
                mbase_r = stack.enter_context(ImageReader(Path(memory_base)))
                base_readers.append((base_r.n_chunks, mbase_r))
            n_base = base_r.n_chunks + (mbase_r.n_chunks if mbase_r else 0)
            targets.append(Target(mem_r, mbase_r, mod_r.n_chunks, base_r.n_chunks, n_base))
        n_total = sum(t.image.n_chunks for t in targets)
        total_bytes = sum(t.image.size for t in targets)
        classifier = Classifier(
            targets,
            _merged_index(disk_index, mem_index),
            base_readers,
            n_total,
            phase("compare", total_bytes),
        )
        writer = _segments.SegmentWriter(
            target.fd,
            HEADER_SIZE,
            classifier,
            targets,
            level,
            _threads(threads, level),
            phase("compress", 0),
        )
        try:
            # literal slots go to the compressors while later windows are compared
            done = 0
            cls = classifier.result
            for cls in classifier.run():
                for lit in cls.literals[done:]:
                    writer.add(lit, is_delta=False)
                done = len(cls.literals)
            deltas = np.concatenate(cls.deltas) if cls.deltas else np.zeros(0, np.int64)
            writer.add(deltas, is_delta=True)
            seg = writer.close()
        except BaseException:
            writer.abort()
            raise
        fd = target.fd
        data_end = seg.end
        state_fields = {}
        if device_state is not None:
            stored_state = zstandard.ZstdCompressor(level=19).compress(device_state)
            pwrite_all(fd, stored_state, data_end)
            state_fields = {
                "device_state_offset": data_end,
                "device_state_length": len(stored_state),
                "device_state_raw_length": len(device_state),
                "device_state_digest": blake3.blake3(stored_state).digest(),
            }
            data_end += len(stored_state)
        slot_targets = np.concatenate([*cls.literals, deltas])
        slot = np.empty(n_total, np.int64)
        slot[slot_targets] = np.arange(len(slot_targets))
        has_slot = (cls.kinds == LITERAL) | (cls.kinds == DELTA)
        manifest = Manifest(
            disk_size=mod_r.size,
            base_size=base_r.size,
            base_digest=disk_index.digest,
            kinds=cls.kinds,
            base_ref=_ordered_refs(cls.base_ref),
            copy_ref=_ordered_refs(cls.copy_ref),
            slot=slot[has_slot].astype(np.uint32),
            seg_offset=seg.offsets,
            seg_length=seg.lengths,
            seg_slots=seg.slots,
            seg_digest=seg.digests,
            memory_size=mem_r.size if mem_r else None,
            memory_base_size=mbase_r.size if mbase_r else None,
            memory_base_digest=mem_index.digest if mem_index else None,
            disk_digest=targets[0].hasher.digest(),
            memory_digest=targets[1].hasher.digest() if mem_r else bytes(32),
            level=level,
            version=VERSION if device_state is not None else 1,
            **state_fields,  # type: ignore[arg-type]
        )
        raw = manifest.encode()
        stored = compress_manifest(raw)
        m_off = data_end
        pwrite_all(fd, stored, m_off)
        total = m_off + len(stored)
        header = Header(
            m_off, len(stored), len(raw), total, blake3.blake3(raw).digest(), manifest.version
        )
        pwrite_all(fd, header.encode(), 0)
        os.ftruncate(fd, total)
        counts = np.bincount(cls.kinds, minlength=len(KIND_NAMES))
        return CreateSummary(
            path=target.path,
            overlay_size=total,
            disk_size=mod_r.size,
            memory_size=mem_r.size if mem_r else None,
            chunks={name: int(c) for name, c in zip(KIND_NAMES, counts, strict=True)},
            literal_bytes=len(slot_targets) * CHUNK_SIZE,
            segments=len(seg.offsets),
            seconds=0.0,
        )


def _read_device_state(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise os_error(exc, f"reading {path}") from exc
    if not data:
        raise SynthesisError(f"the device state {path} is empty")
    if len(data) > MAX_DEVICE_STATE:
        raise SynthesisError(
            f"the device state {path} has {len(data)} bytes, more than {MAX_DEVICE_STATE}: "
            "was the VM's RAM saved with it (x-ignore-shared off)?"
        )
    return data


def _threads(threads: int | None, level: int) -> int:
    n = threads or os.cpu_count() or 1
    # 32 MiB segments at high levels need ~250 MB of zstd state per thread: stay < 1 GB
    return min(n, 2) if level >= 16 else n


__all__ = ["DEFAULT_LEVEL", "MAX_LEVEL", "CreateSummary", "Progress", "create_overlay"]
