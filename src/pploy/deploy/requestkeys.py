"""Typed keys for what pploy stores on a request while handling it."""

from __future__ import annotations

from aiohttp import web

USER: web.RequestKey[str] = web.RequestKey("pploy_user", str)
REQUEST_ID: web.RequestKey[str] = web.RequestKey("pploy_request_id", str)
NEW_CSRF_TOKEN: web.RequestKey[str] = web.RequestKey("pploy_new_csrf_token", str)
