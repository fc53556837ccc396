"""Byte sources an overlay is read from, and reading its header and manifest from one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import blake3
import zstandard

from cloudlet.errors import IntegrityError, OverlayFormatError, SynthesisError

from .format import HEADER_SIZE, Manifest, decode_header, decode_manifest


class ByteSource(Protocol):
    """Random access to the bytes of an overlay (a file, an HTTP URL with Range, ...).

    read_range must be safe to call from several threads at once and return exactly
    `length` bytes, or raise OverlayFormatError if the overlay ends before that.
    """

    def read_range(self, offset: int, length: int) -> bytes: ...


class FileSource:
    """An overlay in a local file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError as exc:
            raise SynthesisError(f"no such overlay: {self.path}") from exc
        except OSError as exc:
            raise SynthesisError(f"cannot open {self.path}: {exc.strerror}") from exc

    @property
    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def read_range(self, offset: int, length: int) -> bytes:
        data = os.pread(self._fd, length, offset)
        while len(data) < length:
            more = os.pread(self._fd, length - len(data), offset + len(data))
            if not more:
                raise OverlayFormatError(f"truncated overlay: {self.path} ends early")
            data += more
        return data

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_manifest(source: ByteSource | str | os.PathLike[str]) -> Manifest:
    """Read, check (root digest, structure, length) and return an overlay's manifest.

    Raises:
        OverlayFormatError: not an overlay, unknown version, truncated or corrupt.
    """
    if not hasattr(source, "read_range"):
        with FileSource(source) as fs:  # type: ignore[arg-type]
            return read_manifest(fs)
    src: ByteSource = source  # type: ignore[assignment]
    header = decode_header(src.read_range(0, HEADER_SIZE))
    size = getattr(src, "size", None)
    if size is not None and size != header.total_length:
        raise OverlayFormatError(
            f"truncated or padded overlay: {size} bytes, header says {header.total_length}"
        )
    if size is None:
        src.read_range(header.total_length - 1, 1)  # fails if the overlay is cut short
    stored = src.read_range(header.manifest_offset, header.manifest_length)
    return decode_manifest(header, stored)


def load_dictionary(source: ByteSource, m: Manifest) -> zstandard.ZstdCompressionDict | None:
    """The shared zstd dictionary of the segments, if the overlay has one."""
    if not m.dict_length:
        return None
    data = source.read_range(m.dict_offset, m.dict_length)
    if blake3.blake3(data).digest() != m.dict_digest:
        raise IntegrityError("overlay dictionary digest mismatch")
    return zstandard.ZstdCompressionDict(data)


def read_device_state(source: ByteSource, m: Manifest) -> bytes | None:
    """The VM's device state (a QEMU migration stream) the overlay carries, checked;
    None if it has none.

    Raises:
        IntegrityError: the stored bytes do not match their digest or do not decompress.
    """
    if not m.has_device_state:
        return None
    blob = source.read_range(m.device_state_offset, m.device_state_length)
    if blake3.blake3(blob).digest() != m.device_state_digest:
        raise IntegrityError("device state digest mismatch (corrupt overlay)")
    try:
        data = zstandard.ZstdDecompressor().decompress(
            blob, max_output_size=m.device_state_raw_length
        )
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"device state does not decompress: {exc}") from exc
    if len(data) != m.device_state_raw_length:
        raise IntegrityError(
            f"device state has {len(data)} bytes, expected {m.device_state_raw_length}"
        )
    return data


def decompressor(zdict: zstandard.ZstdCompressionDict | None) -> zstandard.ZstdDecompressor:
    """A segment decompressor, with the overlay's shared dictionary if it has one."""
    if zdict is None:
        return zstandard.ZstdDecompressor()
    return zstandard.ZstdDecompressor(dict_data=zdict)


def decode_segment(
    source: ByteSource,
    m: Manifest,
    seg: int,
    dctx: zstandard.ZstdDecompressor,
) -> bytes:
    """Fetch, check and decompress one segment: its slots, 4 KiB each."""
    blob = source.read_range(int(m.seg_offset[seg]), int(m.seg_length[seg]))
    if blake3.blake3(blob).digest() != m.seg_digest[seg].tobytes():
        raise IntegrityError(f"segment {seg} digest mismatch (corrupt overlay)")
    want = int(m.seg_slots[seg]) * m.chunk_size
    try:
        data = dctx.decompress(blob, max_output_size=want)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"segment {seg} does not decompress: {exc}") from exc
    if len(data) != want:
        raise IntegrityError(f"segment {seg} has {len(data)} bytes, expected {want}")
    return data
