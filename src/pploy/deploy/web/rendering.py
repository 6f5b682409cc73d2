"""Answers in the form the client reads: HTML pages for browsers, ``{"error": ...}`` JSON for
the API and scripts, redirects that carry a one-time flash message."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from pploy.deploy import prefix
from pploy.deploy.services import services
from pploy.deploy.web import i18n, security
from pploy.deploy.web.requestkeys import USER


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
    language = request_language(request)
    flash = request.cookies.get("flash")
    kept = kept_values(request)
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
        flash_error=bool(flash) and request.cookies.get(FLASH_KIND) == "error",
        kept=kept,
        auth_mode=svc.auth.mode,
        dangerous_envs=svc.config.dangerous_envs,
        languages=i18n.LANGUAGES,
        **context,
    )
    response = web.Response(text=html, status=status, content_type="text/html")
    if flash:
        response.del_cookie("flash", path="/")
        response.del_cookie(FLASH_KIND, path="/")
    if kept:
        response.del_cookie(KEPT, path="/")
    return response


FLASH_KIND = "flash_kind"  # "error": the flash is shown in the red error style
KEPT = "kept"  # what a refused form held, shown once in the form again
LANGUAGE_COOKIE = "lang"


def request_language(request: web.Request) -> str:
    """The language the reader chose (the ``lang`` cookie), else Accept-Language's best."""
    chosen = request.cookies.get(LANGUAGE_COOKIE)
    if chosen in i18n.LANGUAGES:
        return chosen
    return i18n.negotiate(request.headers.get("Accept-Language"))


def kept_values(request: web.Request) -> dict[str, str]:
    """The refused form's fields (see :func:`redirect_with_error`), or nothing."""
    try:
        value = json.loads(request.cookies.get(KEPT) or "{}")
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, str)}


def redirect_with_error(
    location: str, message: str, keep: dict[str, str] | None = None
) -> web.HTTPSeeOther:
    """A 303 to ``location`` showing ``message`` once as an error, with the form's typed
    ``keep`` values filled in again (bounded: cookies are small)."""
    response = redirect_with_flash(location, message)
    response.set_cookie(FLASH_KIND, "error", path="/", httponly=True, samesite="Lax")
    if keep:
        text = json.dumps({k: v[:1000] for k, v in keep.items()})
        response.set_cookie(KEPT, text[:3000], path="/", httponly=True, samesite="Lax")
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
