"""gate's web application: one entry point that authenticates, then proxies or serves.

Order for every request: parse the path safely → gate's own endpoints (ping, JWKS, login,
callback, logout) → authenticate (session, htpasswd, allowed network) → WebSocket Origin check
→ route → proxy (HTTP or WebSocket) or static file. Nothing reaches an upstream or htdocs
before authentication, WebSocket upgrades included.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from pploy import log
from pploy.chain import streamtest
from pploy.gate import login
from pploy.gate import requestkeys as keys
from pploy.gate.auth import Authenticator, Principal
from pploy.gate.config import GateConfig
from pploy.gate.headers import (
    FORWARDING_NAMES,
    HOP_BY_HOP,
    WEBSOCKET_HANDSHAKE,
    canonical,
    connection_tokens,
    identity_names,
    is_identity_header,
    strip_cookies,
)
from pploy.gate.metrics import Metrics
from pploy.gate.providers import Provider, make_provider
from pploy.gate.proxy import UpstreamProxy
from pploy.gate.recheck import Rechecker
from pploy.gate.routing import BadPath, RequestPath, Router, parse_target, request_host
from pploy.gate.session import CookieCodec
from pploy.gate.static import StaticFiles
from pploy.identity import JWKS_PATH, AssertionSigner, Identity, load_private_key

PING_PATH = "/ping"
DEFAULT_METRICS_PATH = "/_gate/metrics"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
# Upper bound on all request headers together; aiohttp also limits each line to 8190 bytes.
MAX_HEADER_BYTES = 64 * 1024

GATE_KEY: web.AppKey[Gate] = web.AppKey("gate", None)  # type: ignore[arg-type]


class Gate:
    """Everything one running gate needs, built from the configuration."""

    def __init__(self, config: GateConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        secrets = [config.auth.session.key, *config.auth.session.old_keys]
        self.codec = CookieCodec(secrets, purpose="session")
        self.state_codec = CookieCodec(secrets, purpose="login-state")
        self.auth = Authenticator(config, self.codec)
        assertion = config.auth.assertion
        key = load_private_key(config.resolve(assertion.key_file)) if assertion.key_file else None
        extra = [load_private_key_public(config.resolve(p)) for p in assertion.extra_public_keys]
        self.signer = AssertionSigner(
            lifetime=int(assertion.lifetime),
            key=key,
            extra_public_keys=extra,
        )
        self.metrics = Metrics()
        self.router = Router(config.proxy)
        self.static = (
            StaticFiles(config.resolve(config.htdocs), never_serve=config.files_read())
            if config.htdocs
            else None
        )
        self.upstream = UpstreamProxy(config.upstream, self.metrics)
        self.metrics_path = (
            None if config.metrics.address else (config.metrics.path or DEFAULT_METRICS_PATH)
        )
        self._http: aiohttp.ClientSession | None = None
        self._provider: Provider | None = None
        self._rechecker: Rechecker | None = None
        self.gate_cookies = {config.auth.session.cookie_name, login.STATE_COOKIE}
        headers = config.identity_headers
        extra = [h for h in (headers.user, headers.email, headers.assertion) if h]
        self.identity_names = identity_names([*extra, *headers.strip])

    @property
    def provider(self) -> Provider:
        assert self._provider is not None, "gate is not started"
        return self._provider

    @property
    def rechecker(self) -> Rechecker:
        assert self._rechecker is not None, "gate is not started"
        return self._rechecker

    async def start(self, _app: web.Application | None = None) -> None:
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=15),
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": "pploy-gate"},
        )
        self._provider = make_provider(self.config, self._http)
        self._rechecker = Rechecker(self._provider, self.config.auth.info.recheck_interval)
        await self.upstream.start()

    async def stop(self, _app: web.Application | None = None) -> None:
        await self.upstream.close()
        if self._http is not None:
            await self._http.close()

    # --- identity -----------------------------------------------------------------------

    def upstream_headers(
        self,
        request: web.Request,
        principal: Principal,
        *,
        host: str | None,
        websocket: bool,
        audience: str | None = None,
    ) -> CIMultiDict[str]:
        """The client's headers, cleaned, plus forwarding and identity headers; the signed
        assertion only with an ``audience`` (the route's ``assertion_audience``)."""
        drop = HOP_BY_HOP | connection_tokens(request.headers) | FORWARDING_NAMES
        drop |= {"host", "expect"}
        if websocket:
            drop |= WEBSOCKET_HANDSHAKE
        out: CIMultiDict[str] = CIMultiDict()
        for name, value in request.headers.items():
            key = canonical(name)
            if key in drop or is_identity_header(name, self.identity_names):
                continue
            if key == "cookie":
                value = strip_cookies(value, self.gate_cookies)
                if not value:
                    continue
            if key == "authorization" and principal.via == "htpasswd":
                continue  # gate's own credentials are not the upstream's business
            out.add(name, value)

        client_ip = self.auth.client_ip(request)
        if self.auth.from_trusted_proxy(request):
            chain = ", ".join(request.headers.getall("X-Forwarded-For", []))
            forwarded_for = f"{chain}, {request.remote}" if chain else (request.remote or "")
        else:
            forwarded_for = client_ip
        out["X-Forwarded-For"] = forwarded_for
        out["X-Forwarded-Proto"] = self.auth.client_proto(request)
        if request.host:
            out["X-Forwarded-Host"] = request.host
        out["X-Request-Id"] = request[keys.REQUEST_ID]
        if host is not None:
            out["Host"] = host

        names = self.config.identity_headers
        if principal.user:
            if names.user:
                out[names.user] = principal.user
            if names.email and principal.email:
                out[names.email] = principal.email
            if names.assertion and audience:
                identity = Identity(user=principal.user, email=principal.email)
                out[names.assertion] = self.signer.token_for(
                    identity, audience=audience, now=self.clock()
                )
        return out


def load_private_key_public(path: Path):  # type: ignore[no-untyped-def]
    """A published extra key: accept a private or public PEM, publish only the public part."""
    from joserfc.jwk import ECKey

    key = ECKey.import_key(path.read_bytes())
    return ECKey.import_key(key.as_dict(private=False), {"kid": key.thumbprint()})


def _is_websocket(request: web.Request) -> bool:
    upgrade = request.headers.get("Upgrade", "").lower()
    return upgrade == "websocket" and "upgrade" in connection_tokens(request.headers)


def _wants_html(request: web.Request) -> bool:
    """A browser navigation: may be redirected to the login page; others get 401."""
    if request.method not in ("GET", "HEAD"):
        return False
    if request.headers.get("X-Requested-With", "").lower() == "xmlhttprequest":
        return False
    if request.headers.get("Sec-Fetch-Mode", "navigate") not in ("navigate", "nested-navigate"):
        return False
    return "text/html" in request.headers.get("Accept", "").lower()


def _origin_ok(gate: Gate, request: web.Request) -> bool:
    """Cross-site WebSocket hijacking: a browser's Origin must be the origin the user is on,
    scheme included (http://host is another origin than https://host)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser; browsers always send Origin on WebSocket handshakes
    return origin.lower() == gate.auth.own_origin(request)


def _host_refused(gate: Gate, request: web.Request) -> web.Response | None:
    """DNS rebinding: a page on another name that resolves to gate's address is same-origin
    with itself, not with us. Only names gate is configured for (or IP literals and localhost,
    which no attacker can point elsewhere) are served; checked before anything else."""
    host = request.headers.get("Host")
    if host is not None and gate.config.serves_host(request_host(host)):
        return None
    log.event(
        "gate.host_refused",
        level="warning",
        host=host,
        client=gate.auth.client_ip(request),
        rid=request[keys.REQUEST_ID],
    )
    text = (
        f"this gate does not serve the host {host!r}; if it should, add the name to "
        "allowed_hosts in gate's configuration\n"
        if host is not None
        else "a Host header is required\n"
    )
    return web.Response(status=421 if host is not None else 400, text=text)


def _unauthenticated(gate: Gate, request: web.Request, target: RequestPath) -> web.Response:
    if _wants_html(request) and not _is_websocket(request):
        return login.redirect(login.login_url(gate, target.path_qs))
    headers = {"Cache-Control": "no-store"}
    if gate.auth.htpasswd is not None:
        headers["WWW-Authenticate"] = 'Basic realm="gate", charset="UTF-8"'
    return web.json_response(
        {"error": "unauthenticated", "login": gate.config.paths.login},
        status=401,
        headers=headers,
    )


async def dispatch(request: web.Request) -> web.StreamResponse:
    gate = request.app[GATE_KEY]
    try:
        target = parse_target(request.raw_path)
    except BadPath as exc:
        return web.Response(status=400, text=f"bad request: {exc}\n")
    request[keys.TARGET] = target
    if (refused := _host_refused(gate, request)) is not None:
        return refused
    path = target.path
    paths = gate.config.paths

    if path == PING_PATH and not target.segments[1:]:
        return web.Response(text="pong\n", headers={"Cache-Control": "no-store"})
    if path == JWKS_PATH:
        return web.json_response(
            gate.signer.jwks(), headers={"Cache-Control": "public, max-age=300"}
        )
    if path == paths.login:
        return await login.handle_login(gate, request)
    if path == paths.callback:
        return await login.handle_callback(gate, request)
    if path == paths.logout:
        return await login.handle_logout(gate, request)
    if path == paths.error:
        return await login.handle_error(gate, request)

    principal = await gate.auth.authenticate(request, gate.clock())
    if principal is None:
        return _unauthenticated(gate, request, target)
    request[keys.PRINCIPAL] = principal
    if principal.session is not None:
        ended = await login.recheck_session(gate, request, principal.session)
        if ended is not None:
            return ended

    if gate.metrics_path and path == gate.metrics_path:
        return web.Response(text=gate.metrics.render(), content_type="text/plain", charset="utf-8")

    websocket = _is_websocket(request)
    if websocket and not _origin_ok(gate, request):
        log.event(
            "gate.ws.origin_refused",
            level="warning",
            origin=request.headers.get("Origin"),
            host=request.host,
            rid=request[keys.REQUEST_ID],
        )
        return web.Response(status=403, text="WebSocket Origin does not match this host\n")
    if (stream_test := await streamtest.serve_gate(request, path)) is not None:
        return stream_test  # /.gate/stream-test…, for `pploy doctor` (authenticated above)

    route = gate.router.match(request_host(request.host), target)
    if route is None:
        if gate.static is not None and not websocket:
            request[keys.ROUTE] = "static"
            return await gate.static.handle(request, target)
        raise web.HTTPNotFound()
    request[keys.ROUTE] = route.label
    if route.needs_slash_redirect(target):
        location = target.path + "/" + (f"?{target.query}" if target.query else "")
        raise web.HTTPMovedPermanently(location)

    upstream_host = request.host if route.conf.preserve_host and request.host else None
    headers = gate.upstream_headers(
        request,
        principal,
        host=upstream_host,
        websocket=websocket,
        audience=route.conf.assertion_audience,
    )
    url = route.upstream_url(target)
    if websocket:
        return await gate.upstream.websocket(request, url, headers, route.label)
    return await gate.upstream.http(request, url, headers, route.label)


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
    fmt = gate.config.access_log.format
    if fmt == "off":
        return
    principal: Principal | None = request.get(keys.PRINCIPAL)
    fields = {
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
        "ws": "1" if _is_websocket(request) else None,
        "aborted": "client" if request.get(keys.ABORTED) else None,
    }
    if fmt == "json":
        line = json.dumps({"event": "gate.access", **{k: v for k, v in fields.items() if v}})
        log._logger.info(line)
    else:
        log.event("gate.access", **fields)


def build_app(gate: Gate) -> web.Application:
    app = web.Application(middlewares=[access_log])
    app[GATE_KEY] = gate
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
