"""Each kind of change is encoded as the cheapest chunk kind."""

from __future__ import annotations

import numpy as np
from synthesis_helpers import C, make_pair, write

from cloudlet.synthesis import apply_overlay, create_overlay, overlay_info, read_manifest
from cloudlet.synthesis.format import BASE, COPY, DELTA, LITERAL, SAME, ZERO


def test_kinds(tmp_path):
    base, mod, _data = make_pair(tmp_path, n=1500, literal=1300)
    ovl = tmp_path / "o.ovl"
    create_overlay(base, mod, ovl, level=1)
    m = read_manifest(ovl)
    k = m.kinds
    was_zero = ~np.fromfile(base, np.uint8)[5 * C : 9 * C].reshape(4, C).any(axis=1)
    assert (k[5:9] == np.where(was_zero, SAME, ZERO)).all()  # zero before: unchanged
    assert (k[20:24] == BASE).all()
    assert list(m.base_ref[:4]) == list(range(1400, 1404))
    assert (k[40:1340] == LITERAL).all()
    assert (k[1350:1352] == COPY).all()
    assert list(m.copy_ref[-2:]) == [40, 41]
    assert k[1360] == DELTA
    assert (k[1400:1450] == SAME).all()
    info = overlay_info(ovl)
    assert info["chunks"]["literal"] == 1300
    assert info["overlay_size"] < 1310 * C


def test_memory_dedups_against_disk(tmp_path):
    base, mod, data = make_pair(tmp_path, n=300, literal=100)
    rng = np.random.default_rng(3)
    mem = rng.integers(0, 256, 64 * C, dtype=np.uint8)
    raw_base = np.fromfile(base, np.uint8)
    mem[0 : 8 * C] = raw_base[200 * C : 208 * C]  # page cache of base files
    mem[8 * C : 16 * C] = data[40 * C : 48 * C]  # page cache of new files
    write(tmp_path / "mem", mem)
    ovl = tmp_path / "o.ovl"
    create_overlay(base, mod, ovl, memory=tmp_path / "mem", level=1)
    info = overlay_info(ovl)
    assert info["memory_chunks"]["base"] == 8
    assert info["memory_chunks"]["copy"] == 8
    assert info["memory_chunks"]["literal"] == 48
    apply_overlay(base, ovl, tmp_path / "out", memory_out=tmp_path / "mout")
    assert (tmp_path / "mout").read_bytes() == mem.tobytes()
    assert (tmp_path / "out").read_bytes() == data.tobytes()
