"""gate's own endpoints, by exact path: the public ones (health, public keys, the login flow)
answered before authentication, the private ones (metrics) only after every guard."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from pploy.gate import login, logout
from pploy.gate.core import Gate
from pploy.identity import JWKS_PATH

PING_PATH = "/ping"

Endpoint = Callable[[Gate, web.Request], Awaitable[web.StreamResponse]]


async def ping(_gate: Gate, _request: web.Request) -> web.StreamResponse:
    return web.Response(text="pong\n", headers={"Cache-Control": "no-store"})


async def jwks(gate: Gate, _request: web.Request) -> web.StreamResponse:
    """The public keys of X-Gate-Assertion, for upstreams to verify it."""
    return web.json_response(gate.signer.jwks(), headers={"Cache-Control": "public, max-age=300"})


async def metrics(gate: Gate, _request: web.Request) -> web.StreamResponse:
    return web.Response(text=gate.metrics.render(), content_type="text/plain", charset="utf-8")


class Endpoints:
    """Which of gate's own handlers answers a path, and whether it needs the guards first."""

    def __init__(self, gate: Gate) -> None:
        paths = gate.config.paths
        self.public: dict[str, Endpoint] = {
            PING_PATH: ping,
            JWKS_PATH: jwks,
            paths.login: login.handle_login,
            paths.callback: login.handle_callback,
            paths.logout: logout.handle_logout,
            paths.error: login.handle_error,
        }
        self.private: dict[str, Endpoint] = {}
        if gate.metrics_path:
            self.private[gate.metrics_path] = metrics
