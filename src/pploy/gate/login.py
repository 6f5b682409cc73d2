"""Login and callback: the authorization code flow with PKCE, state and nonce.

The in-flight login (state, nonce, PKCE verifier, where to return) lives in a short-lived
encrypted cookie, so the ``state`` that comes back must match one this browser started: a
callback replayed into another browser, or with an altered state, is refused.
"""

from __future__ import annotations

import hmac
from typing import Any
from urllib.parse import quote

from aiohttp import web

from pploy import log
from pploy.gate import requestkeys as keys
from pploy.gate.cookies import clear_cookie, cross_site_reason, same_origin_post, set_cookie
from pploy.gate.core import STATE_COOKIE, Gate
from pploy.gate.pages import page
from pploy.gate.providers import Forbidden, LoginFailed, UserInfo
from pploy.gate.providers.base import new_token, pkce_challenge
from pploy.gate.providers.dev import DevProvider
from pploy.gate.session import Session
from pploy.redirects import safe_return_path

STATE_LIFETIME = 600
MAX_PENDING = 4


def redirect(location: str, status: int = 302) -> web.Response:
    return web.Response(status=status, headers={"Location": location, "Cache-Control": "no-store"})


def login_url(gate: Gate, next_path: str) -> str:
    return f"{gate.config.paths.login}?next={quote(safe_return_path(next_path), safe='/')}"


def _pending(gate: Gate, request: web.Request) -> list[dict[str, Any]]:
    data = gate.state_codec.open(STATE_COOKIE, request.cookies.get(STATE_COOKIE))
    flows = data.get("f") if data else None
    if not isinstance(flows, list):
        return []
    now = gate.clock()
    return [
        f
        for f in flows
        if isinstance(f, dict)
        and isinstance(f.get("t"), int | float)
        and 0 <= now - f["t"] <= STATE_LIFETIME
    ]


def start_session(gate: Gate, response: web.StreamResponse, info: UserInfo) -> Session:
    now = gate.clock()
    session = Session(
        user=info.user,
        email=info.email,
        provider=info.provider,
        issued=now,
        expires=now + gate.config.auth.session.lifetime,
        orgs=info.orgs,
        policy=gate.auth.policy,
        token=info.token,
    )
    value = gate.codec.seal(gate.auth.cookie_name, session.to_payload())
    set_cookie(gate, response, gate.auth.cookie_name, value, int(gate.config.auth.session.lifetime))
    return session


def _forbidden(gate: Gate, request: web.Request, exc: Forbidden) -> web.Response:
    gate.metrics.login(gate.provider.name, "forbidden")
    log.event(
        "gate.login.forbidden",
        level="warning",
        user=exc.info.user,
        email=exc.info.email,
        provider=exc.info.provider,
        reason=exc.reason,
        rid=request.get(keys.REQUEST_ID),
    )
    response = page(
        403,
        "Access denied",
        request=request,
        message="This site does not admit your account.",
        who=exc.info,
        reason=exc.reason,
        links=[
            (gate.config.paths.logout, "Sign out"),
            (gate.config.paths.login, "Use another account"),
        ],
        request_id=request.get(keys.REQUEST_ID),
    )
    clear_cookie(gate, response, gate.auth.cookie_name)
    return response


def _failed(gate: Gate, request: web.Request, exc: LoginFailed) -> web.Response:
    gate.metrics.login(gate.provider.name, "failed")
    log.event(
        "gate.login.failed", level="warning", reason=str(exc), rid=request.get(keys.REQUEST_ID)
    )
    return page(
        exc.status,
        "Sign-in failed",
        request=request,
        message=str(exc),
        links=[(gate.config.paths.login, "Try again")],
        request_id=request.get(keys.REQUEST_ID),
    )


def _success(gate: Gate, request: web.Request, info: UserInfo, next_path: str) -> web.Response:
    response = redirect(safe_return_path(next_path), 303)
    start_session(gate, response, info)
    gate.metrics.login(gate.provider.name, "ok")
    log.event(
        "gate.login.ok",
        user=info.user,
        email=info.email,
        provider=info.provider,
        orgs=",".join(info.orgs) or None,
        rid=request.get(keys.REQUEST_ID),
    )
    return response


