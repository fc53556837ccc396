"""A workload's log files, for every driver: driver marker lines, rotation, the tail."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from cloudlet.errors import DriverError

#: A log bigger than this is moved to ``<name>.1`` when its workload next starts.
MAX_LOG_BYTES = 8 * 1024 * 1024

#: How every driver marker line starts, so readers can tell them from the program's output.
MARK_PREFIX = "[cloudlet "


def mark(path: Path, message: str) -> None:
    """Append a timestamped driver line to the log at ``path``, so the driver's actions
    show up among the workload's own output.

    Raises:
        OSError: the log could not be written.
    """
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    with path.open("a", encoding="utf-8") as f:
        f.write(f"{MARK_PREFIX}{now}] {message}\n")


def rotate(path: Path, max_bytes: int) -> None:
    """Move the log at ``path`` to ``<name>.1`` if it is bigger than ``max_bytes``; a
    missing log is left alone.

    Raises:
        OSError: the log could not be looked at or moved.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size > max_bytes:
        os.replace(path, path.with_name(path.name + ".1"))


def read_tail(path: Path, tail_bytes: int, what: str | None = None) -> str:
    """The last ``tail_bytes`` of ``path`` as text (bad UTF-8 replaced); "" if absent.

    Raises:
        DriverError: the file exists but cannot be read; the message names it as
            ``what`` (default: the path).
    """
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - max(0, tail_bytes)))
            data = f.read()
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise DriverError(f"cannot read {what or path}: {exc}") from exc
    return data.decode("utf-8", errors="replace")
