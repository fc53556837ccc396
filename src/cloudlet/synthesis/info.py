"""Describe and verify overlays without applying them."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .format import CHUNK_SIZE, HEADER_SIZE, KIND_NAMES, Manifest
from .source import (
    FileSource,
    decode_segment,
    decompressor,
    load_dictionary,
    read_device_state,
    read_manifest,
)


def overlay_info(overlay: str | os.PathLike[str]) -> dict[str, Any]:
    """Sizes, chunk counts per kind, compression ratio and base digests of an overlay.

    Raises:
        OverlayFormatError: not an overlay, unknown version, truncated or corrupt manifest.
    """
    with FileSource(overlay) as src:
        m = read_manifest(src)
        size = src.size
    counts = np.bincount(m.kinds, minlength=len(KIND_NAMES))
    n_disk = m.n_disk
    disk_counts = np.bincount(m.kinds[:n_disk], minlength=len(KIND_NAMES))
    literal_bytes = m.n_slots * CHUNK_SIZE
    segment_bytes = int(m.seg_length.astype(np.int64).sum())
    image_bytes = m.disk_size + (m.memory_size or 0)
    return {
        "format_version": m.version,
        "overlay_size": size,
        "header_size": HEADER_SIZE,
        "manifest_size": size - _data_end(m),
        "chunk_size": m.chunk_size,
        "level": m.level,
        "disk_size": m.disk_size,
        "memory_size": m.memory_size,
        "base_size": m.base_size,
        "base_digest": m.base_digest.hex(),
        "memory_base_size": m.memory_base_size,
        "memory_base_digest": m.memory_base_digest.hex() if m.memory_base_digest else None,
        "disk_digest": m.disk_digest.hex(),
        "memory_digest": m.memory_digest.hex() if m.memory_size is not None else None,
        "device_state_size": m.device_state_raw_length if m.has_device_state else None,
        "resumable": m.has_device_state,
        "root_digest": m.root_digest.hex(),
        "chunks": {name: int(c) for name, c in zip(KIND_NAMES, counts, strict=True)},
        "disk_chunks": {name: int(c) for name, c in zip(KIND_NAMES, disk_counts, strict=True)},
        "memory_chunks": {
            name: int(c) - int(d)
            for name, c, d in zip(KIND_NAMES, counts, disk_counts, strict=True)
        },
        "segments": len(m.seg_offset),
        "literal_bytes": literal_bytes,
        "segment_bytes": segment_bytes,
        "compression_ratio": literal_bytes / segment_bytes if segment_bytes else None,
        "image_ratio": image_bytes / size if size else None,
    }


def _data_end(m: Manifest) -> int:
    """Where the manifest starts: after the segments, the dictionary and the device state."""
    ends = [HEADER_SIZE, m.dict_offset + m.dict_length]
    if len(m.seg_offset):
        ends.append(int((m.seg_offset.astype(np.int64) + m.seg_length).max()))
    if m.has_device_state:
        ends.append(m.device_state_offset + m.device_state_length)
    return max(ends)


def verify_overlay(overlay: str | os.PathLike[str]) -> dict[str, Any]:
    """Check every digest of an overlay: header, manifest (root), dictionary, segments,
    device state.

    Returns overlay_info() of the verified overlay.

    Raises:
        OverlayFormatError: bad header or manifest, truncated.
        IntegrityError: a segment, the dictionary or the device state does not match
            its digest.
    """
    with FileSource(overlay) as src:
        m = read_manifest(src)
        dctx = decompressor(load_dictionary(src, m))
        for seg in range(len(m.seg_offset)):
            decode_segment(src, m, seg, dctx)
        read_device_state(src, m)
    return overlay_info(overlay)
