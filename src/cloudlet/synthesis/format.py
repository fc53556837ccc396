"""Overlay format v2: header, manifest and chunk kinds (spec in docs/overlay-format.md).

Version 2 adds the VM's device state (a QEMU migration stream) next to its memory, so
that a site can resume the VM instead of booting it. Version 1 overlays are still read.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import blake3
import numpy as np
import zstandard

from cloudlet.errors import OverlayFormatError

MAGIC = b"CLOUDOVL"
VERSION = 2
#: Versions this build reads. It writes VERSION for overlays with device state and
#: version 1 for the others, which older readers still take.
READABLE_VERSIONS = (1, 2)
CHUNK_SIZE = 4096
DIGEST_SIZE = 32

# Chunk kinds, one uint8 per chunk of the target space (disk chunks, then memory chunks).
ZERO = 0  # all zero bytes
SAME = 1  # the base chunk at the same offset (disk base for disk, memory base for memory)
BASE = 2  # base chunk at any index of the base space (disk base chunks, then memory base)
COPY = 3  # the same bytes as an earlier LITERAL or DELTA chunk of this overlay
LITERAL = 4  # bytes stored in a segment slot
DELTA = 5  # segment slot holds (chunk XOR base chunk at the same offset)
KIND_NAMES = ("zero", "same", "base", "copy", "literal", "delta")

_HEADER = struct.Struct("<8sII QQQQQ 32s")
HEADER_SIZE = _HEADER.size + 8  # + 8-byte blake3 check over the rest of the header

_FIXED_V1 = struct.Struct("<I I Q Q I i Q32s Q32s 32s32s QQ32s")
# v2 appends the device state: offset, stored length, raw length, digest of the stored bytes
_FIXED = struct.Struct(_FIXED_V1.format + "QQQ32s")
_F_MEMORY, _F_MEMORY_BASE, _F_DICT, _F_DEVICE_STATE = 1, 2, 4, 8
#: Largest device state accepted (QEMU's are KiB to a few MiB without shared RAM).
MAX_DEVICE_STATE = 256 << 20
_MAX_MANIFEST = 1 << 32


@dataclass(frozen=True)
class Header:
    """Fixed-size file header: where the manifest lives and its root digest."""

    manifest_offset: int
    manifest_length: int
    manifest_raw_length: int
    total_length: int
    root_digest: bytes
    version: int = VERSION

    def encode(self) -> bytes:
        body = _HEADER.pack(
            MAGIC,
            self.version,
            HEADER_SIZE,
            0,
            self.manifest_offset,
            self.manifest_length,
            self.manifest_raw_length,
            self.total_length,
            self.root_digest,
        )
        return body + blake3.blake3(body).digest()[:8]


def decode_header(data: bytes) -> Header:
    """Parse and check the header; raise OverlayFormatError on anything unexpected."""
    if len(data) < 16:
        raise OverlayFormatError("not an overlay: file too short for a header")
    if data[:8] != MAGIC:
        raise OverlayFormatError("not an overlay: bad magic")
    version, size = struct.unpack_from("<II", data, 8)
    if version not in READABLE_VERSIONS:
        readable = ", ".join(map(str, READABLE_VERSIONS))
        raise OverlayFormatError(
            f"unsupported overlay version {version} (this build reads versions {readable})"
        )
    if size != HEADER_SIZE or len(data) < HEADER_SIZE:
        raise OverlayFormatError("truncated or corrupt overlay header")
    body = data[: _HEADER.size]
    if blake3.blake3(body).digest()[:8] != data[_HEADER.size : HEADER_SIZE]:
        raise OverlayFormatError("corrupt overlay header (checksum mismatch)")
    _, _, _, _flags, m_off, m_len, m_raw, total, root = _HEADER.unpack(body)
    if m_off < HEADER_SIZE or m_off + m_len > total or m_raw > _MAX_MANIFEST:
        raise OverlayFormatError("corrupt overlay header (manifest out of range)")
    return Header(m_off, m_len, m_raw, total, root, version)


def _chunks(size: int) -> int:
    return -(-size // CHUNK_SIZE)


@dataclass
class Manifest:
    """Everything needed to rebuild the images, apart from the segment payloads."""

    disk_size: int
    base_size: int
    base_digest: bytes
    kinds: np.ndarray  # uint8, one per target chunk
    base_ref: np.ndarray  # uint64, per BASE chunk in chunk order: index into the base space
    copy_ref: np.ndarray  # uint64, per COPY chunk: index of the earlier chunk it copies
    slot: np.ndarray  # uint32, per LITERAL/DELTA chunk: its slot in the segments
    seg_offset: np.ndarray  # uint64, file offset of each segment
    seg_length: np.ndarray  # uint32, compressed length
    seg_slots: np.ndarray  # uint32, slots (4 KiB each, decompressed) per segment
    seg_digest: np.ndarray  # uint8 (n_segments, 32), blake3 of the compressed bytes
    memory_size: int | None = None
    memory_base_size: int | None = None
    memory_base_digest: bytes | None = None
    disk_digest: bytes = bytes(DIGEST_SIZE)
    memory_digest: bytes = bytes(DIGEST_SIZE)
    level: int = 0
    dict_offset: int = 0
    dict_length: int = 0
    dict_digest: bytes = bytes(DIGEST_SIZE)
    device_state_offset: int = 0
    device_state_length: int = 0  # stored (zstd) bytes; 0: no device state
    device_state_raw_length: int = 0
    device_state_digest: bytes = bytes(DIGEST_SIZE)
    chunk_size: int = CHUNK_SIZE
    root_digest: bytes = field(default=b"", compare=False)
    version: int = field(default=VERSION, compare=False)  # written in, or read from

    @property
    def has_device_state(self) -> bool:
        """Whether the overlay carries the VM's device state, i.e. can be resumed."""
        return self.device_state_length > 0

    @property
    def n_disk(self) -> int:
        return _chunks(self.disk_size)

    @property
    def n_memory(self) -> int:
        return _chunks(self.memory_size or 0)

    @property
    def n_base_disk(self) -> int:
        return _chunks(self.base_size)

    @property
    def n_base_memory(self) -> int:
        return _chunks(self.memory_base_size or 0)

    @property
    def n_slots(self) -> int:
        return int(self.seg_slots.sum())

    @property
    def seg_first_slot(self) -> np.ndarray:
        return np.concatenate(([0], np.cumsum(self.seg_slots, dtype=np.int64)[:-1])).astype(
            np.int64
        )

    def encode(self) -> bytes:
        flags = (
            (_F_MEMORY if self.memory_size is not None else 0)
            | (_F_MEMORY_BASE if self.memory_base_size is not None else 0)
            | (_F_DICT if self.dict_length else 0)
            | (_F_DEVICE_STATE if self.device_state_length else 0)
        )
        values = [
            self.chunk_size,
            len(self.seg_offset),
            self.disk_size,
            self.memory_size or 0,
            flags,
            self.level,
            self.base_size,
            self.base_digest,
            self.memory_base_size or 0,
            self.memory_base_digest or bytes(DIGEST_SIZE),
            self.disk_digest,
            self.memory_digest,
            self.dict_offset,
            self.dict_length,
            self.dict_digest,
        ]
        if self.version >= 2:
            values += [
                self.device_state_offset,
                self.device_state_length,
                self.device_state_raw_length,
                self.device_state_digest,
            ]
        elif self.device_state_length:
            raise ValueError("a version 1 manifest cannot hold device state")
        parts = [(_FIXED if self.version >= 2 else _FIXED_V1).pack(*values)]
        for arr, dtype in self._arrays():
            data = np.ascontiguousarray(arr, dtype=dtype).tobytes()
            parts += [struct.pack("<Q", len(data)), data]
        return b"".join(parts)

    def _arrays(self) -> list[tuple[np.ndarray, str]]:
        return [
            (self.kinds, "<u1"),
            (self.base_ref, "<u8"),
            (self.copy_ref, "<u8"),
            (self.slot, "<u4"),
            (self.seg_offset, "<u8"),
            (self.seg_length, "<u4"),
            (self.seg_slots, "<u4"),
            (self.seg_digest.reshape(-1), "<u1"),
        ]


