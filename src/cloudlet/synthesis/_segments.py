"""Writing literal slots as independently zstd-compressed segments, on a thread pool."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import blake3
import numpy as np
import zstandard

from ._classify import Classifier, Target
from ._fs import pwrite_all
from .format import CHUNK_SIZE, DIGEST_SIZE


@dataclass
class SegmentTable:
    offsets: np.ndarray
    lengths: np.ndarray
    slots: np.ndarray
    digests: np.ndarray
    end: int


def segment_chunks(level: int) -> int:
    """Slots per segment: larger segments give zstd more context at high levels."""
    if level >= 16:
        return 8192  # 32 MiB
    if level >= 10:
        return 2048  # 8 MiB
    return 1024  # 4 MiB


def compression_params(level: int, nbytes: int) -> zstandard.ZstdCompressionParameters:
    window = max(10, min(27, (max(nbytes, 1) - 1).bit_length()))
    return zstandard.ZstdCompressionParameters.from_level(
        level, window_log=window, enable_ldm=level >= 16, threads=0
    )


def same_offset_base(tidx: np.ndarray, targets: list[Target]) -> np.ndarray:
    """Base-space index of the base chunk at the same offset as each target chunk."""
    out = tidx.copy()
    for t in targets:
        sel = tidx >= t.first
        out[sel] = tidx[sel] - t.first + t.base_first
    return out


def write_segments(
    fd: int,
    start: int,
    slot_targets: np.ndarray,
    is_delta: np.ndarray,
    classifier: Classifier,
    targets: list[Target],
    level: int,
    threads: int,
    progress: Callable[[int], None] | None,
) -> SegmentTable:
    per = segment_chunks(level)
    local = threading.local()

    def build(a: int, b: int) -> tuple[bytes, bytes, int]:
        tidx = slot_targets[a:b]
        rows = classifier.target_rows(tidx, runs=True)
        dsel = np.flatnonzero(is_delta[a:b])
        if len(dsel):
            rows[dsel] ^= classifier.base_rows(same_offset_base(tidx[dsel], targets), runs=True)
        data = rows.view(np.uint8).reshape(-1)
        comp = getattr(local, "comp", None)
        if comp is None:
            params = compression_params(level, per * CHUNK_SIZE)
            comp = local.comp = zstandard.ZstdCompressor(compression_params=params)
        blob = comp.compress(data)
        return blob, blake3.blake3(blob).digest(), b - a

    offsets, lengths, slots, digests = [], [], [], []
    pos = start
    pending: deque[Future[tuple[bytes, bytes, int]]] = deque()

    def drain_one() -> None:
        nonlocal pos
        blob, digest, count = pending.popleft().result()
        pwrite_all(fd, blob, pos)
        offsets.append(pos)
        lengths.append(len(blob))
        slots.append(count)
        digests.append(np.frombuffer(digest, np.uint8))
        pos += len(blob)
        for _, reader in classifier.base_readers:
            reader.drop_pages()
        for t in targets:
            t.image.drop_pages()
        if progress:
            progress(count * CHUNK_SIZE)

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="overlay-zstd") as pool:
        try:
            for a in range(0, len(slot_targets), per):
                pending.append(pool.submit(build, a, min(a + per, len(slot_targets))))
                if len(pending) > threads:
                    drain_one()
            while pending:
                drain_one()
        finally:
            for f in pending:
                f.cancel()
    return SegmentTable(
        offsets=np.array(offsets, np.uint64),
        lengths=np.array(lengths, np.uint32),
        slots=np.array(slots, np.uint32),
        digests=(np.stack(digests) if digests else np.zeros((0, DIGEST_SIZE), np.uint8)),
        end=pos,
    )
