"""Desired state held at the site: applying pulled documents by cursor, reading entries back.

Rules (the controller's side is in the sync protocol of ``schemas/sync.py``):

- A snapshot (``full``) replaces every controller-origin entry: entries it does
  not name become ``deleted``. Site-origin entries are the site's own and stay.
- A delta applies entry by entry; an entry whose revision is not newer than the
  one held for that instance is a duplicate or stale and is ignored.
- A delta must start at the cursor the agent holds (``since == cursor``). If it
  does not, a change may have been missed: :class:`CursorGapError` is raised, the
  document is not applied, and the caller re-pulls with ``since=0`` for a snapshot.
- The document (with its ``images`` list and ``agent`` target, both always
  complete) and the new cursor are stored in one transaction before anyone acts
  on them.
"""

from __future__ import annotations

import secrets
import sqlite3
import uuid
from dataclasses import dataclass

from cloudlet.agent import client_auth, outbox
from cloudlet.agent.store import AGENT_TARGET, CURSOR, Store, get_meta, set_meta
from cloudlet.errors import ConflictError, NotFoundError, SyncError
from cloudlet.schemas import (
    ComponentKind,
    DesiredInstance,
    DesiredState,
    DesiredStateDoc,
    EventKind,
    InstanceOrigin,
)
from cloudlet.schemas.sync import AgentTarget


class CursorGapError(SyncError):
    """A delta did not start at the agent's cursor; pull a snapshot instead."""


@dataclass(frozen=True)
class DesiredEntry:
    """One desired instance as stored at the site."""

    instance: DesiredInstance
    origin: InstanceOrigin

    @property
    def id(self) -> str:
        return self.instance.id

    @property
    def revision(self) -> int:
        return self.instance.revision

    @property
    def state(self) -> DesiredState:
        return self.instance.desired_state

    @property
    def epoch(self) -> int:
        return self.instance.epoch


def apply_doc(store: Store, doc: DesiredStateDoc) -> bool:
    """Store a pulled document and advance the cursor to ``doc.revision``.

    Returns:
        True if any entry changed (the reconciler should run).

    Raises:
        CursorGapError: a delta that does not start at the held cursor.
    """
    changed = False
    with store.transaction() as conn:
        cursor = int(get_meta(conn, CURSOR) or 0)
        if not doc.full and doc.since != cursor:
            raise CursorGapError(
                f"delta starts at revision {doc.since} but this site holds {cursor}"
            )
        held = {
            row["id"]: (row["revision"], row["doc"])
            for row in conn.execute(
                "SELECT id, revision, doc FROM desired WHERE origin = ?",
                (InstanceOrigin.CONTROLLER.value,),
            )
        }
        for inst in doc.instances:
            body = inst.model_dump_json()
            old = held.get(inst.id)
            if old is not None:
                # A snapshot is authoritative even if revisions went backwards (a
                # restored controller); a delta only moves an entry forward.
                stale = old[1] == body if doc.full else inst.revision <= old[0]
                if stale:
                    continue
            _upsert(conn, inst, body)
            changed = True
        if doc.full:
            named = {inst.id for inst in doc.instances}
            for instance_id, (_, body) in held.items():
                if instance_id in named:
                    continue
                gone = DesiredInstance.model_validate_json(body)
                if gone.desired_state is DesiredState.DELETED:
                    continue
                gone = gone.model_copy(
                    update={"desired_state": DesiredState.DELETED, "revision": doc.revision}
                )
                _upsert(conn, gone, gone.model_dump_json())
                changed = True
        # The images list is always complete: replace what the site held.
        conn.execute("DELETE FROM desired_images")
        conn.executemany(
            "INSERT OR IGNORE INTO desired_images (digest) VALUES (?)",
            [(d,) for d in doc.images],
        )
        set_meta(conn, AGENT_TARGET, doc.agent.model_dump_json() if doc.agent else "")
        if doc.client_keys is not None:
            client_auth.store_keys(conn, doc.client_keys)
        if doc.client_revoked is not None:
            client_auth.store_revoked(conn, doc.client_revoked)
        set_meta(conn, CURSOR, doc.revision)
    return changed


def images(store: Store) -> list[str]:
    """Digests of the base images the controller wants this site to hold."""
    return [r["digest"] for r in store.query("SELECT digest FROM desired_images ORDER BY digest")]


def agent_target(store: Store) -> AgentTarget | None:
    """The agent version the controller wants this site to run (None: any)."""
    held = store.get_meta(AGENT_TARGET)
    return AgentTarget.model_validate_json(held) if held else None


def _upsert(
    conn: sqlite3.Connection,
    inst: DesiredInstance,
    body: str,
    origin: InstanceOrigin = InstanceOrigin.CONTROLLER,
) -> None:
    conn.execute(
        "INSERT INTO desired (id, origin, revision, desired_state, doc) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET revision = excluded.revision, "
        "desired_state = excluded.desired_state, doc = excluded.doc",
        (inst.id, origin.value, inst.revision, inst.desired_state.value, body),
    )


