"""The CLI's fast settings path gives the full settings' answers, or steps aside."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudlet.cli._config import ClientConfig, fast_client_config
from cloudlet.settings import ControllerSettings, load_settings

CASES: list[tuple[dict[str, str], str | None, str | None]] = [
    ({}, None, None),
    ({"CLOUDLET_URL": "http://ctl:9000", "CLOUDLET_TOKEN": "clt_admin_x"}, None, None),
    ({"CLOUDLET_URL": "http://ctl:9000"}, "http://flag:1", "clt_flag"),
    ({"CLOUDLET_URL": "", "CLOUDLET_TOKEN": ""}, None, None),
    ({"CLOUDLET_CONTROLLER__PORT": "9100"}, None, None),
    ({"CLOUDLET_DATA_DIR": "/srv/a"}, None, None),
    ({"CLOUDLET_DATA_DIR": "/srv/a", "CLOUDLET_CONTROLLER__DATA_DIR": "/srv/b"}, None, None),
    ({"cloudlet_url": "http://lower:1"}, None, None),
    ({"CLOUDLET_AGENT__DRIVER": "qemu"}, None, None),
]


def _full(url: str | None, token: str | None) -> ClientConfig:
    s = load_settings(None, controller_url=url, token=token)
    return ClientConfig(s.controller_url, s.token, s.controller.port, s.controller.data_dir)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for key in list(os.environ):
        if key.upper().startswith("CLOUDLET_") or key.upper() in ("TOKEN", "CONTROLLER_URL"):
            monkeypatch.delenv(key)
    return monkeypatch


@pytest.mark.parametrize(("env", "url", "token"), CASES)
def test_the_fast_path_agrees_with_the_full_settings(
    clean_env: pytest.MonkeyPatch, env: dict[str, str], url: str | None, token: str | None
) -> None:
    for key, value in env.items():
        clean_env.setenv(key, value)
    fast = fast_client_config(None, url, token)
    assert fast is not None
    assert fast == _full(url, token)


@pytest.mark.parametrize(
    "env",
    [
        {"CLOUDLET_CONFIG": "/etc/cloudlet.toml"},
        {"CLOUDLET_CONTROLLER__PORT": "eighty"},
        {"CLOUDLET_CONTROLLER__PORT": "70000"},
        {"CLOUDLET_CONTROLLER": '{"port": 9000}'},
        {"TOKEN": "from-a-stray-variable"},
        {"CONTROLLER_URL": "http://elsewhere"},
    ],
)
def test_what_it_does_not_model_goes_to_the_full_settings(
    clean_env: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    for key, value in env.items():
        clean_env.setenv(key, value)
    assert fast_client_config(None, None, None) is None


def test_a_settings_file_goes_to_the_full_settings(tmp_path: Path) -> None:
    assert fast_client_config(tmp_path / "cloudlet.toml", None, None) is None


def test_its_defaults_are_the_controllers() -> None:
    from cloudlet.cli import _config

    defaults = ControllerSettings()
    assert (defaults.port, defaults.data_dir) == (_config.DEFAULT_PORT, _config.DEFAULT_DATA_DIR)
