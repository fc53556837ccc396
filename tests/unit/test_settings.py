"""Settings precedence: defaults < TOML file < environment < flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudlet.errors import ConfigError
from cloudlet.settings import load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("CLOUDLET_"):
            monkeypatch.delenv(key)


def test_defaults() -> None:
    s = load_settings()
    assert s.controller.port == 8080 and s.controller.offline_grace_s == 30
    assert s.agent.driver == "process" and not s.agent.keep_workloads


def test_file_then_env_then_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[controller]\nport = 9000\nlog_level = "debug"\n[agent]\ndriver = "fake"\n')
    s = load_settings(cfg)
    assert (s.controller.port, s.controller.log_level, s.agent.driver) == (9000, "debug", "fake")

    monkeypatch.setenv("CLOUDLET_CONTROLLER__PORT", "9100")
    monkeypatch.setenv("CLOUDLET_DATABASE_URL", "sqlite:///x.db")
    s = load_settings(cfg)
    assert s.controller.port == 9100 and s.controller.log_level == "debug"
    assert s.controller.database_url == "sqlite:///x.db"

    s = load_settings(cfg, controller={"port": 9200, "log_level": None})
    assert s.controller.port == 9200 and s.controller.log_level == "debug"


def test_bad_values_are_config_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[controller]\nport = 'many'\n")
    with pytest.raises(ConfigError, match="invalid settings"):
        load_settings(bad)
    bad.write_text("[controlller]\nport = 1\n")
    with pytest.raises(ConfigError):
        load_settings(bad)