def zstd_bound(raw_length: int) -> int:
    """An upper bound of a zstd frame's size for ``raw_length`` bytes (ZSTD_compressBound,
    rounded up)."""
    return raw_length + (raw_length >> 8) + 1024


def compress_manifest(raw: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=19).compress(raw)


def decode_manifest(header: Header, stored: bytes) -> Manifest:
    """Decompress, check the root digest, parse and validate a manifest."""
    if len(stored) != header.manifest_length:
        raise OverlayFormatError("truncated overlay (manifest cut short)")
    try:
        raw = zstandard.ZstdDecompressor().decompress(
            stored, max_output_size=header.manifest_raw_length
        )
    except zstandard.ZstdError as exc:
        raise OverlayFormatError(f"corrupt overlay manifest ({exc})") from exc
    if blake3.blake3(raw).digest() != header.root_digest:
        raise OverlayFormatError("corrupt overlay manifest (root digest mismatch)")
    try:
        manifest = _parse(raw, header.version)
    except (struct.error, ValueError) as exc:
        raise OverlayFormatError(f"corrupt overlay manifest ({exc})") from exc
    manifest.root_digest = header.root_digest
    manifest.version = header.version
    validate(manifest, header.manifest_offset)
    return manifest


def _parse(raw: bytes, version: int) -> Manifest:
    fixed = _FIXED if version >= 2 else _FIXED_V1
    values = fixed.unpack_from(raw, 0)
    (cs, n_seg, disk, mem, flags, level, bsize, bdig, mbsize, mbdig, ddig, mdig, doff, dlen, dd) = (
        values[:15]
    )
    soff, slen, sraw, sdig = values[15:] if version >= 2 else (0, 0, 0, bytes(DIGEST_SIZE))
    has_state = bool(flags & _F_DEVICE_STATE)
    if has_state and not slen:
        raise ValueError("device state flag without device state")
    pos = fixed.size
    dtypes = ["<u1", "<u8", "<u8", "<u4", "<u8", "<u4", "<u4", "<u1"]
    arrays = []
    for dtype in dtypes:
        (nbytes,) = struct.unpack_from("<Q", raw, pos)
        pos += 8
        if pos + nbytes > len(raw) or nbytes % np.dtype(dtype).itemsize:
            raise ValueError("array out of range")
        arrays.append(
            np.frombuffer(raw, dtype=dtype, count=nbytes // np.dtype(dtype).itemsize, offset=pos)
        )
        pos += nbytes
    if pos != len(raw):
        raise ValueError("trailing bytes")
    kinds, base_ref, copy_ref, slot, seg_off, seg_len, seg_slots, seg_dig = arrays
    if len(seg_dig) != n_seg * DIGEST_SIZE:
        raise ValueError("segment table size mismatch")
    return Manifest(
        disk_size=disk,
        base_size=bsize,
        base_digest=bdig,
        kinds=kinds,
        base_ref=base_ref,
        copy_ref=copy_ref,
        slot=slot,
        seg_offset=seg_off,
        seg_length=seg_len,
        seg_slots=seg_slots,
        seg_digest=seg_dig.reshape(n_seg, DIGEST_SIZE),
        memory_size=mem if flags & _F_MEMORY else None,
        memory_base_size=mbsize if flags & _F_MEMORY_BASE else None,
        memory_base_digest=mbdig if flags & _F_MEMORY_BASE else None,
        disk_digest=ddig,
        memory_digest=mdig,
        level=level,
        dict_offset=doff if flags & _F_DICT else 0,
        dict_length=dlen if flags & _F_DICT else 0,
        dict_digest=dd,
        device_state_offset=soff if has_state else 0,
        device_state_length=slen if has_state else 0,
        device_state_raw_length=sraw if has_state else 0,
        device_state_digest=sdig if has_state else bytes(DIGEST_SIZE),
        chunk_size=cs,
    )


def validate(m: Manifest, data_end: int) -> None:
    """Check every structural invariant so that apply can trust the manifest."""

    def bad(why: str) -> OverlayFormatError:
        return OverlayFormatError(f"corrupt overlay manifest ({why})")

    if m.chunk_size != CHUNK_SIZE:
        raise bad(f"chunk size {m.chunk_size}")
    n = m.n_disk + m.n_memory
    if len(m.kinds) != n:
        raise bad("chunk map length does not match the image sizes")
    counts = np.bincount(m.kinds, minlength=len(KIND_NAMES))
    if len(counts) > len(KIND_NAMES):
        raise bad("unknown chunk kind")
    if (
        counts[BASE] != len(m.base_ref)
        or counts[COPY] != len(m.copy_ref)
        or counts[LITERAL] + counts[DELTA] != len(m.slot)
    ):
        raise bad("reference counts do not match the chunk map")
    idx = np.arange(n, dtype=np.int64)
    is_mem = idx >= m.n_disk
    # SAME and DELTA need a base chunk at the same offset.
    within = np.where(is_mem, idx - m.n_disk < m.n_base_memory, idx < m.n_base_disk)
    if not within[(m.kinds == SAME) | (m.kinds == DELTA)].all():
        raise bad("same-offset reference beyond the base")
    base_pos = np.flatnonzero(m.kinds == BASE)
    limit = np.where(is_mem[base_pos], m.n_base_disk + m.n_base_memory, m.n_base_disk)
    if (m.base_ref >= limit.astype(np.uint64)).any():
        raise bad("base reference out of range")
    copy_pos = np.flatnonzero(m.kinds == COPY)
    if (m.copy_ref >= copy_pos.astype(np.uint64)).any():
        raise bad("copy reference is not to an earlier chunk")
    src_kind = m.kinds[m.copy_ref.astype(np.int64)]
    if ((src_kind != LITERAL) & (src_kind != DELTA)).any():
        raise bad("copy reference to a chunk without a slot")
    n_slots = m.n_slots
    if len(m.slot) != n_slots or (
        n_slots and not np.array_equal(np.sort(m.slot), np.arange(n_slots, dtype=np.uint32))
    ):
        raise bad("slots are not a permutation of the segment contents")
    ends = m.seg_offset.astype(np.int64) + m.seg_length.astype(np.int64)
    if len(ends) and (int(m.seg_offset.min()) < HEADER_SIZE or int(ends.max()) > data_end):
        raise bad("segment out of range")
    if m.dict_length and m.dict_offset + m.dict_length > data_end:
        raise bad("dictionary out of range")
    if m.has_device_state:
        if m.memory_size is None:
            raise bad("device state without a memory image")
        if m.device_state_offset < HEADER_SIZE or (
            m.device_state_offset + m.device_state_length > data_end
        ):
            raise bad("device state out of range")
        if not 0 < m.device_state_raw_length <= MAX_DEVICE_STATE:
            raise bad(f"device state of {m.device_state_raw_length} bytes")
        if m.device_state_length > zstd_bound(m.device_state_raw_length):
            raise bad("device state larger than its compressed bound")
