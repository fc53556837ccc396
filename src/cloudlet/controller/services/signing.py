"""Signed artifacts at the controller: publisher keys, signatures checked before they are
stored, each project's policy, and what each desired instance carries so that its site
verifies offline.

A change that alters what a site must check (a signature added, a key revoked, a policy
set) bumps the revision of every live instance it concerns, so that the next delta
carries the instance again with its new :class:`InstanceSigning`.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloudlet import signing
from cloudlet.controller.db.models import (
    App,
    AppVersion,
    ArtifactSignature,
    Image,
    Instance,
    Overlay,
    PublisherKey,
    SigningPolicy,
)
from cloudlet.controller.services._util import utcnow
from cloudlet.controller.services.instances import bump_revision
from cloudlet.controller.services.projects import require_project
from cloudlet.errors import ConflictError, InvalidInputError, NotFoundError, SignatureError
from cloudlet.schemas import ComponentKind, DesiredInstance, DesiredState
from cloudlet.schemas.artifacts import ArtifactKind
from cloudlet.schemas.signing import (
    ArtifactTrust,
    InstanceSigning,
    PublisherKeyCreate,
    SignatureCreate,
    SignatureEntry,
    TrustedKey,
)

# --- publisher keys ---------------------------------------------------------------------


def create_key(session: Session, project: str, body: PublisherKeyCreate) -> PublisherKey:
    """Register a publisher's public key for ``project``.

    Raises:
        NotFoundError: no such project.
        InvalidInputError: not an Ed25519 public key.
        ConflictError: the name is taken in the project, or the key is registered already.
    """
    require_project(session, project)
    try:
        signing.public_key(body.public_key)
    except ValueError as exc:
        raise InvalidInputError(f"public_key is not an Ed25519 public key: {exc}") from exc
    kid = signing.key_id(body.public_key)
    if session.get(PublisherKey, kid) is not None:
        raise ConflictError(f"this public key is registered already (key id {kid})")
    taken = session.scalar(
        select(PublisherKey).where(PublisherKey.project == project, PublisherKey.name == body.name)
    )
    if taken is not None:
        raise ConflictError(f"project {project!r} has a publisher key {body.name!r} already")
    key = PublisherKey(
        kid=kid,
        project=project,
        name=body.name,
        public_key=body.public_key,
        created_at=utcnow(),
        revoked_at=None,
    )
    session.add(key)
    session.flush()
    return key


def list_keys(session: Session, project: str | None) -> list[PublisherKey]:
    """The publisher keys of ``project`` (None: every project), revoked ones included."""
    query = select(PublisherKey).order_by(PublisherKey.project, PublisherKey.name)
    if project is not None:
        query = query.where(PublisherKey.project == project)
    return list(session.scalars(query))


def revoke_key(session: Session, kid: str, project: str | None) -> tuple[PublisherKey, set[str]]:
    """Revoke a key: sites refuse its signatures from their next pull on. Revoking twice
    changes nothing.

    Returns:
        The key and the ids of the sites whose desired state changed.

    Raises:
        NotFoundError: no such key in ``project`` (None: any project).
    """
    key = session.get(PublisherKey, kid)
    if key is None or (project is not None and key.project != project):
        raise NotFoundError(f"publisher key {kid!r} not found")
    if key.revoked_at is not None:
        return key, set()
    key.revoked_at = utcnow()
    signed = session.scalars(select(ArtifactSignature.digest).where(ArtifactSignature.kid == kid))
    return key, _bump(session, _instances_using(session, set(signed)))


# --- signatures -------------------------------------------------------------------------


def add_signature(
    session: Session, kind: ArtifactKind, artifact: Image | Overlay, body: SignatureCreate
) -> tuple[ArtifactSignature, bool, set[str]]:
    """Store a signature of the artifact once it checks out.

    Returns:
        The signature, whether it is new (False: it was stored already), and the ids of
        the sites whose desired state changed.

    Raises:
        SignatureError: the key is not a registered, non-revoked key of the artifact's
            project, or the signature does not verify over the artifact's digest.
    """
    digest = artifact.digest if isinstance(artifact, Image) else artifact.id
    key = session.get(PublisherKey, body.kid)
    if key is None or key.project != artifact.project:
        raise SignatureError(
            f"key {body.kid} is not a publisher key of project {artifact.project!r}, "
            f"which the {kind.value} belongs to"
        )
    if key.revoked_at is not None:
        raise SignatureError(f"publisher key {key.name!r} ({key.kid}) is revoked")
    if not signing.verify(key.public_key, kind, digest, body.signature):
        raise SignatureError(
            f"the signature does not verify over {kind.value} {digest} with key "
            f"{key.name!r}: it signs another digest or kind, or was made by another key"
        )
    existing = session.get(ArtifactSignature, (kind.value, digest, key.kid))
    if existing is not None:
        return existing, False, set()
    row = ArtifactSignature(
        kind=kind.value,
        digest=digest,
        kid=key.kid,
        signature=body.signature,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row, True, _bump(session, _instances_using(session, {digest}))


def list_signatures(
    session: Session, kind: ArtifactKind, digest: str
) -> list[tuple[ArtifactSignature, PublisherKey]]:
    """The artifact's signatures with their keys, oldest first."""
    rows = session.execute(
        select(ArtifactSignature, PublisherKey)
        .join(PublisherKey, PublisherKey.kid == ArtifactSignature.kid)
        .where(ArtifactSignature.kind == kind.value, ArtifactSignature.digest == digest)
        .order_by(ArtifactSignature.created_at, ArtifactSignature.kid)
    )
    return [(s, k) for s, k in rows.tuples()]


