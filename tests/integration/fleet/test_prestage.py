"""Pre-staging a base image at a site through real controller and agent processes, and
the site.cache-full alarm its pinned images raise."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from cloudlet.synthesis import base_digest
from cloudlet.testbed.local import LocalAgent, LocalController, wait_for

pytestmark = pytest.mark.integration


def _upload(api: httpx.Client, path: Path, name: str) -> dict[str, object]:
    size = path.stat().st_size
    upload = api.post("/v1/uploads", json={"kind": "image", "name": name, "size": size}).json()
    with path.open("rb") as f:
        offset = 0
        while chunk := f.read(3 << 20):
            r = api.put(
                f"/v1/uploads/{upload['id']}",
                params={"offset": offset},
                content=chunk,
                headers={"content-type": "application/octet-stream"},
            )
            r.raise_for_status()
            offset += len(chunk)
    done = api.post(f"/v1/uploads/{upload['id']}/complete")
    assert done.status_code == 201, done.text
    return done.json()


def test_prestaged_image_reaches_the_site_cache(tmp_path: Path) -> None:
    image = tmp_path / "base.raw"
    with image.open("wb") as f:
        f.write(os.urandom(5 << 20))
        f.truncate(16 << 20)  # a zero tail, as real images have
    ctl = LocalController(tmp_path / "ctl").start()
    api = ctl.client()
    agent = None
    try:
        token = api.post("/v1/sites", json={"name": "lyon"}).json()["join_token"]["token"]
        agent = LocalAgent("lyon", tmp_path / "lyon", ctl.url, join_token=token).start()
        registered = _upload(api, image, "debian-tiny")
        assert registered["digest"] == base_digest(image).hex()

        staged = api.post("/v1/sites/lyon/images", json={"image": "debian-tiny"})
        assert staged.status_code == 202, staged.text

        def complete() -> dict[str, object] | None:
            for entry in api.get("/v1/sites/lyon/images").json():
                if entry["digest"] == registered["digest"] and entry["complete"]:
                    return entry
            return None

        entry = wait_for(complete, 60, f"the image cached at lyon\n{agent.proc.log_tail()}")
        assert entry["fetched"] == image.stat().st_size
        cached = list((tmp_path / "lyon").rglob(str(registered["digest"])))
        assert cached and base_digest(cached[0]).hex() == registered["digest"]
        # The 11 MiB zero tail stays a hole in the site's copy.
        assert cached[0].stat().st_blocks * 512 < 8 << 20
        wait_for(
            lambda: api.get("/v1/sites/lyon").json()["sync_status"] == "in-sync", 30, "in-sync"
        )
    finally:
        if agent is not None:
            agent.stop()
        ctl.stop()
        api.close()


def test_a_cache_filled_with_staged_images_raises_site_cache_full_once(tmp_path: Path) -> None:
    image = tmp_path / "base.raw"
    with image.open("wb") as f:
        f.write(os.urandom(1 << 20))
        f.truncate(4 << 20)
    # The staged image alone fills 94 % of the budget, past the 90 % mark.
    env = {"CLOUDLET_AGENT__CACHE_BUDGET_GIB": str(4.25 / 1024)}
    ctl = LocalController(tmp_path / "ctl").start()
    api = ctl.client()
    agent = None
    try:
        token = api.post("/v1/sites", json={"name": "lyon"}).json()["join_token"]["token"]
        agent = LocalAgent("lyon", tmp_path / "lyon", ctl.url, join_token=token, env=env).start()
        _upload(api, image, "debian-tiny")
        api.post("/v1/sites/lyon/images", json={"image": "debian-tiny"}).raise_for_status()

        def cache_full(active: bool) -> list[dict[str, object]]:
            found = api.get("/v1/alarms", params={"site": "lyon"}).json()
            return [
                a
                for a in found
                if a["alarm_id"] == "site.cache-full" and (a["cleared_at"] is None) == active
            ]

        [raised] = wait_for(lambda: cache_full(True), 60, f"raised\n{agent.proc.log_tail()}")
        assert raised["source"] == "site" and raised["entity"] == "site=lyon"
        assert "94%" in str(raised["reason"])

        # Unstaged, the image is evictable: what the site must keep is 0 % of the budget.
        api.delete("/v1/sites/lyon/images/debian-tiny").raise_for_status()
        [cleared] = wait_for(lambda: cache_full(False), 30, f"cleared\n{agent.proc.log_tail()}")
        assert cleared["id"] == raised["id"]
        assert [a["alarm_id"] for a in api.get("/v1/alarms", params={"site": "lyon"}).json()] == [
            "site.cache-full"
        ]  # raised once, cleared once
    finally:
        if agent is not None:
            agent.stop()
        ctl.stop()
        api.close()
