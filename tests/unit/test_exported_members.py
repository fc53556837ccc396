"""Each package's public names are pinned: changing them is a deliberate act."""

from __future__ import annotations

import importlib

import pytest

import cloudlet.errors

PUBLIC = {
    "cloudlet.schemas": {
        "DEFAULT_PROJECT", "ActualInstance", "ActualState", "AgentReport", "App", "AppCreate",
        "Availability", "Component", "ComponentKind", "DesiredInstance", "DesiredState",
        "DesiredStateDoc", "EnrollRequest", "EnrollResponse", "Event", "EventKind", "Instance",
        "InstanceAction",
        "InstanceCreate", "InstanceOrigin", "JoinToken", "JoinTokenCreate", "OutboxEvent",
        "Problem", "RejectedEvent", "ReportAck", "Resources", "Site", "SiteCreate", "SiteCreated",
        "SiteState",
        "SiteUpdate", "SyncStatus", "Utilization", "ArtifactKind", "CachedImage", "Image",
        "Overlay", "PrestageRequest", "Upload", "UploadCreate",
    },
    "cloudlet.agent": {"Agent", "Store", "run_agent"},
    "cloudlet.web": {
        "MIB",
        "BodyGuard",
        "BodyLimits",
        "StreamedRoute",
        "read_bounded",
        "replay_body",
    },
    "cloudlet.controller.ui": {"STATIC_DIR", "install"},
    "cloudlet.controller.blobs": {
        "READ_CHUNK", "BlobStore", "BlobStream", "FilesystemBlobStore", "S3BlobStore",
        "open_blob_store",
    },
}  # fmt: skip


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names(module: str) -> None:
    mod = importlib.import_module(module)
    assert set(mod.__all__) == PUBLIC[module]
    for name in mod.__all__:
        assert getattr(mod, name) is not None


def test_every_error_descends_from_the_root() -> None:
    errors = [
        obj
        for obj in vars(cloudlet.errors).values()
        if isinstance(obj, type) and issubclass(obj, Exception)
    ]
    assert all(issubclass(e, cloudlet.errors.CloudletError) for e in errors)
    # The tree in the module docstring names every class.
    for e in errors:
        assert e.__name__ in (cloudlet.errors.__doc__ or "")
