"""Serving pploy under a path prefix such as ``/deploy`` (go-pploy's ``-prefix``).

Two set-ups, one mechanism:

- ``prefix: /deploy`` — requests arrive with the prefix (nginx ``location /deploy/ {
  proxy_pass http://pploy; }``). The app is mounted as a sub-application under it.
- ``X-Forwarded-Prefix: /deploy`` from a trusted proxy (gate with ``strip_path: yes``) —
  requests arrive without it, and only the URLs pploy hands out carry it.

Handlers and templates never see either: :func:`prefixed` (the app's outermost middleware)
hands them a request whose path is relative to the app (``/projects/x``), and translates
what goes out — ``Location`` headers and cookie paths — by prepending the request's *base*
(forwarded prefix + configured prefix). Pages build links with ``url()`` (see
:func:`url`), and scripts read the base from ``<body data-base>``.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler as Next

from pploy.deploy.domain.errors import BadRequest

FORWARDED_PREFIX = "X-Forwarded-Prefix"
BASE: web.RequestKey[str] = web.RequestKey("pploy_base", str)
# Path segments of plain characters only: the base is written into HTML attributes, cookie
# paths and Location headers, so nothing that needs escaping there may pass.
_PREFIX_RE = re.compile(r"(/[A-Za-z0-9._~-]+)+")


def normalise(value: str, source: str) -> str:
    """``"/deploy/"`` -> ``"/deploy"``, ``""`` or ``"/"`` -> ``""``; ValueError (naming
    ``source`` when given) for anything that is not plain path segments."""
    text = value.strip()
    if text in ("", "/"):
        return ""
    text = "/" + text.strip("/")
    if not _PREFIX_RE.fullmatch(text) or any(s in (".", "..") for s in text.split("/")):
        raise ValueError(
            (f"{source}: " if source else "") + f"{value!r} is not a path prefix like /deploy "
            "(letters, digits, . _ ~ - in segments separated by /)"
        )
    return text


def base(request: web.Request) -> str:
    """The path under which the client reaches the app (``""`` at the root)."""
    return str(request.get(BASE, ""))


def url(request: web.Request, path: str) -> str:
    """``path`` (relative to the app, starting with ``/``) as the client must request it."""
    return base(request) + path


def _forwarded(request: web.Request, trusted: bool) -> str:
    values = request.headers.getall(FORWARDED_PREFIX, [])
    if not values or not trusted:
        return ""
    if len(values) > 1:
        raise BadRequest(f"{FORWARDED_PREFIX} was sent {len(values)} times")
    try:
        return normalise(values[0], FORWARDED_PREFIX)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def _translate(response: Any, prefix: str) -> None:
    """Prefix an app-relative ``Location`` and every cookie path on ``response``."""
    location = response.headers.get("Location", "")
    if location.startswith("/") and not location.startswith("//"):
        response.headers["Location"] = prefix + location
    for morsel in response.cookies.values():
        path = morsel["path"] or "/"
        if path.startswith("/"):
            morsel["path"] = prefix + path if path != "/" else prefix + "/"


def middleware(configured: str, trusted: Any) -> Any:
    """The outermost middleware for an app served under ``configured`` (may be ``""``);
    ``trusted(request)`` says whether the peer's ``X-Forwarded-Prefix`` is believed."""

    @web.middleware
    async def prefixed(request: web.Request, handler: Next) -> web.StreamResponse:
        try:
            prefix = _forwarded(request, trusted(request)) + configured
        except BadRequest as exc:  # before the app's error pages, which need the base
            return web.Response(status=exc.status, text=exc.message + "\n")
        if configured:
            # Mounted as a sub-app: the router matched the full path; handlers get the rest.
            raw = request.raw_path
            if not raw.startswith(configured + "/"):  # e.g. an encoded prefix, /deplo%79/
                raise web.HTTPNotFound()
            request = request.clone(rel_url=raw[len(configured) :])
        request[BASE] = prefix
        if not prefix:
            return await handler(request)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            _translate(exc, prefix)
            raise
        if not response.prepared:
            _translate(response, prefix)
        return response

    return prefixed


def mount(app: web.Application, configured: str) -> web.Application:
    """``app`` itself at the root, else a root application serving it under ``configured``
    (``/deploy`` redirects to ``/deploy/``, and so does ``/``, for people typing the host)."""
    if not configured:
        return app
    root = web.Application()

    async def to_prefix(request: web.Request) -> web.Response:
        raise web.HTTPFound(configured + "/")

    root.router.add_get("/", to_prefix)
    root.router.add_get(configured, to_prefix)
    root.add_subapp(configured, app)
    return root
