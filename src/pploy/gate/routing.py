"""Request paths made unambiguous, and matched to proxy routes.

A path is split on ``/`` and each segment percent-decoded once; gate decides on those decoded
segments and re-encodes them for the upstream, so gate and upstream can never disagree about
where ``/app%2f..%2fadmin`` or ``/app%23/x`` points. Dot segments (raw or encoded, once or
twice) are refused, and empty segments (``//``) are collapsed.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote_to_bytes, urlsplit

from pploy.gate.config import ProxyConf

_SAFE = "!$&'()*+,;=:@-._~"


class BadPath(Exception):
    """The request target cannot be mapped to a path safely; answered with 400."""


@dataclass(frozen=True)
class RequestPath:
    segments: tuple[bytes, ...]
    trailing_slash: bool
    query: str  # raw query string, without "?"

    @functools.cached_property
    def path(self) -> str:
        """The path, re-encoded one way (computed once: every endpoint lookup asks)."""
        return encode_path(self.segments, self.trailing_slash)

    @property
    def path_qs(self) -> str:
        return self.path + (f"?{self.query}" if self.query else "")


def _dangerous(segment: bytes) -> bool:
    if b"\x00" in segment:
        return True
    for candidate in (segment, unquote_to_bytes(segment)):
        for part in candidate.replace(b"\\", b"/").split(b"/"):
            if part in (b".", b".."):
                return True
    return False


def parse_target(raw_target: str) -> RequestPath:
    """Split the raw request target (path and query, as sent) into decoded segments."""
    path, _, query = raw_target.partition("?")
    segments, trailing = _parse_path(path)
    return RequestPath(segments, trailing, query)


@functools.lru_cache(maxsize=4096)
def _parse_path(path: str) -> tuple[tuple[bytes, ...], bool]:
    """Decoded segments and trailing slash of a raw path; remembered, as the same few paths
    come again and again (a refused path raises and is not remembered)."""
    if not path.startswith("/") or "#" in path:
        raise BadPath("request target must be an absolute path")
    segments = []
    for raw in path.split("/")[1:]:
        if raw == "":
            continue
        decoded = unquote_to_bytes(raw)
        if _dangerous(decoded) or raw in (".", ".."):
            raise BadPath("dot segments are not allowed in paths")
        segments.append(decoded)
    trailing = path.endswith("/") and bool(segments)
    return tuple(segments), trailing


def encode_path(segments: tuple[bytes, ...] | list[bytes], trailing_slash: bool) -> str:
    if not segments:
        return "/"
    text = "/" + "/".join(quote(s, safe=_SAFE) for s in segments)
    return text + "/" if trailing_slash else text


def config_segments(path: str) -> tuple[bytes, ...]:
    return tuple(s.encode() for s in path.split("/") if s)


@dataclass(frozen=True)
class Route:
    conf: ProxyConf
    prefix: tuple[bytes, ...]
    dest_origin: str
    dest_prefix: tuple[bytes, ...]
    host: str | None

    @classmethod
    def from_conf(cls, conf: ProxyConf) -> Route:
        parts = urlsplit(conf.dest)
        dest_prefix = tuple(unquote_to_bytes(s) for s in parts.path.split("/") if s)
        return cls(
            conf=conf,
            prefix=config_segments(conf.path),
            dest_origin=f"{parts.scheme}://{parts.netloc}",
            dest_prefix=dest_prefix,
            host=conf.host.lower() if conf.host else None,
        )

    @functools.cached_property
    def label(self) -> str:
        return (self.host or "") + (encode_path(self.prefix, False))

    def matches(self, host: str, target: RequestPath) -> bool:
        if self.host is not None and self.host != host:
            return False
        return target.segments[: len(self.prefix)] == self.prefix

    def needs_slash_redirect(self, target: RequestPath) -> bool:
        """gate's ``/prefix`` → ``/prefix/`` redirect."""
        return bool(self.prefix) and target.segments == self.prefix and not target.trailing_slash

    @functools.cached_property
    def _urls(self) -> dict[RequestPath, str]:
        return {}

    def upstream_url(self, target: RequestPath) -> str:
        """The upstream URL for a request path; remembered per path (bounded), as the same
        few paths come again and again and re-encoding them was a share of each request."""
        urls = self._urls
        url = urls.get(target)
        if url is None:
            if len(urls) >= 4096:
                urls.clear()
            url = urls[target] = self._upstream_url(target)
        return url

    def _upstream_url(self, target: RequestPath) -> str:
        rest = target.segments[len(self.prefix) :] if self.conf.strip_path else target.segments
        segments = self.dest_prefix + rest
        # Nothing left after the prefix means the request was for the prefix's directory.
        trailing = target.trailing_slash if rest else True
        url = self.dest_origin + encode_path(segments, trailing)
        return url + (f"?{target.query}" if target.query else "")


class Router:
    """typester/gate's order: the first listed entry whose path matches wins. Entries with
    the same path form one group, as gate registered one route per path: in it an entry for
    the request's host beats the hostless one. A group of host entries for other hosts only
    does not match, and the next entries are tried (gate sent every host to such an entry;
    ``--check-config`` warns). A later entry under an earlier one's path is never reached:
    ``--check-config`` warns about that too."""

    def __init__(self, confs: list[ProxyConf]) -> None:
        self.routes = [Route.from_conf(c) for c in confs]
        groups: dict[tuple[bytes, ...], list[Route]] = {}
        for route in self.routes:
            groups.setdefault(route.prefix, []).append(route)
        self.groups = list(groups.items())  # in the order each path first appears

    def match(self, host: str, target: RequestPath) -> Route | None:
        for prefix, routes in self.groups:
            if target.segments[: len(prefix)] != prefix:
                continue
            hostless = next((r for r in routes if r.host is None), None)
            chosen = next((r for r in routes if r.host == host), hostless)
            if chosen is not None:
                return chosen
        return None


# RFC 9110 §7.2: ``uri-host [ ":" port ]``, nothing else (no userinfo, no path, no spaces).
# A name of letters, digits, ``.``, ``-``, ``_``, or a bracketed IPv6 literal.
_HOST = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(?::([0-9]{1,5}))?", re.ASCII)


def parse_host(host_header: str) -> str | None:
    """The Host header's name, lower case, without the port; None when the header is not
    ``host[:port]`` (userinfo such as ``name:1@evil.example``, a path, a bad port…). The one
    reader of Host for both front ends."""
    match = _HOST.fullmatch(host_header.strip(" \t").lower())
    if match is None:
        return None
    port = match.group(2)
    if port is not None and int(port) > 65535:
        return None
    return match.group(1)


def request_host(host_header: str | None) -> str:
    """The Host header's name, lower case, without the port ("" when absent or malformed)."""
    return parse_host(host_header or "") or ""
