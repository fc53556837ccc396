"""Vectorized chunk classification: zero, same, base reference, copy, literal or delta."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import blake3
import numpy as np

from ._image import LANES, ImageReader
from .format import BASE, CHUNK_SIZE, COPY, DELTA, LITERAL, SAME, ZERO
from .index import WINDOW_CHUNKS, BaseIndex, fingerprint

# A changed chunk is stored as XOR against the base chunk at its offset when at least this
# many of its 512 8-byte lanes are unchanged: the XOR is then mostly zeros and compresses
# far better than the chunk itself.
DELTA_MIN_EQUAL_LANES = 128
_SUB = 256  # rows per sub-block for the equality pass: temporaries stay in cache


@dataclass
class Target:
    """One image being encoded: its reader, its same-offset base and its chunk offset."""

    image: ImageReader
    base: ImageReader | None
    first: int  # index of its first chunk in the target space
    base_first: int  # index of its same-offset base in the base space
    allow_base_limit: int  # BASE references must be below this base-space index
    hasher: blake3.blake3 = field(default_factory=lambda: blake3.blake3(max_threads=2))


@dataclass
class Classification:
    """The chunk map under construction, over the whole target space."""

    kinds: np.ndarray
    base_ref: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    copy_ref: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    literals: list[np.ndarray] = field(default_factory=list)
    deltas: list[np.ndarray] = field(default_factory=list)
    seen_fps: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    seen_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def _unchanged(rows: np.ndarray, base: np.ndarray) -> np.ndarray:
    out = np.empty(len(rows), bool)
    for s in range(0, len(rows), _SUB):
        out[s : s + _SUB] = ~(rows[s : s + _SUB] != base[s : s + _SUB]).any(axis=1)
    return out


class Classifier:
    """Walks targets window by window, filling a Classification without per-chunk loops."""

    def __init__(
        self,
        targets: list[Target],
        index: BaseIndex,
        base_readers: list[tuple[int, ImageReader]],
        n_total: int,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.targets = targets
        self.index = index
        self.base_readers = base_readers  # (first base-space index, reader)
        self.result = Classification(kinds=np.zeros(n_total, np.uint8))
        self.progress = progress

    def target_rows(self, idx: np.ndarray, runs: bool = False) -> np.ndarray:
        """Rows for target-space indices, from whichever image holds them.

        runs=True reads runs of consecutive chunks with pread (for long ascending
        lists); otherwise rows are gathered through the mmap (for scattered ones).
        """
        return self._gather(idx, [(t.first, t.image) for t in self.targets], runs)

    def base_rows(self, idx: np.ndarray, runs: bool = False) -> np.ndarray:
        return self._gather(idx, self.base_readers, runs)

    @staticmethod
    def _gather(
        idx: np.ndarray, parts: list[tuple[int, ImageReader]], runs: bool = False
    ) -> np.ndarray:
        out = np.empty((len(idx), LANES), np.uint64)
        for i, (first, reader) in enumerate(parts):
            upper = parts[i + 1][0] if i + 1 < len(parts) else None
            sel = idx >= first if upper is None else (idx >= first) & (idx < upper)
            if sel.any():
                sub = idx[sel] - first
                out[sel] = reader.rows(sub) if runs else reader.gather(sub)
        return out

    def run(self) -> Iterator[Classification]:
        """Classify window by window, yielding the growing result after each window."""
        buf = np.empty((WINDOW_CHUNKS, LANES), np.uint64)
        bbuf = np.empty((WINDOW_CHUNKS, LANES), np.uint64)
        for t in self.targets:
            n = t.image.n_chunks
            for start in range(0, n, WINDOW_CHUNKS):
                stop = min(start + WINDOW_CHUNKS, n)
                rows = t.image.window(start, stop, buf)
                nbytes = min(t.image.size, stop * CHUNK_SIZE) - start * CHUNK_SIZE
                t.hasher.update(memoryview(rows.view(np.uint8).reshape(-1))[:nbytes])
                self._window(t, start, rows, bbuf)
                for _, reader in self.base_readers:
                    reader.drop_pages()
                t.image.drop_pages()
                if self.progress:
                    self.progress(nbytes)
                yield self.result

    def _window(self, t: Target, start: int, rows: np.ndarray, bbuf: np.ndarray) -> None:
        res = self.result
        n = len(rows)
        kinds = res.kinds[t.first + start : t.first + start + n]
        base_stop = min(start + n, t.base.n_chunks if t.base else 0)
        same = np.zeros(n, bool)
        base_win = None
        base_data = np.zeros(n, bool)
        mod_data = t.image.data_mask(start, start + n)
        if base_stop > start:
            base_win = t.base.window(start, base_stop, bbuf)
            base_data[: base_stop - start] = t.base.data_mask(start, base_stop)
            # over base holes a chunk is unchanged iff it is zero; compare only the rest
            cmp = np.flatnonzero(base_data & mod_data)
            same[cmp] = _unchanged(rows[cmp], base_win[cmp])
        within = np.arange(n) < base_stop - start
        same |= ~mod_data & ~base_data & within  # hole in both
        kinds[same] = SAME
        changed = np.flatnonzero(~same)
        crow = rows[changed]
        nonzero = crow.any(axis=1)
        zero = ~nonzero
        zc = changed[zero]
        kinds[zc] = np.where(within[zc] & ~base_data[zc], SAME, ZERO)
        changed, crow = changed[nonzero], crow[nonzero]
        if not len(changed):
            return
        fps = fingerprint(crow)
        # 1. a chunk anywhere in the base (disk base, then memory base)
        cand = self.index.lookup(fps)
        ok = (cand >= 0) & (cand < t.allow_base_limit)
        if ok.any():
            pos = np.flatnonzero(ok)
            eq = (self.base_rows(cand[pos]) == crow[pos]).all(axis=1)
            pos = pos[eq]
            kinds[changed[pos]] = BASE
            res.base_ref.append((t.first + start + changed[pos], cand[pos]))
            keep = np.ones(len(changed), bool)
            keep[pos] = False
            changed, crow, fps = changed[keep], crow[keep], fps[keep]
        if not len(changed):
            return
        # 2. an earlier chunk of this overlay
        tidx = t.first + start + changed
        is_lit = self._dedup(tidx, crow, fps)
        changed, crow, tidx = changed[is_lit], crow[is_lit], tidx[is_lit]
        # 3. literal, or XOR-delta against the base at the same offset
        delta = np.zeros(len(changed), bool)
        if base_win is not None:
            inb = np.flatnonzero(base_data[changed])
            inb = inb[base_win[changed[inb]].any(axis=1)]  # XOR with zeros gains nothing
            equal = np.count_nonzero(crow[inb] == base_win[changed[inb]], axis=1)
            delta[inb] = equal >= DELTA_MIN_EQUAL_LANES
        kinds[changed[delta]] = DELTA
        kinds[changed[~delta]] = LITERAL
        res.deltas.append(tidx[delta])
        res.literals.append(tidx[~delta])

    def _dedup(self, tidx: np.ndarray, rows: np.ndarray, fps: np.ndarray) -> np.ndarray:
        """Mark COPY chunks; return the mask of chunks that stay literal."""
        res = self.result
        src = np.full(len(tidx), -1, np.int64)
        _, first, inverse = np.unique(fps, return_index=True, return_inverse=True)
        # earlier windows
        if len(res.seen_fps):
            pos = np.minimum(np.searchsorted(res.seen_fps, fps[first]), len(res.seen_fps) - 1)
            hit = np.flatnonzero(res.seen_fps[pos] == fps[first])
            if len(hit):
                earlier = res.seen_idx[pos[hit]]
                eq = (self.target_rows(earlier) == rows[first[hit]]).all(axis=1)
                src[first[hit[eq]]] = earlier[eq]
        # this window: later duplicates follow their first occurrence (or its source)
        lead = first[inverse]
        dup = np.flatnonzero(lead != np.arange(len(tidx)))
        if len(dup):
            eq = (rows[dup] == rows[lead[dup]]).all(axis=1)
            dup = dup[eq]
            src[dup] = np.where(src[lead[dup]] >= 0, src[lead[dup]], tidx[lead[dup]])
        is_copy = src >= 0
        if is_copy.any():
            res.kinds[tidx[is_copy]] = COPY
            res.copy_ref.append((tidx[is_copy], src[is_copy]))
        new = first[src[first] < 0]
        if len(new):
            fps_all = np.concatenate((res.seen_fps, fps[new]))
            idx_all = np.concatenate((res.seen_idx, tidx[new]))
            order = np.argsort(fps_all, kind="stable")
            res.seen_fps, res.seen_idx = fps_all[order], idx_all[order]
        return ~is_copy
