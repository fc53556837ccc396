"""The blake3 digest of a file, the id artifacts, checkpoints and agent wheels go by."""

from __future__ import annotations

from pathlib import Path

import blake3


def file_blake3(path: Path) -> str:
    """Hex blake3 of the file's bytes, read mapped and hashed on every core."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    if path.stat().st_size:  # an empty file cannot be mapped
        hasher.update_mmap(path)
    return hasher.hexdigest()
