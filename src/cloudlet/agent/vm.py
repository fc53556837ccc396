"""VM synthesis for the agent: a vm component's disk rebuilt from its cached base and overlay.

Phases, each timed by the reconciler: **fetch** makes sure the base is cached
(downloading it if not) and opens the overlay: from the cache, or as an
:class:`~cloudlet.agent.fetch.HttpRangeSource` on the controller's blob URL whose
bytes are kept so that the next start works offline; **synthesize** applies it
with :class:`~cloudlet.synthesis.StreamingApplier` into the instance's directory
``vms/<instance>/<component>-<overlay>.img``. A **resumable** overlay (one that
carries the VM's memory and device state, format v2) also gives ``<...>.ram`` and
``<...>.ram.vmstate`` beside the disk (from the base VM's RAM, a pre-staged image of
its own, when the overlay was made against one): the workload spec then names that RAM file as
its ``memory_image`` and the qemu driver resumes the VM where its developer suspended
it, its service already listening, instead of booting it. The VM starts once the
disk is complete (starting it earlier, with missing chunks fetched on demand, is a
later improvement).

:func:`wait_for_answer` is the last phase: the service answering an HTTP GET.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from cloudlet.agent.artifacts import ArtifactCache
from cloudlet.agent.fetch import HttpRangeSource, blob_url
from cloudlet.agent.staging import Stager, verify_artifact
from cloudlet.compute.qemu import device_state_of
from cloudlet.errors import ControllerUnreachableError, IntegrityError, SynthesisError
from cloudlet.schemas import Component
from cloudlet.schemas.artifacts import ArtifactKind
from cloudlet.schemas.signing import InstanceSigning
from cloudlet.signing import check_artifact
from cloudlet.synthesis import ByteSource, FileSource, StreamingApplier, read_manifest

log = logging.getLogger(__name__)

MIB = 1024 * 1024
#: Tries to reach the controller for a base image a VM is waiting for.
FETCH_ATTEMPTS = 2


@dataclass
class Opened:
    """What the fetch phase hands the synthesize phase."""

    base: Path
    source: ByteSource | None  # None: no overlay, the disk is a copy of the base
    #: Set when the overlay streams from the controller into the cache (owned part file).
    remote: HttpRangeSource | None = None
    overlay: str | None = None
    #: Bytes of the VM's RAM in a resumable overlay; None: the VM boots from its disk.
    resume_memory: int | None = None
    #: The cached base VM RAM the overlay's memory was made against, if any.
    memory_base: Path | None = None


class VmBuilder:
    """Builds vm components' disks under ``vms_dir`` from artifacts the stager provides."""

    def __init__(self, stager: Stager, vms_dir: Path) -> None:
        self.stager = stager
        self.vms_dir = Path(vms_dir)

    @property
    def cache(self) -> ArtifactCache:
        return self.stager.cache

    def disk_path(self, instance_id: str, comp: Component) -> Path:
        """Where the component's disk is built; named after the overlay it came from."""
        tag = (comp.overlay or comp.image or "base")[:16]
        return self.vms_dir / instance_id / f"{comp.name}-{tag}.img"

    def memory_path(self, instance_id: str, comp: Component) -> Path:
        """Where a resumable overlay's RAM is rebuilt; its device state goes beside it."""
        return self.disk_path(instance_id, comp).with_suffix(".ram")

    def resume_image(self, instance_id: str, comp: Component) -> Path | None:
        """The RAM file the component's VM resumes from, if synthesis made one."""
        path = self.memory_path(instance_id, comp)
        return path if path.is_file() and device_state_of(path).is_file() else None

    def drop_resume_image(self, instance_id: str, comp: Component) -> None:
        """Forget the RAM image once the VM resumed from it: later boots use the disk."""
        path = self.memory_path(instance_id, comp)
        for p in (device_state_of(path), path):
            p.unlink(missing_ok=True)

    def remove_instance(self, instance_id: str) -> None:
        """Delete the instance's disks (its workloads are gone)."""
        shutil.rmtree(self.vms_dir / instance_id, ignore_errors=True)

    # -- fetch ---------------------------------------------------------------------------

    async def fetch(
        self, comp: Component, signing: InstanceSigning | None = None, project: str = ""
    ) -> Opened:
        """Cache the base and open the overlay, checking its manifest and the signatures
        of both (``signing``: what the instance's desired entry says; None: nothing
        signed, nothing required).

        Raises:
            ControllerUnreachableError: something is not cached and the controller is
                unreachable.
            SynthesisError: the overlay is corrupt or not made for this base.
            SignatureError: the image or overlay is unsigned where ``project`` requires
                signatures, or a signature of it does not hold.
        """
        assert comp.image is not None
        base = await self.stager.ensure(ArtifactKind.IMAGE, comp.image, attempts=FETCH_ATTEMPTS)
        # The cache holds an image only once its bytes hashed to this digest (the stager
        # checks before it renames a download into place).
        _check_signed(signing, project, ArtifactKind.IMAGE, comp.image)
        if comp.overlay is None:
            return Opened(base, None)
        cached = self.cache.lookup(ArtifactKind.OVERLAY, comp.overlay)
        if cached is not None:
            source: ByteSource = FileSource(cached)
            remote = None
        else:
            where = self.stager.remote()
            if where is None:
                raise ControllerUnreachableError(
                    f"overlay {comp.overlay} is not cached and no controller is known"
                )
            url = blob_url(where[0], ArtifactKind.OVERLAY, comp.overlay)
            if self.cache.hold(ArtifactKind.OVERLAY, comp.overlay):
                self.cache.begin(ArtifactKind.OVERLAY, comp.overlay, None)
                part = self.cache.part_path(ArtifactKind.OVERLAY, comp.overlay)
                remote = HttpRangeSource(url, where[1], tee=part, verify=self.stager.verify)
                source = remote
            else:  # another start streams it into the cache already: just read
                source = HttpRangeSource(url, where[1], verify=self.stager.verify)
                remote = None
        opened = Opened(base, source, remote, overlay=comp.overlay)
        try:
            manifest = await asyncio.to_thread(read_manifest, source)
            if manifest.root_digest.hex() != comp.overlay.lower():
                raise SynthesisError(f"overlay {comp.overlay} has another overlay's root digest")
            # The root digest of the bytes read (read_manifest checked it against the
            # manifest, which holds every segment's digest), not the one we were told.
            _check_signed(signing, project, ArtifactKind.OVERLAY, manifest.root_digest.hex())
        except BaseException:
            self.discard(opened)
            raise
        if manifest.has_device_state:
            opened.resume_memory = manifest.memory_size
            if manifest.memory_base_digest is not None:
                # The base VM's RAM, an image of its own: pre-staged like the disk base.
                try:
                    opened.memory_base = await self.stager.ensure(
                        ArtifactKind.IMAGE, manifest.memory_base_digest.hex(),
                        attempts=FETCH_ATTEMPTS,
                    )  # fmt: skip
                except BaseException:
                    self.discard(opened)
                    raise
        elif manifest.memory_size is not None:
            log.warning(
                "overlay %s has memory but no device state: the VM boots from its disk",
                comp.overlay,
            )
        return opened

    async def memory_base(self, comp: Component) -> Path | None:
        """The cached base VM RAM ``comp``'s overlay was made against (fetched if
        missing), or None when it has none. A handoff diffs the VM's RAM against it:
        both sites read it from the same manifest, so they agree on it.

        Raises:
            ControllerUnreachableError: the overlay (for its manifest) or the RAM image
                is not cached and the controller is unreachable.
            SynthesisError: the overlay is corrupt or another overlay.
        """
        if comp.overlay is None:
            return None
        cached = self.cache.lookup(ArtifactKind.OVERLAY, comp.overlay)
        if cached is not None:
            source: ByteSource = FileSource(cached)
        else:  # the manifest only: a few range requests
            where = self.stager.remote()
            if where is None:
                raise ControllerUnreachableError(
                    f"overlay {comp.overlay} is not cached and no controller is known"
                )
            source = HttpRangeSource(
                blob_url(where[0], ArtifactKind.OVERLAY, comp.overlay),
                where[1],
                verify=self.stager.verify,
            )
        try:
            manifest = await asyncio.to_thread(read_manifest, source)
        finally:
            _close(source)
        if manifest.root_digest.hex() != comp.overlay.lower():
            raise SynthesisError(f"overlay {comp.overlay} has another overlay's root digest")
        if manifest.memory_base_digest is None:
            return None
        return await self.stager.ensure(
            ArtifactKind.IMAGE, manifest.memory_base_digest.hex(), attempts=FETCH_ATTEMPTS
        )

    def discard(self, opened: Opened) -> None:
        """Release what :meth:`fetch` opened when it will not be synthesized."""
        if opened.source is not None:
            _close(opened.source)
        if opened.remote is not None and opened.overlay is not None:
            self.cache.release(ArtifactKind.OVERLAY, opened.overlay)
            self.cache.remove(ArtifactKind.OVERLAY, opened.overlay)

    # -- synthesize ----------------------------------------------------------------------

    async def synthesize(
        self, instance_id: str, comp: Component, opened: Opened, memory_mib: int | None = None
    ) -> Path:
        """Build the component's disk (and, for a resumable overlay, its RAM and device
        state) from ``opened``; returns the disk's path. ``memory_mib`` is the VM's
        memory: a resumable overlay's RAM must be exactly that size.

        Raises:
            SynthesisError: the apply failed (nothing is left behind), or the overlay's
                RAM does not fit the VM's memory.
            ControllerUnreachableError: the link failed while segments were streaming.
        """
        out = self.disk_path(instance_id, comp)
        out.parent.mkdir(parents=True, exist_ok=True)
        memory = None
        try:
            if opened.resume_memory is not None:
                _check_memory(comp, opened.resume_memory, memory_mib)
                memory = self.memory_path(instance_id, comp)
            if opened.source is None:
                await asyncio.to_thread(_copy_sparse, opened.base, out)
            else:
                await _apply(opened.source, opened.base, out, memory, opened.memory_base)
            if opened.remote is not None:
                await asyncio.to_thread(self._keep_overlay, comp, opened.remote)
        except BaseException:
            if opened.remote is not None and comp.overlay is not None:
                self.cache.remove(ArtifactKind.OVERLAY, comp.overlay)
            raise
        finally:
            if isinstance(opened.source, HttpRangeSource):
                self.stager.bytes_received += opened.source.bytes_fetched
            if opened.source is not None:
                _close(opened.source)
            if opened.remote is not None and comp.overlay is not None:
                self.cache.release(ArtifactKind.OVERLAY, comp.overlay)
        if comp.overlay is not None:
            self.cache.touch(ArtifactKind.OVERLAY, comp.overlay)
        self.cache.touch(ArtifactKind.IMAGE, comp.image or "")
        return out

    def _keep_overlay(self, comp: Component, remote: HttpRangeSource) -> None:
        """Complete the overlay's local copy from what synthesis read, verify, cache it."""
        assert comp.overlay is not None and remote.tee is not None
        try:
            remote.fill_gaps()
            size = remote.size or 0
            verify_artifact(ArtifactKind.OVERLAY, comp.overlay, remote.tee)
        except (IntegrityError, ControllerUnreachableError, OSError) as exc:
            # The disk is fine (every segment was checked); only the offline copy is lost.
            log.warning("could not cache overlay %s: %s", comp.overlay, exc)
            self.cache.remove(ArtifactKind.OVERLAY, comp.overlay)
            return
        os.replace(remote.tee, self.cache.path(ArtifactKind.OVERLAY, comp.overlay))
        self.cache.mark_complete(ArtifactKind.OVERLAY, comp.overlay, size)


