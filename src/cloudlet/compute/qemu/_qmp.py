"""A small synchronous face on qemu.qmp's asyncio client, for the synchronous driver.

qemu.qmp is asyncio-only, and the driver may be called from threads that run their own
event loop, so every session runs on one private loop in a daemon thread and callers
block on the result with a timeout. Failures become :class:`~cloudlet.errors.DriverError`
with the qemu.qmp (or OS) error as the cause.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import ExecInterruptedError, ExecuteError, QMPClient, QMPError

from cloudlet.errors import DriverError

T = TypeVar("T")

logger = logging.getLogger(__name__)

_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def _get_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _loop_lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="cloudlet-qmp-loop", daemon=True).start()
            _loop = loop
        return _loop


def _run(coro: Coroutine[Any, Any, T], timeout: float, what: str) -> T:
    future = asyncio.run_coroutine_threadsafe(coro, _get_loop())
    try:
        return future.result(timeout)
    except FutureTimeout as exc:
        future.cancel()
        raise DriverError(f"QMP {what}: no answer within {timeout:g}s") from exc
    except ExecuteError as exc:
        raise DriverError(f"QMP {what}: {exc.error.desc}") from exc
    except (QMPError, OSError, EOFError) as exc:
        raise DriverError(f"QMP {what}: {exc or type(exc).__name__}") from exc


class QmpSession:
    """One connection to a QEMU monitor socket; use as a context manager.

    QEMU serves one QMP client at a time, so callers keep sessions short and never
    open two on the same VM at once.
    """

    def __init__(self, socket_path: Path, timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._client: QMPClient | None = None

    def __enter__(self) -> QmpSession:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self) -> None:
        async def connect() -> QMPClient:
            client = QMPClient(f"cloudlet:{self.socket_path.parent.name}")
            try:
                await client.connect(str(self.socket_path))
            except BaseException:
                await client.disconnect()
                raise
            return client

        self._client = _run(connect(), self.timeout, f"connect to {self.socket_path}")

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run ``command`` and return QEMU's answer."""
        client = self._require()
        return _run(client.execute(command, arguments), self.timeout, command)

    def send_fd(self, fd: int, name: str) -> None:
        """Hand QEMU a copy of ``fd`` under ``name`` (for ``fd:NAME`` migration URIs)."""
        client = self._require()

        async def send() -> None:
            client.send_fd_scm(fd)
            await client.execute("getfd", {"fdname": name})

        _run(send(), self.timeout, "getfd")

    def execute_closing(self, command: str) -> None:
        """Run a command after which QEMU goes away (``quit``); its hang-up is expected."""
        client = self._require()
        try:
            _run(client.execute(command), self.timeout, command)
        except DriverError as exc:
            if not isinstance(exc.__cause__, ExecInterruptedError | EOFError | ConnectionError):
                raise

    def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return

        async def disconnect() -> None:
            try:
                await client.disconnect()
            except (QMPError, OSError, EOFError) as exc:
                # QEMU hung up first (after quit, or it died): nothing left to close.
                logger.debug("QMP disconnect from %s: %r", self.socket_path, exc)

        _run(disconnect(), self.timeout, "disconnect")

    def _require(self) -> QMPClient:
        if self._client is None:
            raise DriverError("QMP session is not open")
        return self._client
