"""The one exception tree of Cloudlet; imports nothing from the project.

CloudletError
├── ConfigError                 bad settings or flags
├── NotFoundError               a named thing does not exist
├── ConflictError               it exists already / state forbids the change
├── InvalidInputError           well-formed request that makes no sense
├── AuthError                   missing, wrong, used or expired credential
│   ├── TokenExpiredError
│   └── TokenRevokedError       a client token revoked before its expiry
├── ForbiddenError              authenticated, but the role or project may not do this
│   └── QuotaExceededError      the project's quota leaves no room for the request
├── SignatureError              an artifact's signature is missing, unknown or does not verify
├── TooLargeError               a body or field larger than its bound
├── PlacementError              no site fits an instance
├── BlobStoreError              the artifact store (disk, S3) failed or refused
├── SyncError                   controller <-> agent exchange failed
│   └── ControllerUnreachableError
├── HandoffLinkError            no path for a handoff's stream, direct or by the relay
├── DriverError                 a compute backend failed
│   ├── WorkloadNotFoundError
│   └── DriverUnavailableError  backend missing on this host (no qemu, no kvm)
└── SynthesisError              overlay create / apply failed
    ├── OverlayFormatError      bad magic, unknown version, truncated, corrupt
    ├── BaseMismatchError       the base is not the one the overlay was made on
    └── IntegrityError          a digest did not match
"""

from __future__ import annotations


class CloudletError(Exception):
    """Root of every error Cloudlet raises on purpose."""


class ConfigError(CloudletError):
    pass


class NotFoundError(CloudletError):
    pass


class ConflictError(CloudletError):
    pass


class InvalidInputError(CloudletError):
    pass


class AuthError(CloudletError):
    pass


class TokenExpiredError(AuthError):
    pass


class TokenRevokedError(AuthError):
    """A client token its project revoked before it expired."""


class ForbiddenError(CloudletError):
    pass


class QuotaExceededError(ForbiddenError):
    """A creation the project's quota has no room for; says which quota and by how much."""

    def __init__(
        self, project: str, quota: str, limit: float, used: float, requested: float
    ) -> None:
        super().__init__(
            f"project {project}: quota {quota} {limit:g}, in use {used:g}, asked {requested:g}"
        )
        self.project = project
        self.quota = quota
        self.limit = limit
        self.used = used
        self.requested = requested


class SignatureError(CloudletError):
    """An artifact is unsigned where signatures are required, or a signature of it is by an
    unknown or revoked key, or does not verify over its digest."""


class TooLargeError(CloudletError):
    pass


class PlacementError(CloudletError):
    pass


class BlobStoreError(CloudletError):
    pass


class SyncError(CloudletError):
    pass


class ControllerUnreachableError(SyncError):
    pass


class HandoffLinkError(CloudletError):
    pass


class DriverError(CloudletError):
    pass


class WorkloadNotFoundError(DriverError):
    pass


class DriverUnavailableError(DriverError):
    pass


class SynthesisError(CloudletError):
    pass


class OverlayFormatError(SynthesisError):
    pass


class BaseMismatchError(SynthesisError):
    pass


class IntegrityError(SynthesisError):
    pass
