"""gate's web application: one entry point that checks, then answers, proxies or serves.

Order for every request: parse the path safely → plan who serves it (:mod:`pploy.gate.plan`)
→ the Host guard → gate's public endpoints (ping, JWKS, login, callback, logout) → the guards
before the proxy (identity, restrictions, WebSocket Origin) → gate's private endpoints
(metrics, stream test) → the proxy route (HTTP or WebSocket) or a static file. Nothing reaches
an upstream or htdocs without every guard.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from pploy import streamtest
from pploy.gate import guards, requestlog
from pploy.gate import requestkeys as keys
from pploy.gate.core import Gate
from pploy.gate.endpoints import Endpoints
from pploy.gate.forwarding import forward
from pploy.gate.headers import is_websocket
from pploy.gate.plan import Plan, Serve, plan
from pploy.gate.routing import BadPath, parse_target

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
    serving = request[keys.PLAN] = plan(
        gate.router,
        endpoints,
        gate.static is not None,
        request.host,
        target,
        websocket=is_websocket(request.headers),
    )
    if (refused := await guards.host(gate, request)) is not None:
        return refused
    if serving.serve is Serve.PUBLIC:
        assert serving.endpoint is not None
        return await serving.endpoint(gate, request)
    for guard in guards.BEFORE_PROXY:
        if (refused := await guard(gate, request)) is not None:
            return refused
    if serving.serve is Serve.PRIVATE:
        assert serving.endpoint is not None
        return await serving.endpoint(gate, request)
    if serving.serve is Serve.STREAM_TEST:
        # /.gate/stream-test…, for `pploy doctor` (authenticated above)
        if (stream_test := await streamtest.serve_gate(request, target.path)) is not None:
            return stream_test
        if serving.route is None:
            raise web.HTTPNotFound()
        serving = Plan(Serve.PROXY, serving.route)
    return await forward(gate, request, serving)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, metrics and one access-log line per request (at its end, streams too)."""
    gate = request.app[GATE_KEY]
    with requestlog.Exchange(gate, request) as exchange:
        try:
            if sum(len(k) + len(v) for k, v in request.raw_headers) > MAX_HEADER_BYTES:
                response: web.StreamResponse = web.Response(
                    status=431, text="request headers too large\n"
                )
            else:
                response = await handler(request)
            exchange.status = response.status
            if not response.prepared:
                response.headers.setdefault("X-Request-Id", exchange.id)
                exchange.size = response.content_length or 0
            else:
                exchange.size = request.get(keys.BODY_BYTES, response.body_length)
            return response
        except web.HTTPException as exc:
            exchange.status = exc.status
            exc.headers.setdefault("X-Request-Id", exchange.id)
            raise


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
