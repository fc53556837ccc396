"""Shared helpers for the synthesis tests: image building and mutations with numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np

C = 4096


def random_image(rng: np.random.Generator, n_chunks: int, tail: int = 0) -> np.ndarray:
    """Random bytes with some zero runs and some repeated chunks, like a real disk."""
    img = rng.integers(0, 256, n_chunks * C + tail, dtype=np.uint8)
    for _ in range(max(1, n_chunks // 8)):
        a = int(rng.integers(0, max(1, n_chunks)))
        img[a * C : (a + int(rng.integers(1, 4))) * C] = 0
    # text-like chunks compress, so segments are not all incompressible
    for _ in range(max(1, n_chunks // 8)):
        a = int(rng.integers(0, max(1, n_chunks)))
        dst = img[a * C : (a + 1) * C]
        dst[:] = np.frombuffer((b"cloudlet %d " % a) * 600, np.uint8)[: len(dst)]
    return img


def write(path: Path, data: np.ndarray) -> Path:
    path.write_bytes(data.tobytes())
    return path


def make_pair(
    d: Path, seed: int = 7, n: int = 1500, literal: int = 1300
) -> tuple[Path, Path, np.ndarray]:
    """A base and a modified image with every chunk kind, several segments' worth."""
    rng = np.random.default_rng(seed)
    base = random_image(rng, n, 100)
    mod = base.copy()
    mod[5 * C : 9 * C] = 0  # zero
    mod[20 * C : 24 * C] = base[(n - 100) * C : (n - 96) * C]  # moved
    mod[40 * C : (40 + literal) * C] = rng.integers(0, 256, literal * C, dtype=np.uint8)
    mod[(n - 150) * C : (n - 148) * C] = mod[40 * C : 42 * C]  # repeated
    mod[(n - 140) * C + 17] ^= 1  # small in-place edit (delta)
    return write(d / "base.img", base), write(d / "mod.img", mod), mod


def write_sparse(path: Path, data: np.ndarray) -> Path:
    """Write only the non-zero 4 KiB blocks, so zero blocks are holes (like real images)."""
    with open(path, "wb") as f:
        f.truncate(len(data))
        for off in range(0, len(data), C):
            block = data[off : off + C]
            if block.any():
                f.seek(off)
                f.write(block.tobytes())
    return path
