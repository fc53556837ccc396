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


PROBE_FROM_LEVEL = 10
INCOMPRESSIBLE = 0.9


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


class SegmentWriter:
    """Compresses slots into segments on a thread pool while classification goes on.

    add() queues slots (target chunk indices, in slot order); full segments go to the
    pool at once, and results are written in order, so slot numbers are add() order.
    """

    def __init__(
        self,
        fd: int,
        start: int,
        classifier: Classifier,
        targets: list[Target],
        level: int,
        threads: int,
        progress: Callable[[int], None] | None,
    ) -> None:
        self.fd = fd
        self.pos = start
        self.classifier = classifier
        self.targets = targets
        self.level = level
        self.threads = threads
        self.progress = progress
        self.per = segment_chunks(level)
        self._local = threading.local()
        self._queued: list[tuple[np.ndarray, np.ndarray]] = []
        self._n_queued = 0
        self._pending: deque[Future[tuple[bytes, bytes, int]]] = deque()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="overlay-zstd")
        self.offsets: list[int] = []
        self.lengths: list[int] = []
        self.slots: list[int] = []
        self.digests: list[np.ndarray] = []

    def add(self, tidx: np.ndarray, is_delta: bool) -> None:
        if not len(tidx):
            return
        self._queued.append((tidx, np.full(len(tidx), is_delta)))
        self._n_queued += len(tidx)
        while self._n_queued >= self.per:
            self._submit(self.per)

    def _submit(self, count: int) -> None:
        tidx = np.concatenate([q[0] for q in self._queued])
        delta = np.concatenate([q[1] for q in self._queued])
        rest = (tidx[count:], delta[count:])
        self._queued = [rest] if len(rest[0]) else []
        self._n_queued = len(rest[0])
        self._pending.append(self._pool.submit(self._build, tidx[:count], delta[:count]))
        if len(self._pending) > self.threads:
            self._drain_one()

    def _build(self, tidx: np.ndarray, delta: np.ndarray) -> tuple[bytes, bytes, int]:
        rows = self.classifier.target_rows(tidx, runs=True)
        dsel = np.flatnonzero(delta)
        if len(dsel):
            same = same_offset_base(tidx[dsel], self.targets)
            rows[dsel] ^= self.classifier.base_rows(same, runs=True)
        data = rows.view(np.uint8).reshape(-1)
        local = self._local
        if getattr(local, "comp", None) is None:
            params = compression_params(self.level, self.per * CHUNK_SIZE)
            local.comp = zstandard.ZstdCompressor(compression_params=params)
            local.fast = zstandard.ZstdCompressor(level=1)
        blob = None
        if self.level >= PROBE_FROM_LEVEL:
            # Already-compressed data (packages, media) gains nothing from slow levels.
            probe = local.fast.compress(data)
            if len(probe) > INCOMPRESSIBLE * len(data):
                blob = probe
        if blob is None:
            blob = local.comp.compress(data)
        return blob, blake3.blake3(blob).digest(), len(tidx)

    def _drain_one(self) -> None:
        blob, digest, count = self._pending.popleft().result()
        pwrite_all(self.fd, blob, self.pos)
        self.offsets.append(self.pos)
        self.lengths.append(len(blob))
        self.slots.append(count)
        self.digests.append(np.frombuffer(digest, np.uint8))
        self.pos += len(blob)
        if self.progress:
            self.progress(count * CHUNK_SIZE)

    def close(self) -> SegmentTable:
        """Flush the last partial segment, wait for all, and return the segment table."""
        try:
            if self._n_queued:
                self._submit(self._n_queued)
            while self._pending:
                self._drain_one()
        finally:
            self.abort()
        return SegmentTable(
            offsets=np.array(self.offsets, np.uint64),
            lengths=np.array(self.lengths, np.uint32),
            slots=np.array(self.slots, np.uint32),
            digests=(
                np.stack(self.digests) if self.digests else np.zeros((0, DIGEST_SIZE), np.uint8)
            ),
            end=self.pos,
        )

    def abort(self) -> None:
        for f in self._pending:
            f.cancel()
        self._pool.shutdown(wait=True)
