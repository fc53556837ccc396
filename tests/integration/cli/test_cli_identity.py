"""`cloudlet project/user/api-key` and `cloudlet login/logout` against a real controller."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudlet.testbed.local import LocalController

pytestmark = pytest.mark.integration

PASSWORD = "a long enough password"


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalController]:
    ctl = LocalController(tmp_path_factory.mktemp("cli-identity") / "ctl").start()
    try:
        yield ctl
    finally:
        ctl.stop()


def run(
    ctl: LocalController, home: Path, *args: str, admin: bool = False, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The CLI as a user on another host: no admin token file unless ``admin``."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDLET_")}
    environ |= {**ctl.cli_env(), "XDG_CONFIG_HOME": str(home), "COLUMNS": "200"}
    environ["CLOUDLET_DATA_DIR"] = str(home / "no-controller-here")
    if admin:
        environ["CLOUDLET_TOKEN_FILE"] = str(ctl.data_dir / "admin.token")
    return subprocess.run(
        [sys.executable, "-m", "cloudlet.cli", *args],
        capture_output=True,
        text=True,
        env=environ,
        input=stdin,
        timeout=60,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result))


def test_an_admin_sets_up_a_project_and_a_user_signs_in_and_out(
    controller: LocalController, tmp_path: Path
) -> None:
    ctl, home = controller, tmp_path / "home"
    ok(run(ctl, home, "project", "create", "tenant-a", admin=True))
    assert "tenant-a" in ok(run(ctl, home, "project", "list", admin=True))
    made = ok_json(
        run(ctl, home, "user", "create", "erin", "--password-stdin", "--json",
            admin=True, stdin=PASSWORD + "\n")
    )  # fmt: skip
    assert made["name"] == "erin" and made["roles"] == []
    ok(
        run(
            ctl,
            home,
            "user",
            "grant",
            "erin",
            "--project",
            "tenant-a",
            "--role",
            "member",
            admin=True,
        )
    )
    users = ok_json(run(ctl, home, "user", "list", "--json", admin=True))
    assert {"project": "tenant-a", "role": "member"} in next(
        u for u in users if u["name"] == "erin"
    )["roles"]

    # Without a sign-in (and no admin token on this "host") nothing is sent.
    refused = run(ctl, home, "app", "list")
    assert refused.returncode == 1 and "cloudlet login" in refused.stderr
    wrong = run(ctl, home, "login", "--user", "erin", "--password-stdin", stdin="nope\n")
    assert wrong.returncode == 1 and "wrong password" in wrong.stderr
    # No terminal and no --password-stdin: one clear line, no prompt.
    blind = run(ctl, home, "login", "--user", "erin", stdin="")
    assert blind.returncode == 1 and "--password-stdin" in blind.stderr

    out = ok(run(ctl, home, "login", "--user", "erin", "--password-stdin", stdin=PASSWORD + "\n"))
    assert "member of project tenant-a" in out
    creds = home / "cloudlet" / "credentials.json"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    token = json.loads(creds.read_text())["controllers"][ctl.url]["token"]
    assert ok_json(run(ctl, home, "app", "list", "--json")) == []
    assert [p["name"] for p in ok_json(run(ctl, home, "project", "list", "--json"))] == ["tenant-a"]
    key = ok_json(run(ctl, home, "api-key", "create", "ci", "--project", "tenant-a", "--role",
                      "reader", "--json"))  # fmt: skip
    assert key["created_by"] == "erin"
    listed = ok_json(run(ctl, home, "api-key", "list", "--json"))
    assert [k["name"] for k in listed] == ["ci"]
    denied = run(ctl, home, "project", "create", "mine")
    assert denied.returncode == 1 and "admin role" in denied.stderr
    # --token wins over the stored sign-in.
    with_key = run(ctl, home, "--token", key["token"], "app", "list", "--json")
    assert ok_json(with_key) == []
    ok(run(ctl, home, "api-key", "revoke", key["id"]))

    assert "signed out" in ok(run(ctl, home, "logout"))
    assert ctl.url not in json.loads(creds.read_text())["controllers"]
    with ctl.client(token) as signed_out:
        gone = signed_out.get("/v1/apps")
    assert gone.status_code == 401
    assert "not signed in" in ok(run(ctl, home, "logout"))

    ok(run(ctl, home, "user", "revoke", "erin", "--project", "tenant-a", admin=True))
    lost = run(ctl, home, "login", "--user", "erin", "--password-stdin", stdin=PASSWORD + "\n")
    assert lost.returncode == 1 and "no role" in lost.stderr


def test_an_expired_sign_in_says_so(controller: LocalController, tmp_path: Path) -> None:
    home = tmp_path / "home"
    creds = home / "cloudlet" / "credentials.json"
    creds.parent.mkdir(parents=True)
    entry = {"token": "clt_login_x", "expires_at": "2020-01-01T00:00:00Z", "user": "x"}
    creds.write_text(json.dumps({"controllers": {controller.url: entry}}))
    result = run(controller, home, "app", "list")
    assert (
        result.returncode == 1 and "expired" in result.stderr and "cloudlet login" in result.stderr
    )
