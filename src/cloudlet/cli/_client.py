"""The CLI's HTTP client for the controller API: problem+json becomes ApiError.

Built on the standard library's ``http.client`` rather than httpx: a command makes a
handful of requests, and importing httpx (with its CA bundle) cost every command
more than its requests took. One connection per request keeps a stale keep-alive
from ever turning a POST into a retry question.
"""

from __future__ import annotations

import http.client
import json as jsonlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from cloudlet.errors import AuthError, CloudletError, ConfigError, ControllerUnreachableError

if TYPE_CHECKING:
    from cloudlet.cli._config import ClientConfig

#: "Use the client's default timeout" (None means no timeout at all).
_DEFAULT: Any = object()


class ApiError(CloudletError):
    """The controller refused a request; the message is its problem detail."""

    def __init__(self, status: int, type_: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.type = type_


def controller_url(config: ClientConfig) -> str:
    """The controller's URL as the client uses it (the key of a stored sign-in)."""
    url = config.controller_url or f"http://127.0.0.1:{config.controller_port}"
    return url.rstrip("/")


def resolve_token(config: ClientConfig) -> str:
    """The bearer token: --token or CLOUDLET_TOKEN, else the file CLOUDLET_TOKEN_FILE
    names, else the sign-in stored by `cloudlet login` for this controller, else the
    admin.token in the controller's data directory (on the controller's host)."""
    if config.token:
        return config.token
    named = os.environ.get("CLOUDLET_TOKEN_FILE")
    if named is None:
        from cloudlet.cli._credentials import stored_token

        login = stored_token(controller_url(config))
        if login is not None:
            return login
    path = Path(named) if named is not None else config.data_dir / "admin.token"
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise AuthError(
            f"no API token: run `cloudlet login`, set CLOUDLET_TOKEN, pass --token, or point "
            f"CLOUDLET_TOKEN_FILE at the controller's admin.token ({path} not readable)"
        ) from exc


class Client:
    def __init__(
        self, config: ClientConfig, timeout: float = 30.0, *, anonymous: bool = False
    ) -> None:
        """``anonymous``: send no token (signing in)."""
        url = controller_url(config)
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"controller URL must start with http:// or https://: {url}")
        self.url = url.rstrip("/")
        parts = urlsplit(self.url)
        if not parts.hostname:
            raise ConfigError(f"controller URL has no host: {url}")
        self._https = parts.scheme == "https"
        self._host, self._port, self._prefix = parts.hostname, parts.port, parts.path
        self._timeout = timeout
        self._token = None if anonymous else resolve_token(config)
        self._ca_file = config.ca_file

    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        if self._https:
            import ssl

            return http.client.HTTPSConnection(
                self._host,
                self._port,
                timeout=timeout,
                context=ssl.create_default_context(cafile=self._ca_file),
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _exchange(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        content: bytes | Iterable[bytes] | None = None,
        timeout: float | None = _DEFAULT,
    ) -> tuple[Any, http.client.HTTPResponse]:
        """Send one request; the answer's JSON (None for an empty answer) and the answer.

        Raises:
            ControllerUnreachableError: no connection, or it broke.
            ApiError: the controller answered an error (its problem detail).
        """
        headers = {"Accept": "application/json"}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        body: bytes | Iterable[bytes] | None = content
        if json is not None:
            body = jsonlib.dumps(json).encode()
            headers["Content-Type"] = "application/json"
        elif content is not None:
            headers["Content-Type"] = "application/octet-stream"
        target = self._prefix + path
        query = {
            k: [_param(x) for x in v] if isinstance(v, list) else _param(v)
            for k, v in (params or {}).items()
            if v is not None
        }
        if query:
            target += ("&" if "?" in target else "?") + urlencode(query, doseq=True)
        conn = self._connection(self._timeout if timeout is _DEFAULT else timeout)
        try:
            # An iterable body goes chunked (http.client adds Transfer-Encoding).
            conn.request(method, target, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ControllerUnreachableError(
                f"cannot reach the controller at {self.url}: {exc or type(exc).__name__}"
            ) from exc
        finally:
            conn.close()
        if response.status >= 400:
            try:
                problem = jsonlib.loads(data)
            except ValueError:
                problem = {}
            if not isinstance(problem, dict):
                problem = {}
            text = data.decode(errors="replace")[:200]
            detail = problem.get("detail") or problem.get("title") or text or response.reason
            raise ApiError(response.status, problem.get("type", ""), str(detail))
        if response.status == 204 or not data:
            return None, response
        try:
            return jsonlib.loads(data), response
        except ValueError as exc:
            raise ControllerUnreachableError(
                f"the controller at {self.url} answered something that is not JSON"
            ) from exc

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        content: bytes | Iterable[bytes] | None = None,
        timeout: float | None = _DEFAULT,
    ) -> Any:
        """Send one request; the answer's JSON (None for an empty answer).

        Raises:
            ControllerUnreachableError: no connection, or it broke.
            ApiError: the controller answered an error (its problem detail).
        """
        data, _ = self._exchange(
            method, path, json=json, params=params, content=content, timeout=timeout
        )
        return data

    def get_page(self, path: str, **params: Any) -> tuple[list[Any], str | None]:
        """One page of a paged list and the cursor of the next (None: the last page)."""
        data, response = self._exchange("GET", path, params=params)
        return list(data or []), response.getheader("X-Next-Cursor")

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body if body is not None else {})

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def put_bytes(self, path: str, content: Any, params: dict[str, Any] | None = None) -> Any:
        """PUT raw bytes: a bytes object, or an iterator of them (sent chunked)."""
        return self.request("PUT", path, content=content, params=params)


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
