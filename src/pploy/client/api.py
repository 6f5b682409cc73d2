"""A small synchronous client of pploy's JSON API (standard library only: a CI step needs
nothing but pploy installed). Every request carries ``Authorization: Bearer <token>``; no
cookie is ever kept or sent, and redirects are not followed (one means the request did not
reach pploy's API: a login page, a wrong URL)."""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urlsplit

USER_AGENT = "pploy-client"


class ApiError(Exception):
    """pploy (or something in front of it) refused or failed the request."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx becomes an HTTPError: reported, not followed


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        raw = exc.read(64 * 1024)
    except (OSError, http.client.HTTPException):
        raw = b""
    try:
        body = json.loads(raw)
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            return str(body["error"])
    except ValueError:
        pass
    if 300 <= exc.code < 400:
        return f"redirected to {exc.headers.get('Location')!r}: is PPLOY_URL pploy's address?"
    text = raw.decode(errors="replace").strip()
    return text[:300] if text and "<html" not in text.lower() else (exc.reason or "error")


def segment(value: str) -> str:
    """``value`` as one path segment (a project name cannot reach another route)."""
    return quote(value, safe="")


class Api:
    """pploy at ``base_url``, as the owner of ``token``."""

    def __init__(self, base_url: str, token: str, timeout: float = 30.0) -> None:
        if urlsplit(base_url).scheme not in ("http", "https"):
            raise ValueError(f"PPLOY_URL must be an http:// or https:// URL, not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        context = ssl.create_default_context()
        self._opener = urllib.request.build_opener(
            _NoRedirect(), urllib.request.HTTPSHandler(context=context)
        )

    def _request(self, method: str, path: str, body: Any = None) -> urllib.request.Request:
        data = None if body is None else json.dumps(body).encode()
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        if data is not None:
            headers["Content-Type"] = "application/json"
        url = self.base_url + path  # http(s) only: checked in __init__
        return urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """The JSON answer of ``method path``; ApiError for an HTTP error status."""
        try:
            with self._opener.open(self._request(method, path, body), timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, _error_message(exc)) from None

    def stream(self, path: str, timeout: float) -> http.client.HTTPResponse:
        """An open streaming response (read it with ``read1``); ApiError for an error status."""
        request = self._request("GET", path)
        request.add_header("Accept", "text/plain")
        try:
            return self._opener.open(request, timeout=timeout)  # type: ignore[no-any-return]
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, _error_message(exc)) from None
