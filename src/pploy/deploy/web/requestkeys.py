"""Typed keys for what pploy stores on a request while handling it."""

from __future__ import annotations

from aiohttp import web

from pploy.deploy.domain.permissions import Caller

USER: web.RequestKey[str] = web.RequestKey("pploy_user", str)
REQUEST_ID: web.RequestKey[str] = web.RequestKey("pploy_request_id", str)
NEW_CSRF_TOKEN: web.RequestKey[str] = web.RequestKey("pploy_new_csrf_token", str)
# Who the request comes from, with the email gate vouched for and the API token used, if any.
CALLER: web.RequestKey[Caller] = web.RequestKey("pploy_caller", Caller)
# The email gate's assertion vouched for (gate mode), for permission rules naming emails.
EMAIL: web.RequestKey[str] = web.RequestKey("pploy_email", str)
# The actions (pploy.deploy.actions) an unsafe request went through, for its log line.
ACTIONS: web.RequestKey[list[str]] = web.RequestKey("pploy_actions", list)
# The request is a form of go-pploy's UI whose browser proved it same-origin (middleware).
ORIGIN_PROVEN: web.RequestKey[bool] = web.RequestKey("pploy_origin_proven", bool)
