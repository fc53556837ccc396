"""The CLI's stored sign-ins: one login token per controller URL, in a file only its
owner can read ($XDG_CONFIG_HOME/cloudlet/credentials.json, mode 0600).

Standard library only: every command that talks to a controller reads it.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cloudlet._secret_file import write_secret
from cloudlet.errors import AuthError


def credentials_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "cloudlet" / "credentials.json"


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise AuthError(f"cannot read the stored sign-ins in {path}: {exc}") from exc
    controllers = data.get("controllers") if isinstance(data, dict) else None
    return controllers if isinstance(controllers, dict) else {}


def save_login(url: str, login: dict[str, Any]) -> Path:
    """Store the login token ``login`` (the API's answer) for the controller at ``url``."""
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    controllers = _load(path)
    controllers[url] = {
        k: login[k] for k in ("token", "user", "project", "role", "expires_at") if k in login
    }
    write_secret(path, json.dumps({"controllers": controllers}, indent=2, sort_keys=True))
    return path


def forget_login(url: str) -> dict[str, Any] | None:
    """Drop the stored login for ``url``; returns it (None if there was none)."""
    path = credentials_path()
    controllers = _load(path)
    gone = controllers.pop(url, None)
    if gone is not None:
        write_secret(path, json.dumps({"controllers": controllers}, indent=2, sort_keys=True))
    return gone


def stored_token(url: str) -> str | None:
    """The login token stored for ``url``, if any.

    Raises:
        AuthError: the stored one has expired (sign in again, or sign out).
    """
    login = _load(credentials_path()).get(url)
    if not isinstance(login, dict) or not isinstance(login.get("token"), str):
        return None
    expires = login.get("expires_at")
    if isinstance(expires, str):
        try:
            at = datetime.fromisoformat(expires.replace("Z", "+00:00"))
        except ValueError:
            at = None
        if at is not None and at <= datetime.now(UTC):
            raise AuthError(
                f"your sign-in to {url} expired at {expires}: run `cloudlet login` again "
                "(or `cloudlet logout`)"
            )
    return login["token"]
