"""gate's web application: one entry point that checks, then answers, proxies or serves.

Order for every request: parse the path safely → the Host guard → gate's public endpoints
(ping, JWKS, login, callback, logout) → the guards before the proxy (identity, restrictions,
WebSocket Origin) → gate's private endpoints (metrics, stream test) → the proxy route (HTTP or
WebSocket) or a static file. Nothing reaches an upstream or htdocs without every guard.
"""

from __future__ import annotations

import asyncio
import random
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from pploy import streamtest
from pploy.gate import guards
from pploy.gate import requestkeys as keys
from pploy.gate.auth import Principal
from pploy.gate.core import Gate
from pploy.gate.endpoints import Endpoints
from pploy.gate.forwarding import forward
from pploy.gate.headers import is_websocket
from pploy.gate.routing import BadPath, parse_target

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
# Upper bound on all request headers together; aiohttp also limits each line to 8190 bytes.
MAX_HEADER_BYTES = 64 * 1024

GATE_KEY: web.AppKey[Gate] = web.AppKey("gate", Gate)
ENDPOINTS_KEY: web.AppKey[Endpoints] = web.AppKey("gate_endpoints", Endpoints)


async def dispatch(request: web.Request) -> web.StreamResponse:
    gate = request.app[GATE_KEY]
    endpoints = request.app[ENDPOINTS_KEY]
    try:
        target = parse_target(request.raw_path)
    except BadPath as exc:
        return web.Response(status=400, text=f"bad request: {exc}\n")
    request[keys.TARGET] = target
    if (refused := await guards.host(gate, request)) is not None:
        return refused
    if (public := endpoints.public.get(target.path)) is not None:
        return await public(gate, request)
    for guard in guards.BEFORE_PROXY:
        if (refused := await guard(gate, request)) is not None:
            return refused
    if (private := endpoints.private.get(target.path)) is not None:
        return await private(gate, request)
    if (stream_test := await streamtest.serve_gate(request, target.path)) is not None:
        return stream_test  # /.gate/stream-test…, for `pploy doctor` (authenticated above)
    return await forward(gate, request)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def new_request_id() -> str:
    """32 hex digits. A request id correlates log lines and is no secret, so it comes from a
    fast PRNG (os.urandom cost a syscall on every request)."""
    return f"{_ids.getrandbits(128):032x}"


_ids = random.Random(secrets.randbits(128))


@web.middleware
async def access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, metrics and one access-log line per request (at its end, streams too)."""
    gate = request.app[GATE_KEY]
    incoming = request.headers.get("X-Request-Id", "")
    trusted = gate.auth.from_trusted_proxy(request)
    request_id = incoming if trusted and _REQUEST_ID.match(incoming) else new_request_id()
    request[keys.REQUEST_ID] = request_id
    started = time.monotonic()
    status = 500
    size = 0
    try:
        if sum(len(k) + len(v) for k, v in request.raw_headers) > MAX_HEADER_BYTES:
            response: web.StreamResponse = web.Response(
                status=431, text="request headers too large\n"
            )
        else:
            response = await handler(request)
        status = response.status
        if not response.prepared:
            response.headers.setdefault("X-Request-Id", request_id)
            size = response.content_length or 0
        else:
            size = response.body_length
        return response
    except web.HTTPException as exc:
        status = exc.status
        exc.headers.setdefault("X-Request-Id", request_id)
        raise
    except asyncio.CancelledError:
        # The client went away: log what it was sent, or 499 (nginx's "client closed").
        status = request.get(keys.SENT_STATUS, 499)
        request[keys.ABORTED] = True
        raise
    finally:
        elapsed = time.monotonic() - started
        route = request.get(keys.ROUTE, "gate")
        gate.metrics.request(route, request.method, status, elapsed)
        _write_access_log(gate, request, status, size, elapsed)


def _write_access_log(
    gate: Gate, request: web.Request, status: int, size: int, elapsed: float
) -> None:
    if not gate.access_log.enabled:
        return
    principal: Principal | None = request.get(keys.PRINCIPAL)
    fields: dict[str, Any] = {
        "rid": request[keys.REQUEST_ID],
        "client": gate.auth.client_ip(request),
        "method": request.method,
        "path": request.raw_path[:2048],
        "status": status,
        "bytes": size,
        "ms": round(elapsed * 1000, 2),
        "route": request.get(keys.ROUTE),
        "user": principal.user if principal else None,
        "via": principal.via if principal else None,
        "ws": "1" if is_websocket(request.headers) else None,
        "aborted": "client" if request.get(keys.ABORTED) else None,
    }
    gate.access_log.add(fields)


def build_app(gate: Gate) -> web.Application:
    app = web.Application(middlewares=[access_log])
    app[GATE_KEY] = gate
    app[ENDPOINTS_KEY] = Endpoints(gate)
    app.on_startup.append(gate.start)
    app.on_cleanup.append(gate.stop)
    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app


def build_metrics_app(gate: Gate) -> web.Application:
    """Metrics on their own listener (for a scraper on a private address), no auth there."""

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(text=gate.metrics.render(), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", metrics)
    return app
