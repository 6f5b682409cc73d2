"""Cross-site request protection: Origin checks for every unsafe request and WebSocket, and a
double-submit token for HTML forms.

Browsers send ``Origin`` (and ``Sec-Fetch-Site``) on cross-site POSTs and WebSocket upgrades,
so a request carrying a foreign origin is refused. Scripts (curl) send neither and pass that
check; HTML forms must also carry the token that matches the ``csrf`` cookie, and JSON API
bodies must be ``application/json``, which no cross-site form can send.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import socket
from functools import lru_cache
from urllib.parse import urlsplit

from aiohttp import web

from pploy.deploy.errors import BadRequest, Forbidden
from pploy.deploy.requestkeys import NEW_CSRF_TOKEN

CSRF_COOKIE = "csrf"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
FORM_TYPES = {"application/x-www-form-urlencoded", "multipart/form-data"}


def _netloc(scheme: str, host: str) -> str:
    host = host.strip().lower()
    default = {"http": ":80", "https": ":443", "ws": ":80", "wss": ":443"}.get(scheme, "")
    return host[: -len(default)] if default and host.endswith(default) else host


def allowed_hosts(request: web.Request, public_url: str | None, trust_forwarded: bool) -> set[str]:
    hosts = {_netloc(request.scheme, request.host)}
    if public_url:
        parts = urlsplit(public_url)
        hosts.add(_netloc(parts.scheme, parts.netloc))
    if trust_forwarded:
        forwarded = request.headers.get("X-Forwarded-Host")
        proto = request.headers.get("X-Forwarded-Proto", request.scheme)
        if forwarded:
            hosts.add(_netloc(proto.split(",")[0].strip(), forwarded.split(",")[0]))
    return hosts


def check_origin(request: web.Request, public_url: str | None, trust_forwarded: bool) -> None:
    """Refuse a request a browser sent from another site."""
    site = request.headers.get("Sec-Fetch-Site")
    if site and site not in ("same-origin", "none"):
        raise Forbidden(f"cross-site request refused (Sec-Fetch-Site: {site})")
    origin = request.headers.get("Origin")
    if origin is None:
        return
    parts = urlsplit(origin)
    if origin == "null" or not parts.netloc:
        raise Forbidden("cross-site request refused (opaque Origin)")
    if _netloc(parts.scheme, parts.netloc) not in allowed_hosts(
        request, public_url, trust_forwarded
    ):
        raise Forbidden(f"cross-site request refused (Origin {origin})")


def csrf_token(request: web.Request) -> str:
    """The request's token: its cookie's, or a new one the response will set."""
    token = request.get(NEW_CSRF_TOKEN) or request.cookies.get(CSRF_COOKIE)
    if not token or len(token) > 100:
        token = secrets.token_urlsafe(32)
        request[NEW_CSRF_TOKEN] = token
    return token


async def check_form_token(request: web.Request) -> None:
    if request.content_type not in FORM_TYPES:
        raise BadRequest("this form must be posted as application/x-www-form-urlencoded")
    form = await request.post()
    sent = form.get(CSRF_FIELD)
    cookie = request.cookies.get(CSRF_COOKIE)
    if not isinstance(sent, str) or not cookie or not hmac.compare_digest(sent, cookie):
        raise Forbidden("missing or wrong CSRF token: reload the page and try again")


@lru_cache(maxsize=1)
def _machine_names() -> frozenset[str]:
    names = {"localhost", socket.gethostname().lower()}
    try:
        names.add(socket.getfqdn().lower())
    except OSError:
        pass
    return frozenset(names)


def host_allowed(request: web.Request, public_url: str | None, extra: list[str]) -> bool:
    """Refuse a Host pploy does not serve: a DNS-rebinding page (evil.example resolving to
    127.0.0.1) would otherwise be same-origin with pploy and could pick any user's name.

    Allowed: IP literals, localhost and this machine's names, public_url's host, and
    ``allowed_hosts``."""
    host = urlsplit("//" + (request.host or "")).hostname or ""
    host = host.lower().rstrip(".")
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    allowed = set(_machine_names()) | {h.lower() for h in extra}
    if public_url:
        allowed.add((urlsplit(public_url).hostname or "").lower())
    return host in allowed
