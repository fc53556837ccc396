"""The quota checks at the service level, on a migrated SQLite database: what counts,
what asks, and that asking less is never refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from controller_fakes import enrolled_site, sessions, web_app

from cloudlet.controller.services import catalog, instances, quotas
from cloudlet.errors import QuotaExceededError
from cloudlet.schemas import InstanceCreate
from cloudlet.schemas.quotas import QuotaUpdate
from cloudlet.schemas.rollouts import AppVersionCreate


def test_usage_counts_live_instances_at_the_version_each_runs(tmp_path: Path) -> None:
    maker = sessions(tmp_path)
    with maker.begin() as session:
        enrolled_site(session)
        web_app(session)  # 1 vCPU, 64 MiB
        for _ in range(3):
            instances.create_instance(session, "admin", InstanceCreate(app="web"), 30.0)
    with maker.begin() as session:
        gone, *_ = instances.list_instances(session, "admin")
        instances.delete_instance(session, gone)
        app = catalog.get_app(session, "admin", "web")
        assert app is not None
        version = AppVersionCreate(
            components=app.components, resources={"vcpus": 2, "memory_mib": 128}
        )
        catalog.publish_version(session, app, version)  # no instance runs it yet
    with maker.begin() as session:
        assert quotas.instance_usage(session, "admin") == {
            "instances": 2, "vcpus": 2.0, "memory_mib": 128.0
        }  # fmt: skip
        # A new instance runs the new version, and asks for its resources.
        quotas.set_limits(session, "admin", QuotaUpdate(vcpus=3.5))
        with pytest.raises(QuotaExceededError) as refused:
            instances.create_instance(session, "admin", InstanceCreate(app="web"), 30.0)
        assert (refused.value.used, refused.value.requested) == (2.0, 2.0)


def test_a_version_asking_less_passes_even_over_quota(tmp_path: Path) -> None:
    maker = sessions(tmp_path)
    with maker.begin() as session:
        enrolled_site(session)
        web_app(session)
        for _ in range(2):
            instances.create_instance(session, "admin", InstanceCreate(app="web"), 30.0)
        quotas.set_limits(session, "admin", QuotaUpdate(vcpus=1, memory_mib=1))
    with maker.begin() as session:
        assert quotas.quota_view(session, "admin").over == ["vcpus", "memory_mib"]
        quotas.check_version(session, "admin", _app_id(session), {"vcpus": 0.5, "memory_mib": 64})
        with pytest.raises(QuotaExceededError, match=r"quota vcpus 1, in use 2, asked 0\.2"):
            quotas.check_version(
                session, "admin", _app_id(session), {"vcpus": 1.1, "memory_mib": 64}
            )


def test_null_clears_a_limit_and_an_omitted_one_is_kept(tmp_path: Path) -> None:
    maker = sessions(tmp_path)
    with maker.begin() as session:
        quotas.set_limits(session, "admin", QuotaUpdate(instances=2, image_bytes=10))
        quotas.set_limits(session, "admin", QuotaUpdate(instances=None))
        limits = quotas.quota_view(session, "admin").limits
        assert (limits.instances, limits.image_bytes) == (None, 10)


def _app_id(session: object) -> str:
    app = catalog.get_app(session, "admin", "web")  # type: ignore[arg-type]
    assert app is not None
    return app.id
