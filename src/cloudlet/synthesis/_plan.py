"""The write plan of an apply: which chunk comes from where, computed once with numpy."""

from __future__ import annotations

import os

import numpy as np

from ._fs import copy_range, punch_hole, pwrite_all, sparse_copy
from ._image import LANES, ImageReader
from .format import BASE, CHUNK_SIZE, COPY, DELTA, LITERAL, ZERO, Manifest


def runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end positions of the runs of consecutive integers in `values`."""
    if not len(values):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    breaks = np.flatnonzero(np.diff(values) != 1) + 1
    return np.concatenate(([0], breaks)), np.concatenate((breaks, [len(values)]))


class Plan:
    """Prepares outputs from the bases and writes decoded segments into them."""

    def __init__(
        self,
        m: Manifest,
        base: ImageReader,
        memory_base: ImageReader | None,
        disk_fd: int,
        memory_fd: int | None,
    ) -> None:
        self.m = m
        self.base = base
        self.memory_base = memory_base
        self.disk_fd = disk_fd
        self.memory_fd = memory_fd
        self.n_disk = m.n_disk
        n = m.n_disk + m.n_memory
        kinds = m.kinds
        slot_of = np.full(n, -1, np.int64)
        lit = np.flatnonzero((kinds == LITERAL) | (kinds == DELTA))
        slot_of[lit] = m.slot
        copies = np.flatnonzero(kinds == COPY)
        slot_of[copies] = slot_of[m.copy_ref.astype(np.int64)]
        self.slot_of = slot_of
        # DELTA slots are XORed with the base chunk at their owner's offset
        self.slot_xor = np.full(m.n_slots, -1, np.int64)
        dl = np.flatnonzero(kinds == DELTA)
        self.slot_xor[slot_of[dl]] = self.same_offset_base(dl)
        self.seg_first = m.seg_first_slot
        users = np.flatnonzero(slot_of >= 0)
        if memory_fd is None:
            users = users[users < self.n_disk]
        seg = np.searchsorted(self.seg_first, slot_of[users], side="right") - 1
        order = np.argsort(seg, kind="stable")
        self.users = users[order]
        self.bounds = np.searchsorted(seg[order], np.arange(len(self.seg_first) + 1))
        self.ready = (kinds != LITERAL) & (kinds != DELTA) & (kinds != COPY)
        if memory_fd is None:
            self.ready[self.n_disk :] = False

    def same_offset_base(self, tidx: np.ndarray) -> np.ndarray:
        mem = tidx >= self.n_disk
        return np.where(mem, tidx - self.n_disk + self.m.n_base_disk, tidx)

    def segments_of(self, chunks: np.ndarray) -> np.ndarray:
        slots = self.slot_of[chunks]
        slots = slots[slots >= 0]
        return np.unique(np.searchsorted(self.seg_first, slots, side="right") - 1)

    # -- preparation from the bases ------------------------------------------------------

    def prepare(self) -> None:
        m = self.m
        self._prepare(self.disk_fd, m.disk_size, self.base, 0, self.n_disk)
        if self.memory_fd is not None:
            assert m.memory_size is not None
            self._prepare(self.memory_fd, m.memory_size, self.memory_base, self.n_disk, m.n_memory)

    def _prepare(
        self, fd: int, size: int, same: ImageReader | None, first: int, count: int
    ) -> None:
        os.ftruncate(fd, size)
        base_size = same.size if same is not None else 0
        if same is not None:
            sparse_copy(same.fd, fd, min(base_size, size))
        kinds = self.m.kinds[first : first + count]
        # Only chunks over copied base data need holes; the rest already reads as zeros.
        zeros = np.flatnonzero(kinds == ZERO)
        zeros = zeros[zeros * CHUNK_SIZE < base_size]
        for a, b in zip(*runs(zeros), strict=True):
            off = int(zeros[a]) * CHUNK_SIZE
            punch_hole(fd, off, min(int(zeros[b - 1] + 1) * CHUNK_SIZE, base_size) - off)
        all_base = np.flatnonzero(self.m.kinds == BASE)
        sel = (all_base >= first) & (all_base < first + count)
        pos = all_base[sel] - first
        refs = self.m.base_ref[sel].astype(np.int64)
        self._copy_base_runs(fd, pos, refs)

    def _copy_base_runs(self, fd: int, pos: np.ndarray, refs: np.ndarray) -> None:
        if not len(pos):
            return
        n_bd = self.m.n_base_disk
        in_mem = refs >= n_bd
        # one run = consecutive targets, consecutive sources, same source file
        key = refs - pos + in_mem * (1 << 62)
        brk = np.flatnonzero((np.diff(pos) != 1) | (np.diff(key) != 0)) + 1
        starts = np.concatenate(([0], brk))
        ends = np.concatenate((brk, [len(pos)]))
        for a, b in zip(starts, ends, strict=True):
            src = self.memory_base if in_mem[a] else self.base
            assert src is not None
            s0 = int(refs[a]) - (n_bd if in_mem[a] else 0)
            src_off = s0 * CHUNK_SIZE
            dst_off = int(pos[a]) * CHUNK_SIZE
            want = int(b - a) * CHUNK_SIZE
            have = min(want, src.size - src_off)
            copy_range(src.fd, fd, src_off, dst_off, have)
            if have < want:  # the base's partial last chunk reads as zero-padded
                pwrite_all(fd, bytes(want - have), dst_off + have)

    # -- segments ----------------------------------------------------------------------

    def base_rows(self, idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), LANES), np.uint64)
        n_bd = self.m.n_base_disk
        mem = idx >= n_bd
        if (~mem).any():
            out[~mem] = self.base.gather(idx[~mem])
        if mem.any():
            assert self.memory_base is not None
            out[mem] = self.memory_base.gather(idx[mem] - n_bd)
        return out

    def write_segment(self, seg: int, data: bytes) -> np.ndarray:
        """Write every chunk that segment `seg` provides; return their indices."""
        a, b = int(self.bounds[seg]), int(self.bounds[seg + 1])
        targets = self.users[a:b]
        if not len(targets):
            return targets
        local = self.slot_of[targets] - self.seg_first[seg]
        xor = self.slot_xor[local + self.seg_first[seg]]
        src = memoryview(data)
        dsel = np.flatnonzero(xor >= 0)
        if len(dsel):
            rows = np.frombuffer(data, np.uint64).reshape(-1, LANES).copy()
            ds = np.unique(local[dsel])  # a slot may feed several chunks: XOR it once
            rows[ds] ^= self.base_rows(self.slot_xor[ds + self.seg_first[seg]])
            self.base.drop_pages()
            src = memoryview(rows.view(np.uint8).reshape(-1))
        split = int(np.searchsorted(targets, self.n_disk))
        for fd, lo, hi, first in (
            (self.disk_fd, 0, split, 0),
            (self.memory_fd, split, len(targets), self.n_disk),
        ):
            if fd is None or lo == hi:
                continue
            t, s = targets[lo:hi], local[lo:hi]
            # a run: consecutive targets fed by consecutive slots, written straight
            # from the decompressed buffer
            brk = np.flatnonzero((np.diff(t) != 1) | (np.diff(s) != 1)) + 1
            for a, b in zip(np.r_[0, brk], np.r_[brk, len(t)], strict=True):
                pwrite_all(
                    fd,
                    src[int(s[a]) * CHUNK_SIZE : (int(s[a]) + int(b - a)) * CHUNK_SIZE],
                    (int(t[a]) - first) * CHUNK_SIZE,
                )
        return targets

    def finish(self) -> None:
        os.ftruncate(self.disk_fd, self.m.disk_size)
        if self.memory_fd is not None:
            assert self.m.memory_size is not None
            os.ftruncate(self.memory_fd, self.m.memory_size)
