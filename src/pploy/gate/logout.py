"""Signing out: a confirmation page on GET, the sign-out itself on a same-origin POST.

gate used to sign out on any GET, so any page (a link, an image) could sign a user out. Now
the POST must carry a token bound to the session cookie, which another site can neither read
nor guess, and a same-origin ``Origin`` when the browser sends one. gate's ``?next=`` is kept:
the page carries it (a local path only) and the sign-out then redirects there, as gate did.
"""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import web

from pploy import log
from pploy.gate import requestkeys as keys
from pploy.gate.cookies import clear_cookie, same_origin_post
from pploy.gate.core import STATE_COOKIE, Gate
from pploy.gate.pages import page
from pploy.redirects import safe_return_path


def logout_token(gate: Gate, request: web.Request) -> str:
    """The token the logout form carries: bound to this browser's session cookie, which
    another site can neither read nor guess, so it cannot sign the user out."""
    cookie = gate.auth.cookie(request)
    key = hashlib.sha256(b"gate-logout\0" + gate.config.auth.session.key.encode()).digest()
    return hmac.new(key, cookie.encode(), "sha256").hexdigest()


def _logout_form(
    gate: Gate, request: web.Request, status: int, message: str, next_path: str | None = None
) -> web.Response:
    fields = {"token": logout_token(gate, request)}
    if next_path:
        fields["next"] = next_path
    return page(
        status,
        "Sign out",
        request=request,
        message=message,
        error=status >= 400,
        confirm={
            "action": gate.config.paths.logout,
            "fields": fields,
            "button": "Sign out",
        },
        request_id=request.get(keys.REQUEST_ID),
    )


async def handle_logout(gate: Gate, request: web.Request) -> web.StreamResponse:
    """GET asks (a link or an image on another site must not sign anyone out); POST with the
    form's token signs out."""
    if request.method in ("GET", "HEAD"):
        next_path = _next(request.query.get("next"))
        return _logout_form(gate, request, 200, "Sign out of gate?", next_path)
    if request.method != "POST":
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD", "POST"])
    form = await request.post()
    token = str(form.get("token") or "")
    next_path = _next(form.get("next"))
    if not same_origin_post(gate, request) or not hmac.compare_digest(
        token, logout_token(gate, request)
    ):
        log.event("gate.logout.refused", level="warning", rid=request.get(keys.REQUEST_ID))
        return _logout_form(
            gate, request, 403, "That sign-out did not come from this site. Sign out here:",
            next_path,
        )  # fmt: skip
    response: web.Response
    if next_path:
        # A plain 303 (returning aiohttp's HTTPSeeOther is deprecated; raising it would skip
        # the cookies cleared below).
        response = web.Response(status=303, headers={"Location": next_path})
    else:
        response = page(
            200,
            "Signed out",
            request=request,
            message="You are signed out of gate.",
            links=[(gate.config.paths.login, "Sign in again")],
        )
    clear_cookie(gate, response, gate.auth.cookie_name)
    clear_cookie(gate, response, STATE_COOKIE)
    gate.auth.forget(gate.auth.cookie(request))
    log.event("gate.logout", rid=request.get(keys.REQUEST_ID))
    return response


def _next(value: object) -> str | None:
    """gate's ``next``: a local path to land on after signing out (anything else: none)."""
    if not value:
        return None
    path = safe_return_path(value)
    return path if path == value else None
