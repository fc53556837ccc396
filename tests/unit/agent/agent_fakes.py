"""Shared builders for the agent's unit tests: desired instances and documents."""

from __future__ import annotations

import sys
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