def entries(store: Store) -> dict[str, DesiredEntry]:
    """Every desired entry held, by instance id."""
    return {
        row["id"]: DesiredEntry(
            DesiredInstance.model_validate_json(row["doc"]), InstanceOrigin(row["origin"])
        )
        for row in store.query("SELECT id, origin, doc FROM desired ORDER BY id")
    }


def forget(store: Store, instance_ids: list[str]) -> None:
    """Drop deleted entries once their deletion has been reported."""
    with store.transaction() as conn:
        conn.executemany(
            "DELETE FROM desired WHERE id = ? AND desired_state = ?",
            [(i, DesiredState.DELETED.value) for i in instance_ids],
        )


def add_site_instance(
    store: Store,
    app: str,
    name: str | None = None,
    project: str | None = None,
    client: dict[str, str] | None = None,
) -> DesiredInstance:
    """Start an app at this site on a local client's request (works offline).

    The app's definition comes from any instance of it the site holds (of ``project``
    when given: a client token's, which the instance is then metered to); the new
    instance is site-origin (no snapshot removes it) and announced to the controller
    by an INSTANCE_CREATED event, written in the same transaction, naming the
    ``client`` (its token's subject and id) if there is one.

    Raises:
        NotFoundError: this site holds no instance of ``app`` to take its definition from.
    """
    with store.transaction() as conn:
        template = None
        for row in conn.execute("SELECT doc FROM desired ORDER BY origin, revision DESC"):
            candidate = DesiredInstance.model_validate_json(row["doc"])
            if candidate.app == app and candidate.components:
                if project is not None and candidate.project != project:
                    continue
                template = candidate
                break
        if template is None:
            whose = f" of project {project!r}" if project is not None else ""
            raise NotFoundError(f"this site holds no definition of app {app!r}{whose}")
        instance_id = str(uuid.uuid4())
        inst = template.model_copy(
            update={
                "id": instance_id,
                "name": name or f"{app}-{secrets.token_hex(3)}",
                "desired_state": DesiredState.RUNNING,
                "revision": int(get_meta(conn, CURSOR) or 0),
            }
        )
        _upsert(conn, inst, inst.model_dump_json(), InstanceOrigin.SITE)
        outbox.append(
            conn,
            EventKind.INSTANCE_CREATED,
            instance=inst.id,
            data={
                "name": inst.name,
                "app": inst.app,
                "project": inst.project,
                "origin": InstanceOrigin.SITE.value,
                "template": template.id,
                **({"client": client} if client else {}),
            },
        )
    return inst


def get_entry(store: Store, instance_id: str) -> DesiredEntry | None:
    """The desired entry of one instance, if the site holds it."""
    rows = store.query("SELECT origin, doc FROM desired WHERE id = ?", (instance_id,))
    if not rows:
        return None
    doc = DesiredInstance.model_validate_json(rows[0]["doc"])
    return DesiredEntry(doc, InstanceOrigin(rows[0]["origin"]))


def set_local_state(store: Store, instance_id: str, state: DesiredState) -> DesiredInstance:
    """Stop, start, suspend or resume an instance on a local request (works offline).

    A site-origin instance is the site's own. A controller-origin one takes the
    request as a local override at the same revision: the controller's next change
    to that instance (or a snapshot) wins over it.

    Raises:
        NotFoundError: no such live instance at this site.
        ConflictError: suspend of an instance with a process component, or of a
            stopped one; resume of a stopped one.
    """
    with store.transaction() as conn:
        row = conn.execute(
            "SELECT origin, doc FROM desired WHERE id = ?", (instance_id,)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no instance {instance_id!r} at this site")
        inst = DesiredInstance.model_validate_json(row["doc"])
        current = inst.desired_state
        if current is DesiredState.DELETED:
            raise NotFoundError(f"no instance {instance_id!r} at this site")
        if state is DesiredState.SUSPENDED:
            procs = [c.name for c in inst.components if c.kind is not ComponentKind.VM]
            if procs:
                raise ConflictError(
                    f"instance {inst.name!r} cannot be suspended: its component(s) "
                    f"{', '.join(procs)} run as processes, and only VM components keep "
                    "their memory and device state; stop it instead"
                )
            if current is DesiredState.STOPPED:
                raise ConflictError(f"instance {inst.name!r} is stopped: start it first")
        if current is state:
            return inst
        changed = inst.model_copy(update={"desired_state": state})
        _upsert(conn, changed, changed.model_dump_json(), InstanceOrigin(row["origin"]))
    return changed


def remove_site_instance(store: Store, instance_id: str) -> None:
    """Mark a site-origin instance deleted (the reconciler removes it).

    Raises:
        NotFoundError: no such instance.
        ConflictError: the controller owns it; delete it there.
    """
    with store.transaction() as conn:
        row = conn.execute(
            "SELECT origin, doc FROM desired WHERE id = ?", (instance_id,)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no instance {instance_id!r} at this site")
        if row["origin"] != InstanceOrigin.SITE.value:
            raise ConflictError(f"instance {instance_id!r} belongs to the controller")
        inst = DesiredInstance.model_validate_json(row["doc"])
        gone = inst.model_copy(update={"desired_state": DesiredState.DELETED})
        _upsert(conn, gone, gone.model_dump_json(), InstanceOrigin.SITE)
