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

from pploy.deploy.domain.errors import BadRequest, Forbidden
from pploy.deploy.web.requestkeys import CALLER, NEW_CSRF_TOKEN, ORIGIN_PROVEN

CSRF_COOKIE = "csrf"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
FORM_TYPES = {"application/x-www-form-urlencoded", "multipart/form-data"}
# What a foreign page may send without a CORS preflight (forms, fetch in no-cors mode).
SIMPLE_TYPES = FORM_TYPES | {"text/plain"}


def _origin(scheme: str, host: str) -> str:
    """``scheme://host[:port]`` lower-cased, without the scheme's default port: two origins
    are the same only when scheme, host and port all are."""
    scheme = scheme.strip().lower()
    host = host.strip().lower()
    default = {"http": ":80", "https": ":443"}.get(scheme, "")
    if default and host.endswith(default):
        host = host[: -len(default)]
    return f"{scheme}://{host}"


def forwarded(request: web.Request) -> tuple[str, str] | None:
    """``(scheme, host)`` the client used according to the proxy's ``X-Forwarded-Host`` and
    ``-Proto`` (the first hop's), or None without ``X-Forwarded-Host``. Only meaningful from a
    trusted peer."""
    host = request.headers.get("X-Forwarded-Host")
    if not host:
        return None
    proto = request.headers.get("X-Forwarded-Proto", request.scheme)
    return proto.split(",")[0].strip(), host.split(",")[0].strip()


def allowed_origins(
    request: web.Request, public_url: str | None, trust_forwarded: bool
) -> set[str]:
    """The origins pploy is reached by: its own scheme and Host, public_url's, and, from a
    trusted proxy, the forwarded scheme and host."""
    origins = {_origin(request.scheme, request.host)}
    if public_url:
        parts = urlsplit(public_url)
        origins.add(_origin(parts.scheme, parts.netloc))
    if trust_forwarded and (hop := forwarded(request)):
        origins.add(_origin(*hop))
    return origins


def check_origin(request: web.Request, public_url: str | None, trust_forwarded: bool) -> None:
    """Refuse a request a browser sent from another site (another scheme, host or port)."""
    site = request.headers.get("Sec-Fetch-Site")
    if site and site not in ("same-origin", "none"):
        raise Forbidden(f"cross-site request refused (Sec-Fetch-Site: {site})")
    origin = request.headers.get("Origin")
    if origin is None:
        return
    parts = urlsplit(origin)
    if origin == "null" or not parts.netloc:
        raise Forbidden("cross-site request refused (opaque Origin)")
    if _origin(parts.scheme, parts.netloc) not in allowed_origins(
        request, public_url, trust_forwarded
    ):
        raise Forbidden(
            f"cross-site request refused (Origin {origin}); if pploy is served over https by "
            "a proxy, set public_url"
        )


def proves_same_origin(request: web.Request, public_url: str | None, trust_forwarded: bool) -> bool:
    """True when the browser itself says the request comes from pploy's own pages:
    ``Sec-Fetch-Site: same-origin``, or an ``Origin`` that is one of pploy's. A request with
    neither (or ``Sec-Fetch-Site: none``, a typed URL) proves nothing."""
    if request.headers.get("Sec-Fetch-Site") == "same-origin":
        return True
    origin = request.headers.get("Origin")
    if not origin or origin == "null":
        return False
    parts = urlsplit(origin)
    return bool(parts.netloc) and _origin(parts.scheme, parts.netloc) in allowed_origins(
        request, public_url, trust_forwarded
    )


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
    caller = request.get(CALLER)
    if caller is not None and caller.token is not None:
        return  # bearer-authenticated: no cookie speaks for this request (domain/tokens.py)
    if request.get(ORIGIN_PROVEN):
        return  # go-pploy's forms carry no token; the browser proved them same-origin
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


def _host_served(host: str, public_url: str | None, extra: list[str]) -> bool:
    name = (urlsplit("//" + host).hostname or "").lower().rstrip(".")
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    allowed = set(_machine_names()) | {h.lower() for h in extra}
    if public_url:
        allowed.add((urlsplit(public_url).hostname or "").lower())
    return name in allowed


def refused_host(
    request: web.Request, public_url: str | None, extra: list[str], trust_forwarded: bool
) -> str | None:
    """The host pploy does not serve that this request was addressed to, else None.

    A DNS-rebinding page (evil.example resolving to 127.0.0.1) would otherwise be same-origin
    with pploy and could act as anyone. Both the Host header and, from a trusted proxy (gate
    passes on the Host it was reached by), ``X-Forwarded-Host`` must name a served host: IP
    literals, localhost and this machine's names, public_url's host, and ``allowed_hosts``."""
    if not _host_served(request.host or "", public_url, extra):
        return request.host
    if trust_forwarded and (hop := forwarded(request)):
        if not _host_served(hop[1], public_url, extra):
            return hop[1]
    return None