def _check_signed(
    signing: InstanceSigning | None, project: str, kind: ArtifactKind, digest: str
) -> None:
    if signing is None:
        return
    check_artifact(kind, digest, signing.artifacts, signing.require_signatures, project)
    log.info("%s %s: signatures checked", kind.value, digest[:16])


def _check_memory(comp: Component, memory_size: int, memory_mib: int | None) -> None:
    if memory_mib is not None and memory_size != memory_mib * MIB:
        raise SynthesisError(
            f"overlay {comp.overlay} resumes a VM with {memory_size / MIB:g} MiB of RAM, "
            f"but the app gives it {memory_mib} MiB: set the app's memory to "
            f"{memory_size / MIB:g} MiB"
        )


async def _apply(
    source: ByteSource, base: Path, out: Path, memory: Path | None, memory_base: Path | None
) -> None:
    applier = StreamingApplier(
        source, base, out, force=True, threads=4,
        memory_out=memory, device_state_out=device_state_of(memory) if memory else None,
        memory_base=memory_base if memory else None,
    )  # fmt: skip
    # The threads go on when the task is cancelled: let start() finish (it cleans up
    # after itself if it fails), then abort, which wait() in its thread honours.
    starting = asyncio.ensure_future(asyncio.to_thread(applier.start))
    try:
        await asyncio.shield(starting)
        await asyncio.to_thread(applier.wait)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await starting
        await asyncio.to_thread(applier.abort)
        raise


def _copy_sparse(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _close(source: object) -> None:
    close = getattr(source, "close", None)
    if close is not None:
        with contextlib.suppress(Exception):
            close()


async def wait_for_answer(
    endpoint: str, timeout: float, alive: Callable[[], Awaitable[bool]] | None = None
) -> float | None:
    """GET ``http://endpoint/`` until anything answers; seconds waited, None on timeout.

    Any HTTP answer counts (the service is up, whatever it says). ``alive``, if given,
    is an async callable returning False when the workload died: waiting stops then.
    """
    start = time.monotonic()
    async with httpx.AsyncClient(timeout=2.0, trust_env=False) as http:  # never a proxy
        while time.monotonic() - start < timeout:
            try:
                await http.get(f"http://{endpoint}/")
                return time.monotonic() - start
            except httpx.HTTPError:
                pass
            if alive is not None and not await alive():
                return None
            await asyncio.sleep(0.2)
    return None
