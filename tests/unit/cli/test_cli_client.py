"""`cloudlet client`: connect hands the site the client token; token create parses --ttl."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from cloudlet import client as cl
from cloudlet.cli.client import parse_ttl
from cloudlet.cli.main import app
from cloudlet.errors import InvalidInputError


@pytest.mark.parametrize("env", [False, True])
def test_connect_sends_the_client_token(monkeypatch: pytest.MonkeyPatch, env: bool) -> None:
    seen: dict[str, Any] = {}

    def connect(*args: Any, **kwargs: Any) -> cl.Connection:
        seen.update(kwargs)
        return cl.Connection(site="lyon", site_api="http://s", instance="i", endpoint="e:1")

    monkeypatch.setattr(cl, "connect", connect)
    args = ["client", "connect", "maps", "--offline"]
    environ = {"CLOUDLET_CLIENT_TOKEN": "a.b.c"} if env else {}
    if not env:
        args += ["--client-token", "a.b.c"]
    result = CliRunner().invoke(app, args, env=environ)
    assert result.exit_code == 0, result.output
    assert seen["local_token"] == "a.b.c"


def test_ttl_durations() -> None:
    assert [parse_ttl(v) for v in ("90", "90s", "10m", "8h", "7d")] == [
        90, 90, 600, 28800, 604800,
    ]  # fmt: skip
    with pytest.raises(InvalidInputError):
        parse_ttl("8 hours")
