"""Writing a secret to a file only its owner can read, durably and atomically."""

from __future__ import annotations

import os
from pathlib import Path


def write_secret(path: Path, secret: str) -> None:
    """Write ``secret`` (and a newline) to ``path`` with mode 0600: a temporary file,
    fsynced, then renamed over ``path``, so a crash leaves the old file or the new."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
