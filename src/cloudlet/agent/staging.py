"""Getting artifacts into the cache: on demand (a VM about to start) and ahead of time.

:meth:`Stager.ensure` makes one artifact complete in the cache, downloading it
(resumably) if needed; one download per artifact at a time, whoever asks.
:meth:`Stager.run` is the pre-staging loop: whenever the desired ``images`` list
names a base the cache lacks, it fetches it in the background, with backoff while
the controller is unreachable, then trims the cache to its budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Callable
from pathlib import Path

import httpx

from cloudlet.agent import desired
from cloudlet.agent._wait import Backoff, sleep_or
from cloudlet.agent.artifacts import ArtifactCache
from cloudlet.agent.fetch import blob_url, download
from cloudlet.errors import (
    CloudletError,
    ControllerUnreachableError,
    IntegrityError,
    OverlayFormatError,
)
from cloudlet.schemas.artifacts import ArtifactKind
from cloudlet.synthesis import base_digest, read_manifest, verify_overlay
from cloudlet.synthesis.index import INDEX_SUFFIX

log = logging.getLogger(__name__)

#: Where the controller is and the site's credential; None while unknown (not enrolled).
RemoteFn = Callable[[], "tuple[str, str] | None"]


def verify_artifact(kind: ArtifactKind, artifact_id: str, path: Path) -> None:
    """Check that ``path`` holds the artifact named ``artifact_id``.

    Raises:
        IntegrityError: the bytes are not it.
    """
    if kind is ArtifactKind.IMAGE:
        digest = base_digest(path).hex()
        if digest != artifact_id.lower():
            raise IntegrityError(f"image {artifact_id} arrived with digest {digest}")
        return
    try:
        root = read_manifest(path).root_digest.hex()
        verify_overlay(path)
    except OverlayFormatError as exc:
        raise IntegrityError(f"overlay {artifact_id} arrived corrupt: {exc}") from exc
    if root != artifact_id.lower():
        raise IntegrityError(f"overlay {artifact_id} arrived with root digest {root}")


class Stager:
    """Fetches artifacts from the controller into an :class:`ArtifactCache`."""

    def __init__(
        self,
        cache: ArtifactCache,
        remote: RemoteFn,
        *,
        backoff_max_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.cache = cache
        #: How connections to the controller are verified (and the site's certificate).
        self.verify = verify
        self.remote = remote
        self.backoff_max_s = backoff_max_s
        self.wake = asyncio.Event()
        self.bytes_received = 0
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(30.0, read=60.0),
            transport=transport,
            follow_redirects=True,
            verify=verify,
        )
        self._locks: dict[tuple[ArtifactKind, str], asyncio.Lock] = {}

    async def aclose(self) -> None:
        await self._http.aclose()

    async def ensure(self, kind: ArtifactKind, artifact_id: str, *, attempts: int = 1) -> Path:
        """The artifact's complete file, fetching it first if the cache lacks it.

        Args:
            attempts: tries while the controller is unreachable (with backoff between).

        Raises:
            ControllerUnreachableError: not cached and the controller could not be reached.
            AuthError, NotFoundError, SyncError: the controller refused.
            IntegrityError: what arrived is not the artifact (the partial file is dropped).
        """
        key = (kind, artifact_id)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            path = self.cache.lookup(kind, artifact_id)
            if path is not None:
                return path
            backoff = Backoff(self.backoff_max_s)
            for attempt in range(1, attempts + 1):
                remote = self.remote()
                try:
                    if remote is None:
                        raise ControllerUnreachableError(
                            f"{kind} {artifact_id} is not cached and no controller is known"
                        )
                    return await self._fetch(kind, artifact_id, *remote)
                except ControllerUnreachableError:
                    if attempt == attempts:
                        raise
                await asyncio.sleep(backoff.next())
        raise AssertionError("unreachable")

    def _progress(self, kind: ArtifactKind, artifact_id: str, fetched: int, total: int | None):
        art = self.cache.get(kind, artifact_id)
        if total is not None and (art is None or art.size != total):
            self.cache.begin(kind, artifact_id, total)
        if art is None or art.fetched != fetched:
            self.cache.progress(kind, artifact_id, fetched)

    async def _fetch(self, kind: ArtifactKind, aid: str, base_url: str, credential: str) -> Path:
        key = (kind, aid)
        art = self.cache.begin(kind, aid, None)
        part, final = self.cache.part_path(kind, aid), self.cache.path(kind, aid)
        self.cache.hold(*key)
        try:
            log.info("fetching %s %s from byte %d", kind, aid, art.fetched)
            before = art.fetched
            size = await download(
                self._http,
                blob_url(base_url, kind, aid),
                credential,
                part,
                art.fetched,
                on_progress=lambda fetched, total: self._progress(kind, aid, fetched, total),
            )
            self.bytes_received += max(0, size - before)
            try:
                await asyncio.to_thread(verify_artifact, kind, aid, part)
            except IntegrityError:
                log.error("%s %s failed verification; dropping it to fetch again", kind, aid)
                self.cache.remove(kind, aid)
                raise
            # The base's chunk index was built beside the part file: keep it.
            with contextlib.suppress(OSError):
                os.replace(
                    part.with_name(part.name + INDEX_SUFFIX),
                    final.with_name(final.name + INDEX_SUFFIX),
                )
            os.replace(part, final)
            self.cache.mark_complete(kind, aid, size)
            log.info("%s %s is cached (%d bytes)", kind, aid, size)
        finally:
            self.cache.release(*key)
        await asyncio.to_thread(self.cache.evict)
        return final

    # -- pre-staging -------------------------------------------------------------------

    def missing_images(self) -> list[str]:
        """Desired base images the cache does not hold complete."""
        return [
            d
            for d in desired.images(self.cache.store)
            if self.cache.complete_path(ArtifactKind.IMAGE, d) is None
        ]

    async def prestage_once(self) -> bool:
        """Fetch every missing desired image once; True if all are cached now."""
        ok = True
        for digest in self.missing_images():
            if self.remote() is None:
                return False
            try:
                await self.ensure(ArtifactKind.IMAGE, digest)
            except CloudletError as exc:
                log.warning("pre-staging image %s: %s (will retry)", digest, exc)
                ok = False
        return ok

    async def run(self, interval: float, stop: asyncio.Event) -> None:
        """Pre-stage on every wake-up and every ``interval`` seconds until ``stop``."""
        backoff = Backoff(self.backoff_max_s)
        while not stop.is_set():
            self.wake.clear()
            try:
                ok = await self.prestage_once()
                await asyncio.to_thread(self.cache.evict)
            except Exception:
                log.exception("pre-staging failed unexpectedly; retrying")
                ok = False
            if ok:
                backoff.reset()
            await sleep_or(stop, interval if ok else backoff.next(), self.wake)
