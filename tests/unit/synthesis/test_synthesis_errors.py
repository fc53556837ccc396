"""Bad input: a clear error, and no partial output left behind."""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from synthesis_helpers import C, make_pair, write

from cloudlet.errors import (
    BaseMismatchError,
    ConflictError,
    IntegrityError,
    OverlayFormatError,
    SynthesisError,
)
from cloudlet.synthesis import apply_overlay, create_overlay, read_manifest, verify_overlay
from cloudlet.synthesis.format import HEADER_SIZE, MAGIC


@pytest.fixture
def overlay(tmp_path: Path) -> tuple[Path, Path, Path]:
    base, mod, _ = make_pair(tmp_path)
    ovl = tmp_path / "o.ovl"
    create_overlay(base, mod, ovl, level=1)
    return base, mod, ovl


def files(d: Path) -> set[str]:
    return {p.name for p in d.iterdir()}


def test_existing_output_is_refused_unless_forced(overlay, tmp_path):
    base, mod, ovl = overlay
    (tmp_path / "out.img").write_bytes(b"keep me")
    with pytest.raises(ConflictError):
        apply_overlay(base, ovl, tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == b"keep me"
    with pytest.raises(ConflictError):
        create_overlay(base, mod, ovl)
    apply_overlay(base, ovl, tmp_path / "out.img", force=True)
    assert (tmp_path / "out.img").read_bytes() == mod.read_bytes()


def test_wrong_base_is_refused_before_writing(overlay, tmp_path):
    base, _mod, ovl = overlay
    before = files(tmp_path)
    (tmp_path / "short.img").write_bytes(base.read_bytes()[:-1])
    with pytest.raises(BaseMismatchError, match="bytes"):
        apply_overlay(tmp_path / "short.img", ovl, tmp_path / "out.img")
    other = bytearray(base.read_bytes())
    other[12345] ^= 1
    (tmp_path / "other.img").write_bytes(other)
    with pytest.raises(BaseMismatchError, match="digest"):
        apply_overlay(tmp_path / "other.img", ovl, tmp_path / "out.img")
    after = files(tmp_path) - {"short.img", "other.img", "other.img.cloudlet-index"}
    assert after == before


@pytest.mark.parametrize("cut", [10, HEADER_SIZE, HEADER_SIZE + 1000, -1, -300])
def test_truncated_overlay(overlay, tmp_path, cut):
    base, _, ovl = overlay
    data = ovl.read_bytes()
    bad = tmp_path / "cut.ovl"
    bad.write_bytes(data[:cut])
    before = files(tmp_path)
    with pytest.raises(OverlayFormatError):
        apply_overlay(base, bad, tmp_path / "out.img")
    with pytest.raises(OverlayFormatError):
        verify_overlay(bad)
    assert files(tmp_path) == before


def test_unknown_version(overlay, tmp_path):
    _base, _, ovl = overlay
    data = bytearray(ovl.read_bytes())
    struct.pack_into("<I", data, len(MAGIC), 3)
    bad = write(tmp_path / "v3.ovl", np.frombuffer(bytes(data), np.uint8))
    with pytest.raises(OverlayFormatError, match="version 3"):
        read_manifest(bad)


def test_not_an_overlay(overlay, tmp_path):
    base, mod, _ = overlay
    with pytest.raises(OverlayFormatError, match="magic"):
        apply_overlay(base, mod, tmp_path / "out.img")


def test_corrupt_header_and_manifest(overlay, tmp_path):
    base, _, ovl = overlay
    data = ovl.read_bytes()
    for pos in (20, len(data) - 5):  # a header field; a byte of the manifest at the end
        bad = bytearray(data)
        bad[pos] ^= 0xFF
        p = tmp_path / "bad.ovl"
        p.write_bytes(bad)
        with pytest.raises(OverlayFormatError):
            apply_overlay(base, p, tmp_path / "out.img")
        assert not (tmp_path / "out.img").exists()


def test_corrupt_segment_leaves_nothing(overlay, tmp_path):
    base, _, ovl = overlay
    m = read_manifest(ovl)
    assert len(m.seg_offset) >= 2
    bad = bytearray(ovl.read_bytes())
    bad[int(m.seg_offset[-1]) + 10] ^= 0xFF
    p = tmp_path / "bad.ovl"
    p.write_bytes(bad)
    before = files(tmp_path)
    with pytest.raises(IntegrityError, match="segment"):
        verify_overlay(p)
    with pytest.raises(IntegrityError, match="segment"):
        apply_overlay(base, p, tmp_path / "out.img")
    assert files(tmp_path) == before


def test_disk_full_removes_temp(overlay, tmp_path, monkeypatch):
    base, mod, ovl = overlay
    real = os.pwrite

    def full(fd, data, offset):
        if offset > 64 * C:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full)
    before = files(tmp_path)
    with pytest.raises(SynthesisError, match="no space left"):
        apply_overlay(base, ovl, tmp_path / "out.img")
    with pytest.raises(SynthesisError, match="no space left"):
        create_overlay(base, mod, tmp_path / "o2.ovl", level=1)
    assert files(tmp_path) == before


def test_missing_inputs(tmp_path):
    with pytest.raises(SynthesisError, match="no such"):
        create_overlay(tmp_path / "nope", tmp_path / "nope2", tmp_path / "o.ovl")
    with pytest.raises(SynthesisError, match="no such"):
        apply_overlay(tmp_path / "nope", tmp_path / "o.ovl", tmp_path / "out")
    assert not list(tmp_path.iterdir())


def test_damaged_index_cache_is_rebuilt(overlay, tmp_path):
    base, mod, ovl = overlay
    idx = tmp_path / "base.img.cloudlet-index"
    assert idx.exists()
    data = bytearray(idx.read_bytes())
    data[50] ^= 0xFF  # inside the cached digest
    idx.write_bytes(bytes(data))
    apply_overlay(base, ovl, tmp_path / "out.img")  # digest recomputed, not trusted
    assert (tmp_path / "out.img").read_bytes() == mod.read_bytes()
    assert idx.read_bytes() != bytes(data)
