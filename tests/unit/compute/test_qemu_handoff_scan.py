"""The handoff's change scan: holes skipped only where the destination holds zeros too,
and the base mapped copy-on-write (written where sent, never on disk)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cloudlet.compute.qemu.handoff import CHUNK, WINDOW_CHUNKS, _base, _dirty, _windows, _write_runs

WINDOW = WINDOW_CHUNKS * CHUNK


def _sparse(path: Path, size: int, writes: dict[int, bytes]) -> Path:
    with path.open("wb") as f:
        f.truncate(size)
        for offset, data in writes.items():
            f.seek(offset)
            f.write(data)
    return path


def test_windows_name_where_a_sparse_file_holds_data(tmp_path: Path) -> None:
    img = _sparse(tmp_path / "a.img", 4 * WINDOW, {WINDOW + 10: b"x", 3 * WINDOW - 1: b"y"})
    rows = 4 * WINDOW_CHUNKS
    assert _windows(img, rows).tolist() == [False, True, True, False]
    assert not _windows(None, rows).any()


def test_a_change_is_found_where_either_side_holds_data(tmp_path: Path) -> None:
    base = _sparse(tmp_path / "base.img", 3 * WINDOW, {0: b"b" * CHUNK})
    # The live disk: the base's first chunk zeroed (a hole there), a new chunk in window 2.
    live = _sparse(tmp_path / "live.img", 3 * WINDOW, {2 * WINDOW + CHUNK: b"n" * CHUNK})
    rows = np.memmap(live, dtype=np.uint8, mode="r").reshape(-1, CHUNK)
    sent = _base(base, len(rows))
    where = _windows(base, len(rows)) | _windows(live, len(rows))
    assert where.tolist() == [True, False, True]
    found = _dirty(rows, sent, where)
    assert found.tolist() == [0, 2 * WINDOW_CHUNKS + 1]
    assert found.tolist() == _dirty(rows, sent).tolist()  # the same as comparing it all


def test_the_base_view_takes_writes_without_touching_the_base(tmp_path: Path) -> None:
    base = _sparse(tmp_path / "base.img", 2 * WINDOW, {0: b"b" * CHUNK})
    before = base.read_bytes()
    view = _base(base, 2 * WINDOW_CHUNKS)
    view[[0, 5]] = np.frombuffer(b"s" * 2 * CHUNK, np.uint8).reshape(2, CHUNK)
    assert bytes(view[0]) == b"s" * CHUNK and bytes(view[1]) == bytes(CHUNK)
    assert base.read_bytes() == before
    # Shorter than the live image: padded with zeros, still writable.
    short = _base(base, 3 * WINDOW_CHUNKS)
    assert len(short) == 3 * WINDOW_CHUNKS and not short[-1].any()
    assert os.path.getsize(base) == 2 * WINDOW


def test_a_frame_is_written_in_runs_to_the_right_places(tmp_path: Path) -> None:
    index = [0, 1, 2, 7, 8, 3]
    raw = np.array(index, ">u4").tobytes() + b"".join(bytes([65 + i]) * CHUNK for i in index)
    target = tmp_path / "disk.img"
    target.write_bytes(bytes(10 * CHUNK))
    fd = os.open(target, os.O_RDWR)
    try:
        _write_runs(fd, raw, len(index))
    finally:
        os.close(fd)
    got = target.read_bytes()
    for i in range(10):
        want = bytes([65 + i]) * CHUNK if i in index else bytes(CHUNK)
        assert got[i * CHUNK : (i + 1) * CHUNK] == want, i
