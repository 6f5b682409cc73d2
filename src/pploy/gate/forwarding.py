"""Forwarding an admitted request to its proxy route or htdocs, and what the upstream
receives: the client's headers, cleaned, plus forwarding and identity.

Client-sent identity headers are removed whatever their spelling, gate's own cookies and its
htpasswd credential are dropped, ``X-Forwarded-*`` are set from what gate knows (believing a
trusted proxy's chain only), and the signed assertion is added only for a route with an
``assertion_audience``, minted for that audience.
"""

from __future__ import annotations

from aiohttp import web
from multidict import CIMultiDict

from pploy.gate import requestkeys as keys
from pploy.gate.auth import Principal
from pploy.gate.core import Gate
from pploy.gate.headers import (
    FORWARDING_NAMES,
    HOP_BY_HOP,
    WEBSOCKET_HANDSHAKE,
    canonical,
    connection_tokens,
    is_identity_header,
    is_websocket,
    strip_cookies,
)
from pploy.gate.incoming import Incoming
from pploy.gate.plan import Plan, Serve
from pploy.gate.routing import Route, encode_path
from pploy.identity import Identity

# Never passed on as the client sent them (precomputed; the Connection header's own tokens are
# added per request, and only when it has any).
_DROP_HTTP = HOP_BY_HOP | FORWARDING_NAMES | {"host", "expect"}
_DROP_WEBSOCKET = _DROP_HTTP | WEBSOCKET_HANDSHAKE


def upstream_headers(
    gate: Gate,
    request: Incoming,
    principal: Principal,
    *,
    host: str | None,
    websocket: bool,
    audience: str | None = None,
    stripped: str | None = None,
) -> CIMultiDict[str]:
    """The client's headers, cleaned, plus forwarding and identity headers; the signed
    assertion only with an ``audience`` (the route's ``assertion_audience``);
    ``X-Forwarded-Prefix`` with the path a ``strip_path`` route ``stripped``, so the upstream
    can build its links under it."""
    drop = _DROP_WEBSOCKET if websocket else _DROP_HTTP
    if "Connection" in request.headers:
        drop = drop | connection_tokens(request.headers)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in request.headers.items():
        key = canonical(name)
        if key in drop or is_identity_header(name, gate.identity_names):
            continue
        if key == "cookie":
            value = strip_cookies(value, gate.gate_cookies)
            if not value:
                continue
        if key == "authorization" and principal.via == "htpasswd":
            continue  # gate's own credentials are not the upstream's business
        out.add(name, value)

    auth = gate.auth
    if auth.from_trusted_proxy(request):
        chain = ", ".join(request.headers.getall("X-Forwarded-For", []))
        forwarded_for = f"{chain}, {request.remote}" if chain else (request.remote or "")
    else:
        forwarded_for = auth.client_ip(request)
    out["X-Forwarded-For"] = forwarded_for
    out["X-Forwarded-Proto"] = auth.client_proto(request)
    if request.host:
        out["X-Forwarded-Host"] = request.host
    if stripped:
        out["X-Forwarded-Prefix"] = stripped
    out["X-Request-Id"] = request[keys.REQUEST_ID]
    if host is not None:
        out["Host"] = host

    names = gate.config.identity_headers
    if principal.user:
        if names.user:
            out[names.user] = principal.user
        if names.email and principal.email:
            out[names.email] = principal.email
        if names.assertion and audience:
            identity = Identity(user=principal.user, email=principal.email)
            out[names.assertion] = gate.signer.token_for(
                identity, audience=audience, now=gate.clock()
            )
    return out


def upstream_request(
    gate: Gate, request: Incoming, route: Route, *, websocket: bool
) -> tuple[str, CIMultiDict[str]]:
    """What the upstream of ``route`` is sent for ``request``, by both front ends: its URL
    and headers (``preserve_host``, the route's assertion audience, the prefix a
    ``strip_path`` route stripped). From here on the request is labelled with the route."""
    conf = route.conf
    request[keys.ROUTE] = route.label
    headers = upstream_headers(
        gate,
        request,
        request[keys.PRINCIPAL],
        host=request.host if conf.preserve_host and request.host else None,
        websocket=websocket,
        audience=conf.assertion_audience,
        stripped=encode_path(route.prefix, False) if conf.strip_path else None,
    )
    return route.upstream_url(request[keys.TARGET]), headers


async def forward(gate: Gate, request: web.Request, serving: Plan) -> web.StreamResponse:
    """The admitted request to its proxy route (HTTP or WebSocket), else to htdocs, else 404."""
    target = request[keys.TARGET]
    websocket = is_websocket(request.headers)
    if serving.serve is Serve.STATIC:
        assert gate.static is not None
        request[keys.ROUTE] = "static"
        return await gate.static.handle(request, target)
    route = serving.route
    if route is None or serving.serve is Serve.NOT_FOUND:
        raise web.HTTPNotFound()
    if serving.serve is Serve.SLASH_REDIRECT:
        request[keys.ROUTE] = route.label
        location = target.path + "/" + (f"?{target.query}" if target.query else "")
        raise web.HTTPFound(location)  # gate's status; a 301 would be cached for good
    url, headers = upstream_request(gate, request, route, websocket=websocket)
    if websocket:
        return await gate.upstream.websocket(request, url, headers, route.label)
    return await gate.upstream.http(request, url, headers, route.label)
