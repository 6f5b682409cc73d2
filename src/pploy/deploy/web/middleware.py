"""What runs around every request: its id, access log line and error rendering
(:func:`request_context`), then host, identity and cross-site checks (:func:`authenticate`)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.typedefs import Handler as Next

from pploy import log
from pploy.deploy import actions
from pploy.deploy.domain.errors import BadRequest, PployError, Unauthorized, Unavailable
from pploy.deploy.domain.permissions import Caller
from pploy.deploy.domain.records import StoreError, StoreUnavailable
from pploy.deploy.domain.tokens import MAX_TOKEN_LENGTH
from pploy.deploy.services import services
from pploy.deploy.web import security
from pploy.deploy.web.rendering import error_response, wants_json
from pploy.deploy.web.requestkeys import (
    ACTIONS,
    CALLER,
    EMAIL,
    NEW_CSRF_TOKEN,
    ORIGIN_PROVEN,
    REQUEST_ID,
    USER,
)

# Paths anyone may reach, matched as whole paths: a project named "pingtest" or "login-svc"
# is not public because its name starts like one. Static files are public by the route that
# serves them, not by a "/static/" prefix (``POST /static/deploy`` deploys a project "static").
PUBLIC_PATHS = frozenset({"/ping", "/login", "/favicon.ico"})


def is_public(request: web.Request) -> bool:
    """True for the requests an anonymous caller may make."""
    if request.path in PUBLIC_PATHS:
        return True
    return isinstance(request.match_info.route.resource, web.StaticResource)


Handler = TypeVar("Handler", bound=Callable[..., Any])
_STARTS_WORK: set[Callable[..., Any]] = set()


def starts_work(handler: Handler) -> Handler:
    """Mark a route that starts a job or a clone: during the shutdown grace pploy keeps
    serving (log streams, pages, cancel) but answers these with 503 "shutting down"."""
    _STARTS_WORK.add(handler)
    return handler


_SAME_ORIGIN_FORMS: set[Callable[..., Any]] = set()


def same_origin_form(handler: Handler) -> Handler:
    """Mark a route go-pploy's UI posts a form to without pploy's CSRF token: there the form
    is accepted without the token when the browser proves the request same-origin
    (``Origin`` one of pploy's, or ``Sec-Fetch-Site: same-origin``), never otherwise."""
    _SAME_ORIGIN_FORMS.add(handler)
    return handler


_NO_ACTION: dict[Callable[..., Any], str] = {}


def no_action(reason: str) -> Callable[[Handler], Handler]:
    """Mark a state-changing route that decides no rule of :mod:`pploy.deploy.actions`
    (signing in or out changes only the caller's own cookies), with the reason; any other
    unsafe request that succeeds without entering an action is refused as a bug."""

    def mark(handler: Handler) -> Handler:
        _NO_ACTION[handler] = reason
        return handler

    return mark


def exempt_reason(handler: Callable[..., Any]) -> str | None:
    """Why ``handler`` changes state without an action (None: it must use one)."""
    return _NO_ACTION.get(handler)


class Unguarded(PployError):
    """A route changed state without going through the actions layer: a bug in pploy."""

    status = 500


def _require_action(request: web.Request, taken: list[str]) -> None:
    if taken or request.match_info.handler in _NO_ACTION:
        return
    route = request.match_info.route
    where = f"{route.method} {route.resource.canonical if route.resource else request.path}"
    log.event(
        "action.missing", level="error", route=where, request_id=request.get(REQUEST_ID),
        problem="a state-changing route succeeded without going through pploy.deploy.actions",
    )  # fmt: skip
    raise Unguarded(
        f"{where} changed state without going through pploy's actions layer, where the rules "
        "are decided (a bug in pploy: please report it)"
    )


async def _through_actions(request: web.Request, handler: Next) -> web.StreamResponse:
    """Run an unsafe request's handler; one that succeeds (2xx, 3xx) must have entered an
    action (or be marked :func:`no_action`). A streamed answer already under way is logged."""
    with actions.taking() as taken:
        request[ACTIONS] = taken  # named on the request's log line
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                _require_action(request, taken)
            raise
        if response.status < 400:
            try:
                _require_action(request, taken)
            except Unguarded:
                if not response.prepared:
                    raise
        return response


@web.middleware
async def request_context(request: web.Request, handler: Next) -> web.StreamResponse:
    """Request id, access log line, errors rendered as JSON or HTML, and the CSRF cookie."""
    request_id = request.headers.get("X-Request-Id", "")[:64] or secrets.token_hex(8)
    request[REQUEST_ID] = request_id
    started = time.perf_counter()
    status = 500
    try:
        try:
            response = await handler(request)
        except PployError as exc:
            if isinstance(exc, StoreUnavailable | StoreError) and exc.__cause__ is not None:
                _log_store_error(request_id, request, exc.__cause__)  # the driver's own words
            response = error_response(request, exc.status, exc.message)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = error_response(request, exc.status, exc.reason)
        status = response.status
        if not response.prepared:
            response.headers.setdefault("X-Request-Id", request_id)
            new_token = request.get(NEW_CSRF_TOKEN)
            if new_token:
                response.set_cookie(
                    security.CSRF_COOKIE, new_token, path="/", httponly=True, samesite="Lax",
                    secure=request.secure,
                )  # fmt: skip
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        log.event(
            "http.request", request_id=request_id, method=request.method, path=request.path,
            status=status, user=request.get(USER), remote=request.remote,
            action=",".join(request.get(ACTIONS, ())) or None,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )  # fmt: skip


@web.middleware
async def authenticate(request: web.Request, handler: Next) -> web.StreamResponse:
    """Refuse hosts pploy does not serve, identify the user (public paths may stay
    anonymous), and refuse unsafe requests a browser sent from another site."""
    svc = services(request)
    trust = svc.auth.mode != "standalone" and svc.auth.trusted_peer(request)
    if request.path != "/ping" and (
        host := security.refused_host(
            request, svc.config.public_url, svc.config.allowed_hosts, trust
        )
    ):
        raise BadRequest(
            f"this pploy does not serve the host {host!r}; "
            "add it to allowed_hosts (or set public_url)"
        )
    public = is_public(request)
    try:  # a bearer token, when sent, is the only identity believed (see domain/tokens.py)
        secret = bearer(request)
        caller = None if secret is None else svc.tokens.authenticate(secret)
        if caller and svc.auth.picks_name and caller.user not in svc.config.users:
            raise Unauthorized(f"the token's owner {caller.user!r} is no longer one of `users`")
    except Unauthorized as exc:
        return refusal(exc)
    try:
        user = caller.user if caller else await svc.auth.identify(request)
    except Unauthorized:
        if not public:
            raise
        user = None
    if user is not None:
        request[USER] = user  # absent for an anonymous request to a public path
        request[CALLER] = caller or Caller(user, request.get(EMAIL))
    elif not public:
        if svc.auth.picks_name and not wants_json(request) and request.method == "GET":
            raise web.HTTPSeeOther("/login?" + urlencode({"next": request.path_qs}))
        raise Unauthorized(
            "choose who you are first (the `user` cookie)"
            if svc.auth.picks_name
            else "not authenticated"
        )
    if request.method not in security.SAFE_METHODS or request.headers.get("Upgrade"):
        security.check_origin(request, svc.config.public_url, trust)
        if request.match_info.handler in _SAME_ORIGIN_FORMS and security.proves_same_origin(
            request, svc.config.public_url, trust
        ):
            request[ORIGIN_PROVEN] = True
    if not svc.jobs.accepting and request.match_info.handler in _STARTS_WORK:
        raise Unavailable("pploy is shutting down and takes no new work; try again once it is back")
    if request.method in security.SAFE_METHODS:
        return await handler(request)
    return await _through_actions(request, handler)


def _log_store_error(request_id: str, request: web.Request, exc: BaseException) -> None:
    log.event(
        "store.error", level="error", request_id=request_id, path=request.path,
        error=f"{type(exc).__name__}: {exc}",
    )  # fmt: skip


def bearer(request: web.Request) -> str | None:
    """The bearer token the request carries, None without an ``Authorization: Bearer``
    header; Unauthorized when it is sent twice or is not a plausible token."""
    values = request.headers.getall("Authorization", [])
    found = [v for v in values if v.strip().partition(" ")[0].lower() == "bearer"]
    if not found:
        return None
    if len(values) > 1:
        raise Unauthorized("Authorization was sent more than once; send one bearer token")
    token = found[0].strip().partition(" ")[2].strip()
    if not token or len(token) > MAX_TOKEN_LENGTH or not token.isascii():
        raise Unauthorized("the bearer token is malformed")
    return token


def refusal(exc: Unauthorized) -> web.Response:
    """A bearer request's 401: JSON whatever it asked for (a script must never get a login
    page), with the challenge RFC 6750 defines."""
    return web.json_response(
        {"error": exc.message},
        status=401,
        headers={"WWW-Authenticate": 'Bearer realm="pploy", error="invalid_token"'},
    )
