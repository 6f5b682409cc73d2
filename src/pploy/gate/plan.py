"""What serves a request: decided once, from its host and path, for both of gate's front ends.

gate's order, for every request: gate's public endpoints (ping, JWKS, the login flow) → its
private endpoints (metrics) and ``pploy doctor``'s stream test → the first proxy route that
matches (or gate's ``/prefix`` → ``/prefix/`` redirect) → htdocs → 404. aiohttp's server
(:mod:`pploy.gate.app`) answers by this plan; the fast path (:mod:`pploy.gate.fastpath`) takes
only requests planned for an ``http://`` proxy route and hands the rest over; and the identity
guard admits a bearer token on its own only for a request planned for a ``pass_bearer``
route — a bearer is forwarded, never an identity for anything gate serves itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from aiohttp import web

from pploy import streamtest
from pploy.gate.routing import RequestPath, Route, Router, request_host

# One of gate's own handlers (pploy.gate.endpoints.Endpoint: called with the gate and the
# request). This module imports neither: it sits below both, as requestkeys names its Plan.
Handler = Callable[..., Awaitable[web.StreamResponse]]


class EndpointTable(Protocol):
    """gate's own endpoints by exact path (pploy.gate.endpoints.Endpoints)."""

    @property
    def public(self) -> Mapping[str, Any]: ...

    @property
    def private(self) -> Mapping[str, Any]: ...


class Serve(Enum):
    """Who answers a request."""

    PUBLIC = "public"  # a gate endpoint answered before the guards (login, JWKS, ping)
    PRIVATE = "private"  # a gate endpoint answered after the guards (metrics)
    STREAM_TEST = "stream_test"  # pploy doctor's endpoints on gate, after the guards
    PROXY = "proxy"  # forwarded to ``route``'s upstream
    SLASH_REDIRECT = "slash_redirect"  # gate's ``/prefix`` → ``/prefix/`` (of ``route``)
    STATIC = "static"  # a file from htdocs
    NOT_FOUND = "not_found"


@dataclass(frozen=True, slots=True)
class Plan:
    serve: Serve
    route: Route | None = None  # the proxy route covering the path, whoever serves it
    endpoint: Handler | None = None  # PUBLIC and PRIVATE: gate's handler

    @property
    def passes_bearer(self) -> bool:
        """A bearer token alone admits this request: it is forwarded to a ``pass_bearer``
        route, whose upstream checks the token."""
        return self.serve is Serve.PROXY and self.route is not None and self.route.conf.pass_bearer


def plan(
    router: Router,
    endpoints: EndpointTable,
    static: bool,
    host: str,
    target: RequestPath,
    *,
    websocket: bool,
) -> Plan:
    """Who serves ``target`` on ``host`` (the Host header as sent); ``static``: gate has
    htdocs."""
    path = target.path
    public = endpoints.public.get(path)
    if public is not None:
        return Plan(Serve.PUBLIC, endpoint=public)
    route = router.match(request_host(host), target)
    private = endpoints.private.get(path)
    if private is not None:
        return Plan(Serve.PRIVATE, route, private)
    if path.startswith(streamtest.GATE_PREFIX):
        # An unknown path under it is then forwarded to ``route`` by aiohttp's server.
        return Plan(Serve.STREAM_TEST, route)
    if route is not None:
        if route.needs_slash_redirect(target):
            return Plan(Serve.SLASH_REDIRECT, route)
        return Plan(Serve.PROXY, route)
    if static and not websocket:
        return Plan(Serve.STATIC)
    return Plan(Serve.NOT_FOUND)
