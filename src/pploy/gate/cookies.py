"""gate's cookies as the browser gets them, and the same-origin test for gate's own forms.

Every cookie gate sets is HttpOnly, SameSite=Lax, Secure when users arrive over HTTPS, and
scoped to ``cookie_domain`` when one is configured; set and cleared with the same attributes
so a clear always hits the cookie it means.
"""

from __future__ import annotations

from aiohttp import web

from pploy.gate.core import Gate


def set_cookie(gate: Gate, response: web.StreamResponse, name: str, value: str, age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=age,
        path="/",
        domain=gate.config.auth.session.cookie_domain or None,
        secure=gate.config.secure_cookies,
        httponly=True,
        samesite="Lax",
    )


def clear_cookie(gate: Gate, response: web.StreamResponse, name: str) -> None:
    response.del_cookie(
        name,
        path="/",
        domain=gate.config.auth.session.cookie_domain or None,
        secure=gate.config.secure_cookies,
        httponly=True,
        samesite="Lax",
    )


def same_origin_post(gate: Gate, request: web.Request) -> bool:
    """A form post from another site (login CSRF) carries that site's Origin; scheme, host and
    port must all be ours. No Origin at all is a non-browser client."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return origin.lower() == gate.auth.own_origin(request)


def cross_site_reason(gate: Gate, request: web.Request) -> str:
    """Why a post counted as cross-site: the Origin it carried, the origin gate believes it
    serves, and the setting that makes gate believe a TLS proxy's scheme."""
    return (
        f"this form came from Origin {request.headers.get('Origin', '')[:200]}, but gate serves "
        f"{gate.auth.own_origin(request)} as far as it can tell. If a proxy in front of gate "
        "terminates TLS (or changes the port), list its address in gate's trusted_proxies so "
        "gate believes its X-Forwarded-Proto, and have it pass the Host the browser used."
    )
