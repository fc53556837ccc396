"""Base image index: blake3 digest and a fingerprint table of its chunks, cached beside it."""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import blake3
import numpy as np

from cloudlet.errors import SynthesisError

from ._image import LANES, ImageReader, raw_view
from .format import CHUNK_SIZE

WINDOW_CHUNKS = 16384  # 64 MiB
INDEX_SUFFIX = ".cloudlet-index"
_MAGIC = b"CLIDX\x00\x00\x01"
_HEAD = struct.Struct("<8s QQQQ 32s Q")

# Odd 64-bit multipliers, one per uint64 lane: the fingerprint is sum(lane * K) mod 2**64,
# i.e. one uint64 matrix-vector product per window. It is only a candidate filter;
# every match is confirmed by comparing bytes.
_K = np.random.default_rng(0x0C10D1E7).integers(0, 2**63, LANES, dtype=np.uint64) * np.uint64(
    2
) + np.uint64(1)

Progress = Callable[[int], None]


def fingerprint(rows: np.ndarray) -> np.ndarray:
    """64-bit fingerprint of each row of a (n, 512) uint64 array."""
    if not len(rows):
        return np.zeros(0, np.uint64)
    return rows @ _K


@dataclass
class BaseIndex:
    """Digest and sorted fingerprints of the non-zero chunks of a base image."""

    size: int
    digest: bytes
    fps: np.ndarray  # uint64, sorted
    chunks: np.ndarray  # int64, chunk index of each fingerprint

    @property
    def n_chunks(self) -> int:
        return -(-self.size // CHUNK_SIZE)

    def lookup(self, fps: np.ndarray) -> np.ndarray:
        """Candidate base chunk for each fingerprint, or -1."""
        if not len(self.fps):
            return np.full(len(fps), -1, np.int64)
        pos = np.searchsorted(self.fps, fps)
        pos_c = np.minimum(pos, len(self.fps) - 1)
        hit = self.fps[pos_c] == fps
        return np.where(hit, self.chunks[pos_c], -1)


def _stat_key(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino


def index_path(base: Path) -> Path:
    """Where the index of `base` lives: beside it, or in the user cache if that is read-only."""
    beside = base.with_name(base.name + INDEX_SUFFIX)
    if os.access(base.parent, os.W_OK):
        return beside
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cloudlet" / "index"
    return cache / (blake3.blake3(str(base.resolve()).encode()).hexdigest()[:32] + INDEX_SUFFIX)


def _check(key: tuple[int, int, int], digest: bytes, n: int) -> int:
    """Checksum of the header fields: a damaged cache must not vouch for a wrong digest."""
    data = struct.pack("<QQQQ", *key, n) + digest
    return int.from_bytes(blake3.blake3(data).digest()[:8], "little")


def _read(path: Path, key: tuple[int, int, int], header_only: bool) -> BaseIndex | None:
    try:
        with open(path, "rb") as f:
            head = f.read(_HEAD.size)
            if len(head) != _HEAD.size:
                return None
            magic, size, mtime, ino, check, digest, n = _HEAD.unpack(head)
            if magic != _MAGIC or (size, mtime, ino) != key or check != _check(key, digest, n):
                return None
            if header_only:
                return BaseIndex(size, digest, np.zeros(0, np.uint64), np.zeros(0, np.int64))
            fps = np.fromfile(f, dtype="<u8", count=n)
            chunks = np.fromfile(f, dtype="<i8", count=n)
    except OSError:
        return None
    n_chunks = -(-size // CHUNK_SIZE)
    if (
        len(fps) != n
        or len(chunks) != n
        or (n and not 0 <= chunks.min() <= chunks.max() < n_chunks)
    ):
        return None
    return BaseIndex(size, digest, fps, chunks)


def _write(path: Path, key: tuple[int, int, int], index: BaseIndex) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            n = len(index.fps)
            f.write(_HEAD.pack(_MAGIC, *key, _check(key, index.digest, n), index.digest, n))
            f.write(index.fps.astype("<u8").tobytes())
            f.write(index.chunks.astype("<i8").tobytes())
        os.replace(tmp, path)
    except OSError:
        # A cache we cannot write is only a slower next run, never a failure.
        with contextlib.suppress(OSError):
            tmp.unlink()


def scan(raw: Path, progress: Progress | None = None) -> BaseIndex:
    """Hash and fingerprint a raw image in windows (one pass, bounded memory)."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    fps_parts, idx_parts = [], []
    with ImageReader(raw) as img:
        buf = np.empty((WINDOW_CHUNKS, LANES), np.uint64)
        for start in range(0, img.n_chunks, WINDOW_CHUNKS):
            stop = min(start + WINDOW_CHUNKS, img.n_chunks)
            rows = img.window(start, stop, buf)
            nbytes = min(img.size, stop * CHUNK_SIZE) - start * CHUNK_SIZE
            hasher.update(memoryview(rows.view(np.uint8).reshape(-1))[:nbytes])
            nz = np.flatnonzero(rows.any(axis=1))
            fps_parts.append(fingerprint(rows[nz]))
            idx_parts.append(nz + start)
            if progress:
                progress(nbytes)
        size = img.size
    fps = np.concatenate(fps_parts) if fps_parts else np.zeros(0, np.uint64)
    chunks = np.concatenate(idx_parts) if idx_parts else np.zeros(0, np.int64)
    order = np.argsort(fps, kind="stable")
    return BaseIndex(size, hasher.digest(), fps[order], chunks[order].astype(np.int64))


def build_index(base: str | os.PathLike[str], progress: Progress | None = None) -> BaseIndex:
    """Load the cached index of `base`, or build (and cache) it if missing or stale.

    Raises:
        SynthesisError: the image cannot be read.
    """
    base = Path(base)
    if not base.is_file():
        raise SynthesisError(f"no such image: {base}")
    key = _stat_key(base)
    where = index_path(base)
    cached = _read(where, key, header_only=False)
    if cached is not None:
        return cached
    with raw_view(base, where.parent if os.access(where.parent, os.W_OK) else None) as raw:
        index = scan(raw, progress)
    _write(where, key, index)
    return index


def base_digest(base: str | os.PathLike[str], progress: Progress | None = None) -> bytes:
    """blake3 digest of a raw base, from the cached index when it is current."""
    base = Path(base)
    if not base.is_file():
        raise SynthesisError(f"no such image: {base}")
    cached = _read(index_path(base), _stat_key(base), header_only=True)
    if cached is not None:
        return cached.digest
    return build_index(base, progress).digest
