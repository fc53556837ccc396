"""The four settings the CLI's client needs, read without pydantic-settings when that
is safe: importing it costs a list command about a quarter of its start-up.

The fast path reads the flags and the handful of environment variables that can set
the controller's URL, the token, the controller's port and data dir (for the admin
token file), with the precedence of :func:`cloudlet.settings.load_settings`. Anything
it does not model exactly (a settings file, a nested JSON variable, a value that
needs validating) sends the caller to the full settings instead, which then also
reports what is wrong. A test holds both paths to the same answers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: ControllerSettings' defaults (pinned equal by the tests).
DEFAULT_PORT = 8080
DEFAULT_DATA_DIR = Path("./cloudlet-data")

#: Variables the full settings would read for these four values, beyond the ones
#: modelled here (pydantic-settings matches names case-insensitively, and reads a
#: nested section as JSON).
_UNMODELLED = {"CLOUDLET_CONTROLLER", "CLOUDLET_CONTROLLER_URL", "CONTROLLER_URL", "TOKEN"}


@dataclass(frozen=True)
class ClientConfig:
    controller_url: str | None
    token: str | None
    controller_port: int
    data_dir: Path
    #: The fleet's CA file to verify an https:// controller with (None: the system's).
    ca_file: Path | None = None


def fast_client_config(
    config_file: Path | None, url: str | None, token: str | None
) -> ClientConfig | None:
    """The client's settings from flags and environment, or None when only the full
    settings can tell (then call :func:`cloudlet.settings.load_settings`)."""
    env = {k.upper(): v for k, v in os.environ.items()}
    if config_file is not None or "CLOUDLET_CONFIG" in env or _UNMODELLED & env.keys():
        return None
    port_text = env.get("CLOUDLET_CONTROLLER__PORT")
    port = DEFAULT_PORT
    if port_text is not None:
        if not port_text.strip().isdigit() or not 0 <= int(port_text) < 65536:
            return None  # let the full settings say what is wrong
        port = int(port_text)
    # The short alias CLOUDLET_DATA_DIR sits below the nested variable (it is merged
    # in as if from the file).
    data_dir = env.get("CLOUDLET_CONTROLLER__DATA_DIR", env.get("CLOUDLET_DATA_DIR"))
    return ClientConfig(
        controller_url=url if url is not None else env.get("CLOUDLET_URL"),
        token=token if token is not None else env.get("CLOUDLET_TOKEN"),
        controller_port=port,
        data_dir=Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR,
        ca_file=Path(ca) if (ca := env.get("CLOUDLET_CA_FILE")) else None,
    )
