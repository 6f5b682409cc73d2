"""Header hygiene between client, gate and upstream.

Hop-by-hop headers never cross gate. Identity headers are gate's to set: whatever a client sent
under any spelling of an identity header (case, ``_`` for ``-``) is removed before gate adds
its own, so an upstream can trust ``X-Forwarded-User`` only because gate put it there.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping

from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

# Names under which proxies and auth layers pass identity; a client must never set them.
IDENTITY_NAMES = frozenset(
    {
        "x-forwarded-user",
        "x-forwarded-email",
        "x-forwarded-preferred-username",
        "x-forwarded-groups",
        "x-forwarded-access-token",
        "x-forwarded-login",
        "x-auth-request-user",
        "x-auth-request-email",
        "x-auth-request-preferred-username",
        "x-auth-request-groups",
        "x-auth-request-access-token",
        "x-remote-user",
        "x-remote-email",
        "remote-user",
        "x-user",
        "x-email",
        "x-webauth-user",
        "x-authenticated-user",
        "x-pploy-user",
    }
)
IDENTITY_PREFIXES = ("x-gate-",)

# Set by gate from what it saw; a client's values are discarded (or extended when trusted).
FORWARDING_NAMES = frozenset(
    {
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-server",
        "forwarded",
        "x-real-ip",
        "x-request-id",
    }
)

# The WebSocket handshake is redone by gate's client towards the upstream.
WEBSOCKET_HANDSHAKE = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-accept",
        "sec-websocket-protocol",
    }
)


@functools.lru_cache(maxsize=4096)
def canonical(name: str) -> str:
    """One spelling per header: lower case, ``_`` read as ``-`` (as CGI-style servers do).
    Remembered per spelling (bounded): the same few names come on every request."""
    return name.strip().lower().replace("_", "-")


def identity_names(extra: Iterable[str] = ()) -> frozenset[str]:
    """Every identity header name (canonical), including configured ones."""
    return IDENTITY_NAMES | {canonical(e) for e in extra}


def is_identity_header(name: str, names: frozenset[str] = IDENTITY_NAMES) -> bool:
    """``names`` from :func:`identity_names`; any ``X-Gate-*`` header counts too."""
    key = canonical(name)
    return key in names or key.startswith(IDENTITY_PREFIXES)


def connection_tokens(headers: Mapping[str, str] | CIMultiDictProxy[str]) -> set[str]:
    """Headers named in ``Connection`` are hop-by-hop too (RFC 9110 §7.6.1)."""
    tokens: set[str] = set()
    getall = getattr(headers, "getall", None)
    values = getall("Connection", []) if getall else [headers.get("Connection", "")]
    for value in values:
        tokens |= {canonical(t) for t in value.split(",") if t.strip()}
    return tokens


# What frames a response body: named in ``Connection`` it is still not dropped, or a body on a
# kept connection would lose its end (gate would have to re-frame it; it passes it instead).
FRAMING = frozenset({"content-length"})


def response_headers(upstream: CIMultiDictProxy[str] | CIMultiDict[str]) -> CIMultiDict[str]:
    """Upstream response headers minus hop-by-hop ones (``Content-Length`` is never one)."""
    if "Connection" in upstream:
        drop = HOP_BY_HOP | (connection_tokens(upstream) - FRAMING)
    else:
        drop = HOP_BY_HOP
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        if canonical(name) not in drop:
            out.add(name, value)
    return out


def streamed(headers: CIMultiDict[str]) -> bool:
    """A response body that is streamed (no length, or server-sent events): gate tells a
    buffering proxy in front (nginx) to pass it through at once."""
    content_type = headers.get("Content-Type", "").lower()
    return "content-length" not in headers or content_type.startswith("text/event-stream")


NO_BODY_STATUSES = frozenset({204, 304})


def response_head(
    upstream: CIMultiDictProxy[str] | CIMultiDict[str],
    status: int,
    *,
    head_only: bool,
    request_id: str | None,
) -> tuple[CIMultiDict[str], bool, bool]:
    """What an upstream's response head becomes for the client, on both front ends: its
    headers (hop-by-hop dropped, ``X-Accel-Buffering: no`` on a streamed body so a buffering
    proxy in front passes it at once, gate's ``X-Request-Id``), whether a body follows, and
    whether that body is streamed (no length, or server-sent events)."""
    headers = response_headers(upstream)
    has_body = not head_only and status not in NO_BODY_STATUSES
    streaming = has_body and streamed(headers)
    if streaming:
        headers.setdefault("X-Accel-Buffering", "no")
    if request_id is not None:
        headers["X-Request-Id"] = request_id
    return headers, has_body, streaming


def strip_cookies(header: str, names: Iterable[str]) -> str:
    """Remove gate's own cookies from a Cookie header before it goes upstream."""
    unwanted = set(names)
    kept = []
    for part in header.split(";"):
        name = part.split("=", 1)[0].strip()
        if name and name not in unwanted:
            kept.append(part.strip())
    return "; ".join(kept)


def cookie_value(headers: Mapping[str, str] | CIMultiDictProxy[str], name: str) -> str | None:
    """The value of cookie ``name`` in the Cookie header (a quoted value unquoted; the last
    one when it is sent twice, as aiohttp reads it). The one reader of gate's own cookies for
    both front ends, so they can never disagree about which session a request carries."""
    found = None
    for part in headers.get("Cookie", "").split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            found = value
    return found


def is_websocket(headers: CIMultiDictProxy[str]) -> bool:
    """A WebSocket upgrade request (``Upgrade: websocket`` named in ``Connection``)."""
    upgrade = headers.get("Upgrade", "").lower()
    return upgrade == "websocket" and "upgrade" in connection_tokens(headers)


def head_bytes(first_line: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """A request or response head on the wire, the fast path's one head writer (requests to
    upstreams, responses, gate's own answers). A CR or LF inside a value would split it into
    headers (or messages) nobody wrote: ValueError, never sent."""
    lines = [first_line, *(f"{name}: {value}" for name, value in headers), "", ""]
    data = "\r\n".join(lines).encode("utf-8", "surrogateescape")
    breaks = len(lines) - 1
    if data.count(b"\n") != breaks or data.count(b"\r") != breaks:
        raise ValueError("a header value holds a line break")
    return data
