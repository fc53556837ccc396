"""Format v2: an overlay carries the VM's device state next to its memory, and v1 still reads."""

from __future__ import annotations

import struct
from pathlib import Path

import blake3
import numpy as np
import pytest
import zstandard
from synthesis_helpers import C, make_pair, random_image, write

from cloudlet.errors import ConflictError, IntegrityError, OverlayFormatError, SynthesisError
from cloudlet.synthesis import (
    FileSource,
    StreamingApplier,
    apply_overlay,
    create_overlay,
    overlay_info,
    read_manifest,
    verify_overlay,
)
from cloudlet.synthesis.format import _FIXED_V1, HEADER_SIZE, Header, decode_header

STATE = b"QEVM\x00\x00\x00\x03" + bytes(range(256)) * 300  # looks like a migration stream


@pytest.fixture
def vm(tmp_path: Path) -> dict[str, Path]:
    base, mod, _ = make_pair(tmp_path, n=400, literal=200)
    memory = write(tmp_path / "memory.ram", random_image(np.random.default_rng(3), 256))
    state = tmp_path / "vmstate"
    state.write_bytes(STATE)
    ovl = tmp_path / "vm.ovl"
    create_overlay(base, mod, ovl, memory=memory, device_state=state, level=1)
    return {"base": base, "mod": mod, "memory": memory, "state": state, "ovl": ovl}


def test_device_state_round_trips(vm, tmp_path):
    info = verify_overlay(vm["ovl"])
    assert info["format_version"] == 2
    assert info["resumable"] is True
    assert info["device_state_size"] == len(STATE)
    out = tmp_path / "out"
    out.mkdir()
    s = apply_overlay(
        vm["base"], vm["ovl"], out / "disk.img",
        memory_out=out / "memory.ram", device_state_out=out / "vmstate",
    )  # fmt: skip
    assert s.device_state == out / "vmstate"
    assert (out / "vmstate").read_bytes() == STATE
    assert (out / "memory.ram").read_bytes() == vm["memory"].read_bytes()
    assert (out / "disk.img").read_bytes() == vm["mod"].read_bytes()
    # manifest_size accounts for the device state sitting before the manifest
    header = decode_header(vm["ovl"].read_bytes()[:HEADER_SIZE])
    assert info["manifest_size"] == header.total_length - header.manifest_offset


def test_overlay_without_device_state_is_not_resumable(tmp_path):
    base, mod, _ = make_pair(tmp_path, n=300, literal=100)
    memory = write(tmp_path / "memory.ram", random_image(np.random.default_rng(4), 64))
    ovl = tmp_path / "cold.ovl"
    create_overlay(base, mod, ovl, memory=memory, level=1)
    assert overlay_info(ovl)["resumable"] is False
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(SynthesisError, match="no device state"):
        apply_overlay(
            base, ovl, out / "d.img", memory_out=out / "m.ram", device_state_out=out / "v"
        )
    assert list(out.iterdir()) == []


def test_device_state_needs_memory(tmp_path):
    base, mod, _ = make_pair(tmp_path, n=100, literal=10)
    (tmp_path / "vmstate").write_bytes(STATE)
    with pytest.raises(SynthesisError, match="without a memory image"):
        create_overlay(base, mod, tmp_path / "o.ovl", device_state=tmp_path / "vmstate")
    (tmp_path / "empty").write_bytes(b"")
    memory = write(tmp_path / "m.ram", np.zeros(16 * C, np.uint8))
    with pytest.raises(SynthesisError, match="empty"):
        create_overlay(
            base, mod, tmp_path / "o.ovl", memory=memory, device_state=tmp_path / "empty"
        )
    assert not (tmp_path / "o.ovl").exists()


def test_corrupt_device_state_is_refused_before_commit(vm, tmp_path):
    m = read_manifest(vm["ovl"])
    data = bytearray(vm["ovl"].read_bytes())
    data[m.device_state_offset + 3] ^= 0xFF
    bad = tmp_path / "bad.ovl"
    bad.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="device state"):
        verify_overlay(bad)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(IntegrityError, match="device state"):
        apply_overlay(
            vm["base"], bad, out / "d.img", memory_out=out / "m.ram", device_state_out=out / "v"
        )
    assert list(out.iterdir()) == []


def test_existing_device_state_output_is_refused(vm, tmp_path):
    (tmp_path / "v").write_bytes(b"keep")
    with FileSource(vm["ovl"]) as src:
        applier = StreamingApplier(
            src, vm["base"], tmp_path / "d.img",
            memory_out=tmp_path / "m.ram", device_state_out=tmp_path / "v",
        )  # fmt: skip
        with pytest.raises(ConflictError):
            applier.check()
    assert (tmp_path / "v").read_bytes() == b"keep"


def _rewrite_manifest(ovl: Path, out: Path, edit, version: int = 2) -> Path:
    """Write ``ovl`` to ``out`` with its raw manifest passed through ``edit``."""
    data = ovl.read_bytes()
    header = decode_header(data[:HEADER_SIZE])
    raw = edit(bytearray(zstandard.ZstdDecompressor().decompress(data[header.manifest_offset :])))
    stored = zstandard.ZstdCompressor(level=3).compress(bytes(raw))
    total = header.manifest_offset + len(stored)
    new = Header(
        header.manifest_offset, len(stored), len(raw), total, blake3.blake3(raw).digest(),
        version=version,
    )  # fmt: skip
    out.write_bytes(new.encode() + data[HEADER_SIZE : header.manifest_offset] + stored)
    return out


def test_overlays_without_device_state_are_written_as_version_1(tmp_path):
    """Older sites read them: only resumable overlays need version 2."""
    base, mod, _ = make_pair(tmp_path, n=300, literal=100)
    ovl = tmp_path / "v1.ovl"
    create_overlay(base, mod, ovl, level=1)
    assert struct.unpack_from("<I", ovl.read_bytes(), 8)[0] == 1
    info = verify_overlay(ovl)
    assert info["format_version"] == 1 and info["resumable"] is False
    assert read_manifest(ovl).version == 1
    apply_overlay(base, ovl, tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == mod.read_bytes()


def test_a_device_state_flag_without_its_bytes_is_corrupt(vm, tmp_path):
    def no_length(raw: bytearray) -> bytearray:
        struct.pack_into("<Q", raw, _FIXED_V1.size + 8, 0)  # the stored length
        return raw

    bad = _rewrite_manifest(vm["ovl"], tmp_path / "flag.ovl", no_length)
    with pytest.raises(OverlayFormatError, match="device state"):
        read_manifest(bad)


def test_device_state_out_of_range_is_corrupt(vm, tmp_path):
    size = vm["ovl"].stat().st_size

    def past_the_end(raw: bytearray) -> bytearray:
        struct.pack_into("<Q", raw, _FIXED_V1.size, size)  # the device state's offset
        return raw

    bad = _rewrite_manifest(vm["ovl"], tmp_path / "range.ovl", past_the_end)
    with pytest.raises(OverlayFormatError, match="device state out of range"):
        read_manifest(bad)