# --- policy -----------------------------------------------------------------------------


def get_policy(session: Session, project: str) -> SigningPolicy:
    """The project's policy (a project that never set one requires nothing).

    Raises:
        NotFoundError: no such project.
    """
    require_project(session, project)
    policy = session.get(SigningPolicy, project)
    if policy is None:
        return SigningPolicy(project=project, require_signatures=False, updated_at=None)
    return policy


def set_policy(session: Session, project: str, require: bool) -> tuple[SigningPolicy, set[str]]:
    """Set the project's policy; returns it and the sites whose desired state changed.

    Raises:
        NotFoundError: no such project.
    """
    require_project(session, project)
    policy = session.get(SigningPolicy, project)
    if policy is not None and policy.require_signatures == require:
        return policy, set()
    if policy is None:
        policy = SigningPolicy(project=project, require_signatures=require, updated_at=utcnow())
        session.add(policy)
    else:
        policy.require_signatures = require
        policy.updated_at = utcnow()
    session.flush()
    return policy, _bump(session, _instances_using(session, None, project))


# --- what sites are told ----------------------------------------------------------------


def _vm_artifacts(components: Iterable[object]) -> list[tuple[ArtifactKind, str]]:
    found: list[tuple[ArtifactKind, str]] = []
    for comp in components:
        get = comp.get if isinstance(comp, dict) else lambda k, c=comp: getattr(c, k, None)
        if get("kind") not in (ComponentKind.VM, ComponentKind.VM.value):
            continue
        if image := get("image"):
            found.append((ArtifactKind.IMAGE, str(image).lower()))
        if overlay := get("overlay"):
            found.append((ArtifactKind.OVERLAY, str(overlay).lower()))
    return found


