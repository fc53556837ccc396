"""Property: apply(create(base, modified)) == modified, for disk and memory images."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from synthesis_helpers import C, random_image, write, write_sparse

from cloudlet.synthesis import apply_overlay, create_overlay, overlay_info, verify_overlay

OPS = ("zero", "move", "repeat", "random", "flip", "text")


def _put(out: np.ndarray, off: int, data: np.ndarray) -> None:
    n = max(0, min(len(data), len(out) - off))
    out[off : off + n] = data[:n]


def mutate(rng: np.random.Generator, img: np.ndarray, base: np.ndarray, ops: list) -> np.ndarray:
    out = img.copy()
    n = max(1, -(-len(out) // C))
    for op, a, b, length in ops:
        a, b = a % n, b % n
        size = length * C
        if op == "zero":
            _put(out, a * C, np.zeros(size, np.uint8))
        elif op == "move":  # a base block at another aligned offset
            _put(out, a * C, base[b * C : b * C + size].copy())
        elif op == "repeat":  # a block of the new image, again
            _put(out, a * C, out[b * C : b * C + size].copy())
        elif op == "random":
            _put(out, a * C, rng.integers(0, 256, size, dtype=np.uint8))
        elif op == "flip" and len(out):
            out[(a * C + b) % len(out)] ^= 0x5A
        elif op == "text":
            _put(out, a * C, np.frombuffer(b"edit %d;" % b * size, np.uint8)[:size])
    return out


op_strategy = st.lists(
    st.tuples(
        st.sampled_from(OPS),
        st.integers(0, 10_000),
        st.integers(0, 10_000),
        st.integers(1, 6),
    ),
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_chunks=st.integers(0, 48),
    tail=st.integers(0, C - 1),
    new_size=st.one_of(st.none(), st.integers(0, 60 * C)),
    disk_ops=op_strategy,
    memory=st.booleans(),
    memory_base=st.booleans(),
    memory_ops=op_strategy,
    level=st.sampled_from([1, 3, 19]),
    sparse=st.booleans(),
)
def test_apply_of_create_is_identity(
    seed, n_chunks, tail, new_size, disk_ops, memory, memory_base, memory_ops, level, sparse
):
    rng = np.random.default_rng(seed)
    base = random_image(rng, n_chunks, tail)
    mod = mutate(rng, base, base, disk_ops)
    if new_size is not None:
        grown = np.zeros(new_size, np.uint8)
        keep = min(new_size, len(mod))
        grown[:keep] = mod[:keep]
        mod = mutate(rng, grown, base, disk_ops[:3])
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        put = write_sparse if sparse else write
        kw: dict = {}
        mem1 = None
        if memory:
            mem0 = random_image(rng, 16) if memory_base else np.zeros(0, np.uint8)
            # memory pages often hold disk blocks (page cache): dedup must find them
            mem1 = mutate(rng, mem0 if memory_base else random_image(rng, 12), base, memory_ops)
            if len(mem1) >= 2 * C and len(mod) >= C:
                mem1[C : 2 * C] = mod[:C]
            kw["memory"] = put(d / "m1", mem1)
            if memory_base:
                kw["memory_base"] = put(d / "m0", mem0)
        put(d / "base", base)
        put(d / "mod", mod)
        summary = create_overlay(d / "base", d / "mod", d / "ovl", level=level, **kw)
        assert summary.overlay_size == (d / "ovl").stat().st_size
        verify_overlay(d / "ovl")
        info = overlay_info(d / "ovl")
        n_mem = 0 if mem1 is None else -(-len(mem1) // C)
        assert sum(info["chunks"].values()) == -(-len(mod) // C) + n_mem
        apply_overlay(
            d / "base",
            d / "ovl",
            d / "out",
            memory_base=kw.get("memory_base"),
            memory_out=d / "mout" if memory else None,
        )
        assert (d / "out").read_bytes() == mod.tobytes()
        if memory:
            assert (d / "mout").read_bytes() == mem1.tobytes()
        leftovers = {p.name for p in d.iterdir()} - {
            "base", "mod", "ovl", "out", "m0", "m1", "mout",
            "base.cloudlet-index", "m0.cloudlet-index",
        }  # fmt: skip
        assert not leftovers
