"""Chunked, resumable uploads of images and overlays to the controller.

The id of an unfinished upload is kept in a small state file in the user's cache
dir, keyed by controller, file path, size and mtime: re-running the same command
after an interruption continues from what the controller received.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import blake3

from cloudlet.cli._client import ApiError, Client
from cloudlet.errors import ControllerUnreachableError

#: Bytes per PUT; each is retried on its own.
DEFAULT_CHUNK = 16 << 20
_PIECE = 1 << 20
QCOW2_MAGIC = b"QFI\xfb"
HASH_BUFFER = 16 << 20

Progress = Callable[[int, int], None]


def state_file() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "cloudlet" / "uploads.json"


def _load_state() -> dict[str, str]:
    try:
        data = json.loads(state_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save_state(state: dict[str, str]) -> None:
    path = state_file()
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
        tmp.replace(path)


def resume_key(url: str, file: Path, kind: str, name: str) -> str:
    """What identifies an upload to resume in the state file."""
    st = file.stat()
    return f"{url}|{kind}|{name}|{file.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _pieces(f: BinaryIO, offset: int, length: int, progress: Progress | None) -> Iterator[bytes]:
    f.seek(offset)
    sent = 0
    while sent < length:
        piece = f.read(min(_PIECE, length - sent))
        if not piece:
            return
        sent += len(piece)
        yield piece
        if progress:
            progress(offset + sent, -1)


def upload_file(
    client: Client,
    file: Path,
    kind: str,
    name: str,
    *,
    digest: str | None = None,
    project: str | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    progress: Progress | None = None,
    retries: int = 5,
) -> tuple[dict[str, Any], int]:
    """Upload `file` in chunks, then complete it.

    Returns the registered image or overlay and the byte offset the upload resumed
    from (0 for a fresh one). `progress(done, total)` follows the bytes sent
    (total is -1 while a chunk is in flight). A chunk that fails in transit is
    retried, with backoff, from the controller's own count.

    Raises:
        ApiError: the controller refused (e.g. a digest mismatch: the upload is gone).
        ControllerUnreachableError: still failing after `retries` attempts.
    """
    size = file.stat().st_size
    state, key = _load_state(), resume_key(client.url, file, kind, name)
    upload = _resume(client, state.get(key))
    resumed = upload["received"] if upload else 0
    if upload is None:
        body: dict[str, Any] = {"kind": kind, "name": name, "size": size, "digest": digest}
        if project:
            body["project"] = project
        upload = client.post("/v1/uploads", body)
        state[key] = upload["id"]
        _save_state(state)
    where = f"/v1/uploads/{upload['id']}"
    received, failures = upload["received"], 0
    with open(file, "rb") as f:
        while received < size:
            if progress:
                progress(received, size)
            length = min(chunk_size, size - received)
            try:
                upload = client.put_bytes(
                    where, _pieces(f, received, length, progress), {"offset": received}
                )
            except (ControllerUnreachableError, ApiError) as exc:
                failures += 1
                if failures > retries or (isinstance(exc, ApiError) and exc.status != 409):
                    raise
                time.sleep(min(0.5 * 2**failures, 30.0))
                upload = client.get(where)
            received = upload["received"]
    if progress:
        progress(size, size)
    try:
        done = client.request("POST", where + "/complete", timeout=None)
    finally:
        # Completed, or refused and discarded by the controller: either way it is over
        # unless the controller kept it (a missing overlay base): then keep resuming.
        if _resume(client, upload["id"]) is None:
            state = _load_state()
            state.pop(key, None)
            _save_state(state)
    return done, resumed


def _resume(client: Client, upload_id: str | None) -> dict[str, Any] | None:
    if not upload_id:
        return None
    try:
        return client.get(f"/v1/uploads/{upload_id}")
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise


def file_digest(file: Path, progress: Progress | None = None) -> str | None:
    """The digest the controller will give a raw image (blake3 of its bytes); None for
    a qcow2 image, whose id is the digest of its raw conversion (computed there)."""
    size = file.stat().st_size
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    buf = bytearray(HASH_BUFFER)
    done = 0
    with open(file, "rb") as f:
        while n := f.readinto(buf):
            if done == 0 and buf[:4] == QCOW2_MAGIC:
                return None
            hasher.update(memoryview(buf)[:n])
            done += n
            if progress:
                progress(done, size)
    return hasher.hexdigest()


def as_bar(
    progress: Callable[[str, int, int], None] | None, phase: str = "upload"
) -> Progress | None:
    """Adapt a progress(phase, advance, total) display to progress(done, total)."""
    if progress is None:
        return None
    last, size = [0], [0]

    def update(done: int, total: int) -> None:
        if total > 0:
            size[0] = total
        progress(phase, done - last[0], size[0])
        last[0] = done

    return update
