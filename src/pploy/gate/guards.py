"""The checks every request passes, in order, before gate proxies it or serves a file.

``host`` runs first, before even gate's own endpoints: a DNS-rebinding page on another name
that resolves to gate's address is same-origin with itself, so only the Host tells it apart.
Then, after gate's public endpoints (ping, JWKS, login flow): ``identity`` (a session,
htpasswd, or an allowed network), ``restrictions`` (a session still admitted), and
``websocket_origin``. Each guard answers the request (refusing it) or returns None to pass it
on; nothing reaches an upstream or htdocs without passing all of them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from pploy import log
from pploy.gate import requestkeys as keys
from pploy.gate.auth import Principal
from pploy.gate.cookies import clear_cookie
from pploy.gate.core import Gate
from pploy.gate.headers import is_websocket
from pploy.gate.incoming import Incoming
from pploy.gate.login import login_url, redirect
from pploy.gate.pages import page
from pploy.gate.providers import LoginFailed
from pploy.gate.routing import parse_host

Guard = Callable[[Gate, Incoming], Awaitable[web.StreamResponse | None]]


async def host(gate: Gate, request: Incoming) -> web.StreamResponse | None:
    """Only names gate is configured for (or IP literals and localhost, which no attacker can
    point elsewhere) are served; 421 for any other, 400 without a Host or with one that is not
    ``host[:port]`` (:func:`pploy.gate.routing.parse_host`)."""
    name = request.headers.get("Host")
    if name is not None and gate.serves_host(name):
        return None
    log.event(
        "gate.host_refused",
        level="warning",
        host=name,
        client=gate.auth.client_ip(request),
        rid=request[keys.REQUEST_ID],
    )
    if name is None:
        return web.Response(status=400, text="a Host header is required\n")
    if parse_host(name) is None:
        return web.Response(status=400, text="the Host header must be host[:port]\n")
    return web.Response(
        status=421,
        text=f"this gate does not serve the host {name!r}; if it should, add the name to "
        "allowed_hosts in gate's configuration\n",
    )


def _wants_html(request: Incoming) -> bool:
    """A browser navigation: may be redirected to the login page; others get 401."""
    if request.method not in ("GET", "HEAD"):
        return False
    if request.headers.get("X-Requested-With", "").lower() == "xmlhttprequest":
        return False
    if request.headers.get("Sec-Fetch-Mode", "navigate") not in ("navigate", "nested-navigate"):
        return False
    return "text/html" in request.headers.get("Accept", "").lower()


def _has_bearer(request: Incoming) -> bool:
    values = request.headers.getall("Authorization", [])
    return any(v.strip().partition(" ")[0].lower() == "bearer" for v in values)


async def identity(gate: Gate, request: Incoming) -> web.StreamResponse | None:
    """A session cookie, htpasswd credentials or an allowed network admits the request (its
    principal is kept on the request); otherwise a browser is sent to log in, others get 401.

    A bearer-token request forwarded to a ``pass_bearer`` route is admitted as nobody
    (``via="bearer"``), session or not: the token alone speaks for it, so gate adds no
    identity and the upstream authenticates the token. Anything gate answers itself (its
    metrics, the stream test, a redirect) is never admitted by a bearer token, and elsewhere a
    bearer request without a session gets 401, never the login page (a script cannot log
    in)."""
    if request[keys.PLAN].passes_bearer and _has_bearer(request):
        request[keys.PRINCIPAL] = Principal(user=None, email=None, via="bearer")
        return None
    principal = await gate.auth.authenticate(request, gate.clock())
    if principal is not None:
        request[keys.PRINCIPAL] = principal
        return None
    if _wants_html(request) and not is_websocket(request.headers) and not _has_bearer(request):
        return redirect(login_url(gate, request[keys.TARGET].path_qs))
    headers = {"Cache-Control": "no-store"}
    if gate.auth.htpasswd is not None:
        headers["WWW-Authenticate"] = 'Basic realm="gate", charset="UTF-8"'
    return web.json_response(
        {"error": "unauthenticated", "login": gate.config.paths.login},
        status=401,
        headers=headers,
    )


async def restrictions(gate: Gate, request: Incoming) -> web.StreamResponse | None:
    """A session must still pass the provider's restrictions (GitHub organisations, re-checked
    every ``auth.info.recheck_interval``): if not, 403 and the cookie is cleared; 502 (the
    session kept) when the provider cannot answer right now."""
    session = request[keys.PRINCIPAL].session
    if session is None:
        return None
    cookie = gate.auth.cookie(request)
    try:
        verdict = await gate.rechecker.verdict(cookie, session, gate.clock())
    except LoginFailed as exc:
        log.event(
            "gate.recheck.failed",
            level="warning",
            reason=str(exc),
            rid=request.get(keys.REQUEST_ID),
        )
        return page(
            502,
            "Cannot confirm access",
            message="gate cannot confirm your access with the sign-in provider right now. "
            "Try again shortly.",
            request_id=request.get(keys.REQUEST_ID),
        )
    if verdict.reason is None:
        return None
    gate.auth.forget(cookie)
    log.event(
        "gate.session.ended",
        level="warning",
        user=session.user,
        reason=verdict.reason,
        rid=request.get(keys.REQUEST_ID),
    )
    response = page(
        403,
        "Access ended",
        message="This site no longer admits your account.",
        reason=verdict.reason,
        links=[(gate.config.paths.login, "Sign in again")],
        request_id=request.get(keys.REQUEST_ID),
    )
    clear_cookie(gate, response, gate.auth.cookie_name)
    return response


async def websocket_origin(gate: Gate, request: Incoming) -> web.StreamResponse | None:
    """Cross-site WebSocket hijacking: a browser's Origin must be the origin the user is on,
    scheme included. No Origin: not a browser (browsers always send it on a handshake)."""
    origin = request.headers.get("Origin")
    if not is_websocket(request.headers) or origin is None:
        return None
    if origin.lower() == gate.auth.own_origin(request):
        return None
    log.event(
        "gate.ws.origin_refused",
        level="warning",
        origin=origin,
        host=request.host,
        rid=request[keys.REQUEST_ID],
    )
    return web.Response(status=403, text="WebSocket Origin does not match this host\n")


# After gate's public endpoints, before its private ones, the proxy and htdocs.
BEFORE_PROXY: tuple[Guard, ...] = (identity, restrictions, websocket_origin)
