"""Typed keys for what gate stores on a request while handling it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from pploy.gate.auth import Principal
    from pploy.gate.plan import Plan

REQUEST_ID: web.RequestKey[str] = web.RequestKey("gate_request_id", str)
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("gate_principal", object)  # type: ignore[arg-type]
ROUTE: web.RequestKey[str] = web.RequestKey("gate_route", str)
SENT_STATUS: web.RequestKey[int] = web.RequestKey("gate_sent_status", int)
# Body bytes of a streamed (proxied) response, for the access log: aiohttp's own count for a
# prepared response includes the headers and the chunk framing.
BODY_BYTES: web.RequestKey[int] = web.RequestKey("gate_body_bytes", int)
ABORTED: web.RequestKey[bool] = web.RequestKey("gate_aborted", bool)
TARGET: web.RequestKey[Any] = web.RequestKey("gate_target", object)
# Who serves the request (pploy.gate.plan), decided before any guard runs.
PLAN: web.RequestKey[Plan] = web.RequestKey("gate_plan", object)  # type: ignore[arg-type]
