"""StreamingApplier: segments in any order, readiness, priorities, failures."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from synthesis_helpers import C, make_pair

from cloudlet.errors import IntegrityError
from cloudlet.synthesis import FileSource, StreamingApplier, create_overlay, read_manifest
from cloudlet.synthesis.format import DELTA, LITERAL


class GatedSource:
    """A FileSource that records reads and holds segment reads until released."""

    def __init__(self, path: Path, segment_offsets: np.ndarray) -> None:
        self.inner = FileSource(path)
        self.segments = {int(o) for o in segment_offsets}
        self.reads: list[int] = []
        self.gate = threading.Event()
        self.first_segment_read = threading.Event()
        self.fail_at: int | None = None

    def read_range(self, offset: int, length: int) -> bytes:
        if offset in self.segments:
            self.reads.append(offset)
            self.first_segment_read.set()
            self.gate.wait(10)
            if offset == self.fail_at:
                return b"\0" * length
        return self.inner.read_range(offset, length)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    tmp_path = tmp_path_factory.mktemp("stream")
    base, mod, data = make_pair(tmp_path, n=3600, literal=3300)
    ovl = tmp_path / "o.ovl"
    create_overlay(base, mod, ovl, level=1)
    m = read_manifest(ovl)
    assert len(m.seg_offset) >= 3
    return tmp_path, base, ovl, data, m


def test_prioritized_segment_is_fetched_next(setup):
    d, base, ovl, data, m = setup
    src = GatedSource(ovl, m.seg_offset)
    seen: list[np.ndarray] = []
    ap = StreamingApplier(src, base, d / "out.img", threads=1, on_ready=seen.append)
    ap.start()
    last_chunk = int(np.flatnonzero(m.kinds == LITERAL)[-1])
    assert src.first_segment_read.wait(10)
    assert not ap.is_ready(last_chunk)
    ap.prioritize([last_chunk])
    src.gate.set()
    assert ap.wait_ready(last_chunk, timeout=10)
    with open(ap.partial_disk, "rb") as f:
        f.seek(last_chunk * C)
        assert f.read(C) == data[last_chunk * C : (last_chunk + 1) * C].tobytes()
    summary = ap.wait()
    lit = np.flatnonzero((m.kinds == LITERAL) | (m.kinds == DELTA))
    slot = int(m.slot[np.searchsorted(lit, last_chunk)])
    wanted = int(np.searchsorted(m.seg_first_slot, slot, side="right") - 1)
    assert wanted != 0
    assert src.reads[:2] == [int(m.seg_offset[0]), int(m.seg_offset[wanted])]
    assert sorted(src.reads) == sorted(int(o) for o in m.seg_offset)
    assert ap.ready_bitmap().all()
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(m.n_disk))
    assert (d / "out.img").read_bytes() == data.tobytes()
    assert summary.segments == len(m.seg_offset)


def test_many_threads_any_order(setup):
    d, base, ovl, data, m = setup
    src = GatedSource(ovl, m.seg_offset)
    src.gate.set()
    with StreamingApplier(src, base, d / "out4.img", threads=4) as ap:
        ap.prioritize(np.arange(m.n_disk)[::-1])
        assert ap.wait_ready(m.n_disk - 1, timeout=10)
    assert (d / "out4.img").read_bytes() == data.tobytes()


def test_failure_mid_stream_removes_output(setup):
    d, base, ovl, _, m = setup
    src = GatedSource(ovl, m.seg_offset)
    src.fail_at = int(m.seg_offset[1])
    src.gate.set()
    before = {p.name for p in d.iterdir()}
    ap = StreamingApplier(src, base, d / "fail.img", threads=2)
    ap.start()
    with pytest.raises(IntegrityError):
        ap.wait()
    assert {p.name for p in d.iterdir()} == before


def test_abort_removes_output(setup):
    d, base, ovl, _, m = setup
    src = GatedSource(ovl, m.seg_offset)
    before = {p.name for p in d.iterdir()}
    with pytest.raises(RuntimeError), StreamingApplier(src, base, d / "abort.img") as ap:
        assert src.first_segment_read.wait(10)
        threading.Timer(0.05, src.gate.set).start()
        raise RuntimeError("caller gave up")
    assert ap.summary is None
    assert {p.name for p in d.iterdir()} == before
