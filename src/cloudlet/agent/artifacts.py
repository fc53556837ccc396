"""The site's artifact cache: base images by digest and overlays by id, under ``cache_dir``.

Layout: ``images/<digest>`` and ``overlays/<id>``; a download in progress is
``<name>.part`` beside its final name, its persisted offset in the store's
``artifacts`` table (``fetched``), so it resumes after a restart or a cut link.
Complete artifacts are renamed into place only after their digest checked out.

The cache keeps to a size budget by evicting the least recently used artifacts,
never one that is pinned: listed in the desired ``images``, used by an instance the
site should hold, or being fetched. Every change bumps ``cache_version`` in meta so
the report loop sends the listing (``AgentReport.cache``) only when it changed.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cloudlet.agent import desired
from cloudlet.agent.store import CACHE_VERSION, Store, get_meta, set_meta
from cloudlet.errors import ConfigError
from cloudlet.schemas import CachedImage, ComponentKind, DesiredState
from cloudlet.schemas.artifacts import ArtifactKind
from cloudlet.synthesis.index import INDEX_SUFFIX

log = logging.getLogger(__name__)

GIB = 1024**3
_DIRS = {ArtifactKind.IMAGE: "images", ArtifactKind.OVERLAY: "overlays"}
#: Files the synthesis library keeps beside a base (its chunk index).
_SIDECARS = (INDEX_SUFFIX,)


@dataclass(frozen=True)
class Artifact:
    """One cache row."""

    kind: ArtifactKind
    id: str
    size: int | None
    fetched: int
    complete: bool
    last_used: float

    @property
    def held(self) -> int:
        """Bytes it occupies on disk (roughly: sparse files may take less)."""
        return (self.size or 0) if self.complete else self.fetched

    def to_wire(self) -> CachedImage:
        return CachedImage(
            digest=self.id,
            kind=self.kind,
            size=self.size or 0,
            complete=self.complete,
            fetched=self.held,
            last_used=datetime.fromtimestamp(self.last_used, UTC),
        )


class ArtifactCache:
    """Files under ``root`` and their rows in ``store``; thread-safe through the store."""

    def __init__(
        self,
        store: Store,
        root: Path,
        budget_bytes: int,
        on_change: Callable[[], None] | None = None,
        on_lookup: Callable[[ArtifactKind, bool], None] | None = None,
    ) -> None:
        """A cache of up to ``budget_bytes`` under ``root``.

        Args:
            on_change: called (from any thread) after the cache's contents changed.
            on_lookup: called with the kind and whether it was a hit at each
                :meth:`lookup` (the agent's metrics).
        """
        self.store = store
        self.root = Path(root)
        self.budget_bytes = budget_bytes
        self.on_change = on_change
        self.on_lookup = on_lookup
        #: Artifacts being fetched or applied right now: never evicted.
        self._busy: set[tuple[ArtifactKind, str]] = set()
        self._busy_lock = threading.Lock()
        try:
            for sub in _DIRS.values():
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot use {self.root} as the artifact cache: {exc}") from exc

    def hold(self, kind: ArtifactKind, artifact_id: str) -> bool:
        """Pin an artifact while it is fetched or applied (any thread).

        Returns:
            False if someone holds it already (and so writes its ``.part`` file).
        """
        with self._busy_lock:
            if (kind, artifact_id) in self._busy:
                return False
            self._busy.add((kind, artifact_id))
            return True

    def release(self, kind: ArtifactKind, artifact_id: str) -> None:
        with self._busy_lock:
            self._busy.discard((kind, artifact_id))

    # -- paths and rows ------------------------------------------------------------------

    def path(self, kind: ArtifactKind, artifact_id: str) -> Path:
        """Where the complete artifact lives (whether or not it is there yet)."""
        if not artifact_id or "/" in artifact_id or artifact_id.startswith("."):
            raise ValueError(f"not an artifact id: {artifact_id!r}")
        return self.root / _DIRS[kind] / artifact_id

    def part_path(self, kind: ArtifactKind, artifact_id: str) -> Path:
        """Where a download in progress writes."""
        final = self.path(kind, artifact_id)
        return final.with_name(final.name + ".part")

    def get(self, kind: ArtifactKind, artifact_id: str) -> Artifact | None:
        rows = self.store.query(
            "SELECT * FROM artifacts WHERE kind = ? AND id = ?", (kind.value, artifact_id)
        )
        return _from_row(rows[0]) if rows else None

    def complete_path(self, kind: ArtifactKind, artifact_id: str) -> Path | None:
        """The artifact's file if it is complete here, else None."""
        art = self.get(kind, artifact_id)
        path = self.path(kind, artifact_id)
        if art is not None and art.complete and path.is_file():
            return path
        return None

    def lookup(self, kind: ArtifactKind, artifact_id: str) -> Path | None:
        """The artifact's file for someone about to use it, marked used; None if it is
        not complete here. Counted as a hit or a miss."""
        path = self.complete_path(kind, artifact_id)
        if path is not None:
            self.touch(kind, artifact_id)
        if self.on_lookup is not None:
            self.on_lookup(kind, path is not None)
        return path

    def all(self) -> list[Artifact]:
        return all_artifacts(self.store)

    def listing(self) -> list[CachedImage]:
        """The cache as the report carries it."""
        return [a.to_wire() for a in self.all()]

    def version(self) -> int:
        """A counter bumped by every change to the listing."""
        return int(self.store.get_meta(CACHE_VERSION) or 0)

    # -- writes --------------------------------------------------------------------------

    def _write(self, sql: str, params: tuple[object, ...]) -> None:
        with self.store.transaction() as conn:
            conn.execute(sql, params)
            set_meta(conn, CACHE_VERSION, int(get_meta(conn, CACHE_VERSION) or 0) + 1)
        if self.on_change is not None:
            self.on_change()

    def begin(self, kind: ArtifactKind, artifact_id: str, size: int | None) -> Artifact:
        """Start (or find) the row of an artifact about to be fetched."""
        art = self.get(kind, artifact_id)
        if art is None:
            self._write(
                "INSERT INTO artifacts (kind, id, size, fetched, complete, last_used) "
                "VALUES (?, ?, ?, 0, 0, ?)",
                (kind.value, artifact_id, size, time.time()),
            )
        elif size is not None and art.size != size:
            self._write(
                "UPDATE artifacts SET size = ? WHERE kind = ? AND id = ?",
                (size, kind.value, artifact_id),
            )
        art = self.get(kind, artifact_id)
        assert art is not None
        return art

    def progress(self, kind: ArtifactKind, artifact_id: str, fetched: int) -> None:
        """Persist how many leading bytes of the ``.part`` file are on disk (fsynced)."""
        self._write(
            "UPDATE artifacts SET fetched = ? WHERE kind = ? AND id = ?",
            (fetched, kind.value, artifact_id),
        )

    def mark_complete(self, kind: ArtifactKind, artifact_id: str, size: int) -> None:
        """Record an artifact whose file is in place and verified."""
        self._write(
            "INSERT INTO artifacts (kind, id, size, fetched, complete, last_used) "
            "VALUES (?, ?, ?, ?, 1, ?) ON CONFLICT (kind, id) DO UPDATE SET "
            "size = excluded.size, fetched = excluded.fetched, complete = 1, "
            "last_used = excluded.last_used",
            (kind.value, artifact_id, size, size, time.time()),
        )

    def touch(self, kind: ArtifactKind, artifact_id: str) -> None:
        """Note a use (LRU order); not a listing change worth a report of its own."""
        with self.store.transaction() as conn:
            conn.execute(
                "UPDATE artifacts SET last_used = ? WHERE kind = ? AND id = ?",
                (time.time(), kind.value, artifact_id),
            )

    def remove(self, kind: ArtifactKind, artifact_id: str) -> None:
        """Delete an artifact's files and row (a missing one is fine)."""
        final = self.path(kind, artifact_id)
        for path in (final, self.part_path(kind, artifact_id)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        for suffix in _SIDECARS:
            with contextlib.suppress(FileNotFoundError):
                final.with_name(final.name + suffix).unlink()
        self._write("DELETE FROM artifacts WHERE kind = ? AND id = ?", (kind.value, artifact_id))

    # -- eviction ------------------------------------------------------------------------

    def pinned(self) -> set[tuple[ArtifactKind, str]]:
        """Artifacts that must stay: desired images, those of live instances, busy ones."""
        keep = {(ArtifactKind.IMAGE, d) for d in desired.images(self.store)}
        for entry in desired.entries(self.store).values():
            if entry.state is DesiredState.DELETED:
                continue
            for comp in entry.instance.components:
                if comp.kind is not ComponentKind.VM:
                    continue
                if comp.image:
                    keep.add((ArtifactKind.IMAGE, comp.image))
                if comp.overlay:
                    keep.add((ArtifactKind.OVERLAY, comp.overlay))
        with self._busy_lock:
            return keep | self._busy

    def pinned_fraction(self) -> float:
        """Bytes held by pinned artifacts, as a fraction of the budget (may pass 1).

        Unpinned bytes are left out: eviction frees them on demand, so a cache full of
        them is an LRU cache doing its job; pinned ones it may never free.
        """
        keep = self.pinned()
        held = sum(a.held for a in self.all() if (a.kind, a.id) in keep)
        return held / self.budget_bytes

    def evict(self, extra_pins: Iterable[tuple[ArtifactKind, str]] = ()) -> list[Artifact]:
        """Remove least recently used, unpinned artifacts until the cache fits its budget.

        Returns:
            What was removed. Pinned artifacts may keep the cache over budget.
        """
        arts = self.all()
        total = sum(a.held for a in arts)
        if total <= self.budget_bytes:
            return []
        keep = self.pinned() | set(extra_pins)
        removed = []
        for art in sorted(arts, key=lambda a: a.last_used):
            if total <= self.budget_bytes:
                break
            if (art.kind, art.id) in keep:
                continue
            log.info("cache over budget: evicting %s %s (%d bytes)", art.kind, art.id, art.held)
            self.remove(art.kind, art.id)
            total -= art.held
            removed.append(art)
        if total > self.budget_bytes:
            log.warning(
                "artifact cache holds %d bytes, over its %d byte budget, all of it pinned",
                total,
                self.budget_bytes,
            )
        return removed


def all_artifacts(store: Store) -> list[Artifact]:
    """Every cache row, complete or not (readable without the cache's files)."""
    return [_from_row(r) for r in store.query("SELECT * FROM artifacts ORDER BY kind, id")]


def _from_row(row: sqlite3.Row) -> Artifact:
    return Artifact(
        kind=ArtifactKind(row["kind"]),
        id=row["id"],
        size=row["size"],
        fetched=row["fetched"],
        complete=bool(row["complete"]),
        last_used=row["last_used"],
    )