async def handle_login(gate: Gate, request: web.Request) -> web.StreamResponse:
    provider = gate.provider
    if isinstance(provider, DevProvider):
        if request.method == "POST":
            if not same_origin_post(gate, request):
                return page(
                    403, "Sign-in refused", request, message="Cross-site sign-in is not allowed.",
                    reason=cross_site_reason(gate, request),
                )  # fmt: skip
            form = await request.post()
            next_path = str(form.get("next") or "/")
            try:
                info = provider.login(str(form.get("user") or ""))
            except Forbidden as exc:
                return _forbidden(gate, request, exc)
            except LoginFailed as exc:
                gate.metrics.login(provider.name, "failed")
                return page(
                    400,
                    "Sign in",
                    request=request,
                    message=str(exc),
                    dev_form=True,
                    login_path=gate.config.paths.login,
                    next=safe_return_path(next_path),
                )
            return _success(gate, request, info, next_path)
        if request.method not in ("GET", "HEAD"):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD", "POST"])
        return page(
            200,
            "Sign in",
            request=request,
            dev_form=True,
            login_path=gate.config.paths.login,
            next=safe_return_path(request.query.get("next", "/")),
        )

    if request.method not in ("GET", "HEAD"):
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])
    flow: dict[str, Any] = {
        "s": new_token(),
        "n": new_token(),
        "v": new_token(48),
        "nx": safe_return_path(request.query.get("next", "/")),
        "t": int(gate.clock()),
    }
    redirect_uri = str(gate.config.auth.info.redirect_url)
    try:
        url = await provider.authorization_url(
            state=flow["s"],
            nonce=flow["n"],
            code_challenge=pkce_challenge(flow["v"]),
            redirect_uri=redirect_uri,
        )
    except LoginFailed as exc:
        return _failed(gate, request, exc)
    pending = [flow, *_pending(gate, request)][:MAX_PENDING]
    response = redirect(url)
    value = gate.state_codec.seal(STATE_COOKIE, {"f": pending})
    set_cookie(gate, response, STATE_COOKIE, value, STATE_LIFETIME)
    return response


async def handle_callback(gate: Gate, request: web.Request) -> web.StreamResponse:
    params = {k: v for k, v in request.query.items()}
    if "error" in params:
        gate.metrics.login(gate.provider.name, "refused")
        return page(
            403,
            "Sign-in cancelled",
            request=request,
            message=f"The provider answered: {params['error'][:100]}",
            links=[(gate.config.paths.login, "Try again")],
            request_id=request.get(keys.REQUEST_ID),
        )
    state = params.get("state", "")
    pending = _pending(gate, request)
    flow = next(
        (f for f in pending if isinstance(f.get("s"), str) and hmac.compare_digest(f["s"], state)),
        None,
    )
    if not state or flow is None:
        return _failed(
            gate,
            request,
            LoginFailed("this sign-in was not started from this browser, or it expired"),
        )
    try:
        info = await gate.provider.complete(
            params=params,
            verifier=str(flow["v"]),
            nonce=str(flow["n"]),
            redirect_uri=str(gate.config.auth.info.redirect_url),
        )
    except Forbidden as exc:
        response = _forbidden(gate, request, exc)
    except LoginFailed as exc:
        response = _failed(gate, request, exc)
    else:
        response = _success(gate, request, info, str(flow.get("nx") or "/"))
    # The state is single-use whatever the outcome.
    rest = [f for f in pending if f is not flow]
    if rest:
        value = gate.state_codec.seal(STATE_COOKIE, {"f": rest})
        set_cookie(gate, response, STATE_COOKIE, value, STATE_LIFETIME)
    else:
        clear_cookie(gate, response, STATE_COOKIE)
    return response


async def handle_error(gate: Gate, request: web.Request) -> web.StreamResponse:
    return page(
        401,
        "Sign-in error",
        request=request,
        message="Signing in did not work. Please try again.",
        links=[(gate.config.paths.login, "Sign in")],
    )
