"""Readers honour the optional shared zstd dictionary of format v1."""

from __future__ import annotations

import dataclasses

import blake3
import numpy as np
import pytest
import zstandard
from synthesis_helpers import make_pair

from cloudlet.errors import IntegrityError
from cloudlet.synthesis import apply_overlay, create_overlay, read_manifest, verify_overlay
from cloudlet.synthesis.format import HEADER_SIZE, Header, compress_manifest
from cloudlet.synthesis.source import FileSource, decode_segment


def with_dictionary(src, dst, corrupt_dict: bool = False) -> None:
    """Rewrite an overlay so that every segment is compressed with a shared dictionary."""
    m = read_manifest(src)
    with FileSource(src) as fs:
        dctx = zstandard.ZstdDecompressor()
        plain = [decode_segment(fs, m, s, dctx) for s in range(len(m.seg_offset))]
    samples = [p[i : i + 4096] for p in plain for i in range(0, len(p), 4096)][:2000]
    zdict = zstandard.train_dictionary(16384, samples)
    dict_bytes = zdict.as_bytes()
    cctx = zstandard.ZstdCompressor(level=3, dict_data=zdict)
    blobs = [cctx.compress(p) for p in plain]
    pos = HEADER_SIZE + len(dict_bytes)
    offsets = []
    for b in blobs:
        offsets.append(pos)
        pos += len(b)
    m2 = dataclasses.replace(
        m,
        seg_offset=np.array(offsets, np.uint64),
        seg_length=np.array([len(b) for b in blobs], np.uint32),
        seg_digest=np.stack([np.frombuffer(blake3.blake3(b).digest(), np.uint8) for b in blobs]),
        dict_offset=HEADER_SIZE,
        dict_length=len(dict_bytes),
        dict_digest=blake3.blake3(dict_bytes).digest(),
    )
    raw = m2.encode()
    stored = compress_manifest(raw)
    header = Header(
        pos, len(stored), len(raw), pos + len(stored), blake3.blake3(raw).digest(), m2.version
    )
    if corrupt_dict:
        dict_bytes = dict_bytes[:-1] + bytes([dict_bytes[-1] ^ 1])
    dst.write_bytes(header.encode() + dict_bytes + b"".join(blobs) + stored)


def test_dictionary_overlay_applies(tmp_path):
    base, mod, data = make_pair(tmp_path, n=1500, literal=1300)
    create_overlay(base, mod, tmp_path / "plain.ovl", level=1)
    with_dictionary(tmp_path / "plain.ovl", tmp_path / "dict.ovl")
    assert read_manifest(tmp_path / "dict.ovl").dict_length > 0
    verify_overlay(tmp_path / "dict.ovl")
    apply_overlay(base, tmp_path / "dict.ovl", tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == data.tobytes()


def test_corrupt_dictionary_is_refused(tmp_path):
    base, mod, _ = make_pair(tmp_path, n=1500, literal=1300)
    create_overlay(base, mod, tmp_path / "plain.ovl", level=1)
    with_dictionary(tmp_path / "plain.ovl", tmp_path / "dict.ovl", corrupt_dict=True)
    with pytest.raises(IntegrityError, match="dictionary"):
        apply_overlay(base, tmp_path / "dict.ovl", tmp_path / "out.img")
    assert not (tmp_path / "out.img").exists()
