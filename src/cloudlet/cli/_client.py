"""The CLI's HTTP client for the controller API: problem+json becomes ApiError."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

from cloudlet.errors import AuthError, CloudletError, ConfigError, ControllerUnreachableError
from cloudlet.settings import Settings


class ApiError(CloudletError):
    """The controller refused a request; the message is its problem detail."""

    def __init__(self, status: int, type_: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.type = type_


def resolve_token(settings: Settings) -> str:
    if settings.token:
        return settings.token
    path = Path(os.environ.get("CLOUDLET_TOKEN_FILE", settings.controller.data_dir / "admin.token"))
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise AuthError(
            f"no API token: set CLOUDLET_TOKEN, pass --token, or point CLOUDLET_TOKEN_FILE "
            f"at the controller's admin.token ({path} not readable)"
        ) from exc


class Client:
    def __init__(self, settings: Settings, timeout: float = 30.0) -> None:
        url = settings.controller_url or f"http://127.0.0.1:{settings.controller.port}"
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"controller URL must start with http:// or https://: {url}")
        self.url = url.rstrip("/")
        self._token = resolve_token(settings)
        # Plain http needs no CA bundle: loading one costs a CLI call some 30 ms.
        verify = self.url.startswith("https://")
        self._http = httpx.Client(base_url=self.url, timeout=timeout, verify=verify)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self._token}"}
        try:
            response = self._http.request(method, path, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise ControllerUnreachableError(
                f"cannot reach the controller at {self.url}: {exc}"
            ) from exc
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"detail": response.text[:200] or response.reason_phrase}
            detail = body.get("detail") or body.get("title") or response.reason_phrase
            raise ApiError(response.status_code, body.get("type", ""), detail)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body if body is not None else {})

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def put_bytes(self, path: str, content: Any, params: dict[str, Any] | None = None) -> Any:
        """PUT raw bytes: a bytes object, or an iterator of them (sent chunked)."""
        return self.request("PUT", path, content=content, params=params)
