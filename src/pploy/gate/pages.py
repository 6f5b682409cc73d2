"""gate's own HTML pages (login form, 403, 502, errors), rendered with autoescaping."""

from __future__ import annotations

from typing import Any

import jinja2
from aiohttp import web

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("pploy.gate", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Not no-referrer: with it browsers send `Origin: null` on the login form POST.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def page(status: int, title: str, **context: Any) -> web.Response:
    """A small HTML page; values are escaped by the template."""
    defaults: dict[str, Any] = {
        "message": None,
        "error": status >= 400,
        "who": None,
        "reason": None,
        "dev_form": False,
        "links": [],
        "request_id": None,
        "login_path": "/login",
        "next": "/",
        "confirm": None,
    }
    defaults.update(context)
    html = _env.get_template("gate_page.html").render(title=title, **defaults)
    return web.Response(
        status=status, text=html, content_type="text/html", headers=SECURITY_HEADERS
    )
