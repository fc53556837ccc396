"""StreamingApplier: rebuild images while segments arrive, in any order, on threads."""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zstandard

from cloudlet.errors import BaseMismatchError, ConflictError, SynthesisError

from ._fs import AtomicFile, os_error, pwrite_all
from ._image import ImageReader, is_qcow2
from ._plan import Plan
from .format import Manifest
from .index import base_digest
from .source import (
    ByteSource,
    decode_segment,
    decompressor,
    load_dictionary,
    read_device_state,
    read_manifest,
)

ReadyCallback = Callable[[np.ndarray], None]
"""Called (from a worker thread) with the target-space chunk indices that became ready."""


@dataclass
class ApplySummary:
    """What an apply wrote."""

    disk: Path
    memory: Path | None
    device_state: Path | None
    disk_size: int
    memory_size: int | None
    segments: int


class StreamingApplier:
    """Applies an overlay from a ByteSource onto a base, segment by segment.

    Usage::

        with StreamingApplier(FileSource(ovl), base, out) as ap:
            ap.prioritize([chunk])      # optional: fetch what a VM needs first
            ap.wait_ready(chunk)        # bytes of `chunk` are in ap.partial_disk
        summary = ap.summary            # outputs were fsynced and renamed into place

    start() checks the manifest and the base digests before it creates any file. Chunk
    indices are in the target space: disk chunks 0..n_disk-1, then memory chunks.
    On any error every temporary output is removed and the error re-raised by wait().
    """

    def __init__(
        self,
        source: ByteSource,
        base: str | os.PathLike[str],
        out: str | os.PathLike[str],
        *,
        memory_base: str | os.PathLike[str] | None = None,
        memory_out: str | os.PathLike[str] | None = None,
        device_state_out: str | os.PathLike[str] | None = None,
        threads: int | None = None,
        force: bool = False,
        on_ready: ReadyCallback | None = None,
    ) -> None:
        self.source = source
        self.base = Path(base)
        self.out = Path(out)
        self.memory_base = Path(memory_base) if memory_base is not None else None
        self.memory_out = Path(memory_out) if memory_out is not None else None
        self.device_state_out = Path(device_state_out) if device_state_out is not None else None
        self.threads = threads or os.cpu_count() or 2
        self.force = force
        self.on_ready = on_ready
        self.manifest: Manifest | None = None
        self.summary: ApplySummary | None = None
        self._plan: Plan | None = None
        self._outputs: list[AtomicFile] = []
        self._readers: list[ImageReader] = []
        self._cond = threading.Condition()
        self._heap: list[tuple[int, int, int]] = []
        self._taken: set[int] = set()
        self._order = itertools.count()
        self._urgency = itertools.count(-1, -1)
        self._error: BaseException | None = None
        self._workers: list[threading.Thread] = []
        self._dict: zstandard.ZstdCompressionDict | None = None
        self._prepared = threading.Event()
        self._flusher: threading.Thread | None = None
        self._finish = threading.Lock()  # wait() and abort() may race (a cancelled caller)
        self._finished = False

    # -- checks -----------------------------------------------------------------------

    def check(self) -> Manifest:
        """Read and validate the manifest and the bases; writes nothing."""
        m = read_manifest(self.source)
        self._check_base(self.base, m.base_size, m.base_digest, "base")
        if self.memory_out is not None:
            if m.memory_size is None:
                raise SynthesisError("the overlay has no memory image")
            if self.device_state_out is not None and not m.has_device_state:
                raise SynthesisError("the overlay has no device state (it cannot be resumed)")
            if m.memory_base_size is not None:
                if self.memory_base is None:
                    raise SynthesisError("the overlay needs its memory base (--memory-base)")
                assert m.memory_base_digest is not None
                self._check_base(
                    self.memory_base, m.memory_base_size, m.memory_base_digest, "memory base"
                )
        elif self.device_state_out is not None:
            raise SynthesisError("a device state output needs a memory output")
        for path in (self.out, self.memory_out, self.device_state_out):
            if path is not None and path.exists() and not self.force:
                raise ConflictError(f"{path} exists (use --force to overwrite)")
        self.manifest = m
        return m

    @staticmethod
    def _check_base(path: Path, size: int, digest: bytes, what: str) -> None:
        if not path.is_file():
            raise SynthesisError(f"no such {what}: {path}")
        if is_qcow2(path):
            raise SynthesisError(
                f"the {what} must be a raw image: qemu-img convert -O raw {path} BASE.raw"
            )
        actual = path.stat().st_size
        if actual != size:
            raise BaseMismatchError(
                f"wrong {what}: {path} has {actual} bytes, the overlay was made on {size}"
            )
        if base_digest(path) != digest:
            raise BaseMismatchError(
                f"wrong {what}: {path} is not the image the overlay was made on (digest differs)"
            )

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Check everything, start the workers, prepare the outputs from the bases.

        Workers fetch and decode segments while the outputs are prepared (a local copy
        of the bases' data, seconds for GiB images) and write only once it is done, so
        the copy hides behind the first segments' transfer. Returns when the outputs
        are prepared: every SAME, ZERO and BASE chunk is then ready."""
        m = self.check() if self.manifest is None else self.manifest
        try:
            self._dict = load_dictionary(self.source, m)
            base_r = self._open(self.base)
            mbase_r = (
                self._open(self.memory_base)
                if self.memory_out is not None and m.memory_base_size is not None
                else None
            )
            disk = AtomicFile(self.out, force=self.force)
            self._outputs.append(disk)
            mem = None
            if self.memory_out is not None:
                mem = AtomicFile(self.memory_out, force=self.force)
                self._outputs.append(mem)
            if self.device_state_out is not None:
                self._outputs.append(AtomicFile(self.device_state_out, force=self.force))
            self._plan = Plan(m, base_r, mbase_r, disk.fd, mem.fd if mem else None)
        except OSError as exc:
            self._cleanup()
            raise os_error(exc, f"writing {self.out}") from exc
        except BaseException:
            self._cleanup()
            raise
        for seg in range(len(m.seg_offset)):
            heapq.heappush(self._heap, (0, next(self._order), seg))
        for i in range(min(self.threads, max(1, len(m.seg_offset)))):
            w = threading.Thread(target=self._work, name=f"overlay-apply-{i}", daemon=True)
            self._workers.append(w)
            w.start()
        try:
            self._plan.prepare()
            if self.on_ready is not None:
                self.on_ready(np.flatnonzero(self._plan.ready))
        except OSError as exc:
            self.abort()
            raise os_error(exc, f"writing {self.out}") from exc
        except BaseException:
            self.abort()
            raise
        self._prepared.set()
        # Flush the prepared bulk while segments stream: the final fsync then has
        # only the segments' chunks left to write.
        self._flusher = threading.Thread(target=self._flush, name="overlay-flush", daemon=True)
        self._flusher.start()

    def _open(self, path: Path) -> ImageReader:
        r = ImageReader(path)
        self._readers.append(r)
        return r

    def prioritize(self, chunks: Iterable[int]) -> None:
        """Fetch the segments holding these target chunks before any other."""
        assert self._plan is not None, "start() first"
        segs = self._plan.segments_of(np.fromiter(chunks, np.int64))
        with self._cond:
            urgency = next(self._urgency)
            for seg in segs:
                if int(seg) not in self._taken:
                    heapq.heappush(self._heap, (urgency, next(self._order), int(seg)))

    @property
    def partial_disk(self) -> Path:
        """The disk image being written (valid for chunks that are ready)."""
        return self._outputs[0].tmp

    def ready_bitmap(self) -> np.ndarray:
        """A copy of the per-chunk ready flags (bool array over the target space)."""
        assert self._plan is not None
        with self._cond:
            return self._plan.ready.copy()

    def is_ready(self, chunk: int) -> bool:
        return bool(self._plan is not None and self._plan.ready[chunk])

    def wait_ready(self, chunk: int, timeout: float | None = None) -> bool:
        """Block until `chunk` is written; False on timeout. Raises the apply's error."""
        assert self._plan is not None, "start() first"
        with self._cond:
            ok = self._cond.wait_for(
                lambda: self._error is not None or bool(self._plan.ready[chunk]), timeout
            )
            if self._error is not None:
                raise self._error
            return ok

    def wait(self) -> ApplySummary:
        """Finish: join the workers, fsync and rename outputs; clean up on error.

        The disk is renamed into place last, so its presence means the memory and
        device state outputs are there too. An abort() from another thread either
        comes first (wait raises) or finds the outputs committed (it does nothing)."""
        for w in self._workers:
            w.join()
        with self._finish:
            self._join_flusher()
            if self._finished:
                raise self._error or SynthesisError("apply aborted")
            self._finished = True
            try:
                if self._error is not None:
                    raise self._error
                assert self._plan is not None and self.manifest is not None
                self._plan.finish()
                if self.device_state_out is not None:
                    state = read_device_state(self.source, self.manifest)
                    assert state is not None
                    pwrite_all(self._outputs[-1].fd, state, 0)
                for f in reversed(self._outputs):
                    f.commit()
            except OSError as exc:
                self._cleanup()
                raise os_error(exc, f"writing {self.out}") from exc
            except BaseException:
                self._cleanup()
                raise
            self._close_readers()
        m = self.manifest
        self.summary = ApplySummary(
            self.out,
            self.memory_out,
            self.device_state_out,
            m.disk_size,
            m.memory_size if self.memory_out else None,
            len(m.seg_offset),
        )
        return self.summary

    def abort(self) -> None:
        """Stop the workers and remove every temporary output."""
        with self._cond:
            if self._error is None:
                self._error = SynthesisError("apply aborted")
            self._heap.clear()
            self._cond.notify_all()
        self._prepared.set()
        for w in self._workers:
            w.join()
        with self._finish:
            self._join_flusher()
            if not self._finished:
                self._finished = True
                self._cleanup()

    def _flush(self) -> None:
        for f in self._outputs:
            with contextlib.suppress(OSError):  # commit's fsync reports what matters
                os.fdatasync(f.fd)

    def _join_flusher(self) -> None:
        if self._flusher is not None:
            self._flusher.join()
            self._flusher = None

    def _cleanup(self) -> None:
        for f in self._outputs:
            f.discard()
        self._close_readers()

    def _close_readers(self) -> None:
        for r in self._readers:
            r.close()
        self._readers.clear()

    def __enter__(self) -> StreamingApplier:
        self.start()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.abort()
        elif self.summary is None:
            self.wait()

    # -- workers ----------------------------------------------------------------------

    def _next(self) -> int | None:
        with self._cond:
            while self._heap and self._error is None:
                _, _, seg = heapq.heappop(self._heap)
                if seg not in self._taken:
                    self._taken.add(seg)
                    return seg
            return None

    def _work(self) -> None:
        assert self._plan is not None and self.manifest is not None
        dctx = decompressor(self._dict)
        while (seg := self._next()) is not None:
            try:
                data = decode_segment(self.source, self.manifest, seg, dctx)
                self._prepared.wait()
                if self._error is not None:
                    return
                written = self._plan.write_segment(seg, data)
            except OSError as exc:
                self._fail(os_error(exc, f"writing {self.out}"))
                return
            except Exception as exc:
                self._fail(exc)
                return
            with self._cond:
                self._plan.ready[written] = True
                self._cond.notify_all()
            if self.on_ready is not None and len(written):
                self.on_ready(written)

    def _fail(self, exc: BaseException) -> None:
        with self._cond:
            if self._error is None:
                self._error = exc
            self._heap.clear()
            self._cond.notify_all()