class Trust:
    """Builds each desired instance's :class:`InstanceSigning`, reading each project's
    policy and each artifact's keys and signatures once per desired-state document."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._policies: dict[str, bool] = {}
        self._artifacts: dict[tuple[ArtifactKind, str], ArtifactTrust] = {}
        self._keys: dict[str, list[TrustedKey]] = {}

    def requires(self, project: str) -> bool:
        if project not in self._policies:
            policy = self._session.get(SigningPolicy, project)
            self._policies[project] = bool(policy and policy.require_signatures)
        return self._policies[project]

    def _project_keys(self, project: str) -> list[TrustedKey]:
        if project not in self._keys:
            rows = self._session.execute(
                select(PublisherKey.kid, PublisherKey.public_key)
                .where(PublisherKey.project == project, PublisherKey.revoked_at.is_(None))
                .order_by(PublisherKey.kid)
            )
            self._keys[project] = [TrustedKey(kid=kid, x=x) for kid, x in rows]
        return self._keys[project]

    def artifact(self, kind: ArtifactKind, digest: str, fallback_project: str) -> ArtifactTrust:
        key = (kind, digest)
        if key not in self._artifacts:
            model = Image if kind is ArtifactKind.IMAGE else Overlay
            row = self._session.get(model, digest)
            project = row.project if row is not None else fallback_project
            # Signatures by revoked keys are listed too (their keys are not): the site
            # then says why it refuses, instead of calling the artifact unsigned.
            sigs = self._session.scalars(
                select(ArtifactSignature)
                .where(ArtifactSignature.kind == kind.value, ArtifactSignature.digest == digest)
                .order_by(ArtifactSignature.kid)
            )
            self._artifacts[key] = ArtifactTrust(
                kind=kind,
                digest=digest,
                keys=self._project_keys(project),
                signatures=[SignatureEntry(kid=s.kid, signature=s.signature) for s in sigs],
            )
        return self._artifacts[key]

    def of(self, entry: DesiredInstance) -> InstanceSigning | None:
        """None when there is nothing to check: no VM artifacts, or none signed and no
        policy requiring it (most documents: kept as small as before)."""
        if entry.desired_state is DesiredState.DELETED:
            return None
        used = _vm_artifacts(entry.components)
        if not used:
            return None
        require = self.requires(entry.project)
        artifacts = [self.artifact(k, d, entry.project) for k, d in dict.fromkeys(used)]
        if not require and not any(a.signatures for a in artifacts):
            return None
        return InstanceSigning(require_signatures=require, artifacts=artifacts)


def attach(session: Session, entries: list[DesiredInstance]) -> list[DesiredInstance]:
    """The entries, each VM instance's with the signing information its site checks."""
    trust = Trust(session)
    out = []
    for entry in entries:
        info = trust.of(entry)
        out.append(entry if info is None else entry.model_copy(update={"signing": info}))
    return out


# --- telling sites ----------------------------------------------------------------------


def _instances_using(
    session: Session, digests: set[str] | None, project: str | None = None
) -> list[Instance]:
    """Instances (of ``project``, if given) whose app, in any version of it, has a VM
    component naming one of ``digests`` (None: any) as its image or overlay."""
    if digests is not None and not digests:
        return []
    apps: set[str] = set()
    for source in (App, AppVersion):
        app_col = App.id if source is App else AppVersion.app_id
        for app_id, comps in session.execute(select(app_col, source.components)):
            used = [d for _, d in _vm_artifacts(comps or [])]
            if used and (digests is None or any(d in digests for d in used)):
                apps.add(app_id)
    if not apps:
        return []
    query = select(Instance).where(Instance.app_id.in_(apps))
    if project is not None:
        query = query.where(Instance.project == project)
    return list(session.scalars(query))


def _bump(session: Session, instances: list[Instance]) -> set[str]:
    """Move each live, controller-placed instance to a new revision of its site, so that
    the next delta carries it again; returns the sites to wake."""
    sites: set[str] = set()
    for instance in instances:
        if instance.origin != "controller" or instance.desired_state == DesiredState.DELETED.value:
            continue
        instance.revision = bump_revision(session, instance.site_id)
        instance.updated_at = utcnow()
        sites.add(instance.site_id)
    session.flush()
    return sites
