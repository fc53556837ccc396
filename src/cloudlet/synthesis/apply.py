"""Apply an overlay to its base: a sparse raw image, or a qcow2 backed by the base."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cloudlet.errors import SynthesisError

from ._fs import AtomicFile
from ._image import run_qemu_img
from .format import CHUNK_SIZE
from .source import FileSource
from .stream import ApplySummary, StreamingApplier

FORMATS = ("raw", "qcow2")


def apply_overlay(
    base: str | os.PathLike[str],
    overlay: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    fmt: str = "raw",
    memory_base: str | os.PathLike[str] | None = None,
    memory_out: str | os.PathLike[str] | None = None,
    device_state_out: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ApplySummary:
    """Rebuild the modified disk (and optionally memory) image from `base` and `overlay`.

    With `memory_out` and `device_state_out`, a resumable overlay also gives the saved
    VM's RAM and device state (what the qemu driver's ``memory_image`` takes).

    The manifest and the base digest are checked before any file is created; outputs are
    written to temporary files beside `out` and renamed into place only when complete.

    Args:
        fmt: "raw" (sparse) or "qcow2" (a qcow2 whose backing file is `base`).
        progress: called as progress(chunks_done, chunks_total) as chunks become ready.

    Raises:
        OverlayFormatError, IntegrityError: the overlay is corrupt or truncated.
        BaseMismatchError: `base` is not the image the overlay was made on.
        ConflictError: an output exists and not force.
        SynthesisError: anything else (disk full, qemu-img failure).
    """
    if fmt not in FORMATS:
        raise SynthesisError(f"unknown output format {fmt!r} (raw or qcow2)")
    out = Path(out)
    outputs = {
        "memory_base": memory_base,
        "memory_out": memory_out,
        "device_state_out": device_state_out,
        "threads": threads,
    }
    with FileSource(overlay) as source:
        if fmt == "raw":
            return _apply(source, base, out, force, progress, **outputs)
        final = AtomicFile(out, force=force)  # refuses an existing output up front
        raw = out.with_name(f".{out.name}.raw.tmp")
        raw.unlink(missing_ok=True)  # left by an apply killed earlier
        try:
            summary = _apply(source, base, raw, force, progress, **outputs)
            run_qemu_img(
                "convert", "-q", "-f", "raw", "-O", "qcow2",
                "-B", str(Path(base).resolve()), "-F", "raw",
                str(raw), str(final.tmp),
            )  # fmt: skip
            fd = os.open(final.tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            final.commit()
        except BaseException:
            final.discard()
            raise
        finally:
            raw.unlink(missing_ok=True)
        summary.disk = out
        return summary


def _apply(
    source: FileSource,
    base: str | os.PathLike[str],
    out: Path,
    force: bool,
    progress: Callable[[int, int], None] | None,
    **outputs: Any,
) -> ApplySummary:
    on_ready = None
    if progress is not None:
        total = [0]

        def on_ready(chunks: np.ndarray) -> None:
            total[0] += len(chunks)
            progress(total[0], n_total)

    applier = StreamingApplier(
        source,
        base,
        out,
        force=force,
        on_ready=on_ready,
        **outputs,
    )
    m = applier.check()
    n_total = m.n_disk + (m.n_memory if outputs["memory_out"] is not None else 0)
    applier.start()
    return applier.wait()


__all__ = ["CHUNK_SIZE", "FORMATS", "apply_overlay"]
