"""Shared builders for the agent's unit tests: desired instances and documents, wheels."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path
from typing import Any

from cloudlet.schemas import DesiredInstance, DesiredStateDoc

#: A command the fake driver accepts; never actually run by it.
COMMAND = [sys.executable, "-m", "http.server", "$PORT"]


def instance(
    instance_id: str = "i1",
    *,
    state: str = "running",
    revision: int = 1,
    components: list[dict[str, Any]] | None = None,
    app: str = "web",
) -> DesiredInstance:
    return DesiredInstance.model_validate(
        {
            "id": instance_id,
            "name": f"{app}-{instance_id}",
            "app": app,
            "project": "admin",
            "desired_state": state,
            "components": components if components is not None else [{"command": COMMAND}],
            "resources": {},
            "revision": revision,
        }
    )


def doc(
    revision: int, instances: list[DesiredInstance], *, full: bool = False, since: int = 0
) -> DesiredStateDoc:
    return DesiredStateDoc(
        site="s1", revision=revision, full=full, since=since, instances=instances
    )


def wheel(
    path: Path,
    version: str,
    *,
    says: str | None = None,
    extra: dict[str, str | bytes] | None = None,
) -> Path:
    """A minimal pure wheel of cloudlet at ``version`` (its metadata says ``says``), with
    ``extra`` members stored as they are."""
    info = f"cloudlet-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr("cloudlet/__init__.py", f"__version__ = {version!r}\n")
        metadata = f"Metadata-Version: 2.1\nName: cloudlet\nVersion: {says or version}\n"
        whl.writestr(f"{info}/METADATA", metadata)
        whl.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\n")
        whl.writestr(f"cloudlet-{version}.data/purelib/cloudlet/extra.py", "X = 1\n")
        for name, content in (extra or {}).items():
            whl.writestr(name, content)
    return path
