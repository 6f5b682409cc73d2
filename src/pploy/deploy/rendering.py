"""Answers in the form the client reads: HTML pages for browsers, ``{"error": ...}`` JSON for
the API and scripts, redirects that carry a one-time flash message."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from pploy.deploy import i18n, prefix, security
from pploy.deploy.requestkeys import USER
from pploy.deploy.services import services


def wants_json(request: web.Request) -> bool:
    """True for the API and for clients that ask for JSON rather than HTML."""
    if request.path.startswith("/api/"):
        return True
    accept = request.headers.get("Accept", "")
    return "text/html" not in accept and "application/json" in accept


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    """The HTML page ``template`` in the request's language, with the user, CSRF token and
    flash message every page shows."""
    svc = services(request)
    language = i18n.negotiate(request.headers.get("Accept-Language"))
    flash = request.cookies.get("flash")
    html = svc.templates.get_template(template).render(
        _=i18n.translator(language),
        lang=language,
        user=request.get(USER),
        picks_name=svc.auth.picks_name,
        csrf_token=security.csrf_token(request),
        csrf_field=security.CSRF_FIELD,
        flash=flash[:500] if flash else None,
        request_path=request.path_qs,
        base=prefix.base(request),
        url=lambda path: prefix.url(request, path),
        now=time.time(),
        **context,
    )
    response = web.Response(text=html, status=status, content_type="text/html")
    if flash:
        response.del_cookie("flash", path="/")
    return response


def redirect_with_flash(location: str, message: str | None = None) -> web.HTTPSeeOther:
    """A 303 to ``location`` that shows ``message`` once on the next page."""
    response = web.HTTPSeeOther(location)
    if message:
        response.set_cookie("flash", message[:500], path="/", httponly=True, samesite="Lax")
    return response


Handler = TypeVar("Handler", bound=Callable[..., Any])
_FOR_SCRIPTS: set[Callable[..., Any]] = set()


def for_scripts(handler: Handler) -> Handler:
    """Mark a route meant for scripts (the one-shot endpoints): its errors are plain text to
    any client that does not ask for HTML, so ``curl`` prints the reason, not a page."""
    _FOR_SCRIPTS.add(handler)
    return handler


def error_response(request: web.Request, status: int, message: str) -> web.Response:
    """An error as ``{"error": message}`` for JSON clients, plain text for scripts on routes
    meant for them, else as the error page."""
    if wants_json(request):
        return web.json_response({"error": message}, status=status)
    if request.match_info.handler in _FOR_SCRIPTS and "text/html" not in request.headers.get(
        "Accept", ""
    ):
        return web.Response(text=f"error: {message}\n", status=status, content_type="text/plain")
    return render(request, "error.html", status=status, message=message, status_code=status)
