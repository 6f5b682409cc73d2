"""Running gate: listeners (main, optional metrics), TLS, and the start-up safety checks."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web
from joserfc.jwk import ECKey

from pploy import log
from pploy.gate.app import ENDPOINTS_KEY, build_app, build_metrics_app
from pploy.gate.config import GateConfig, check_files, is_loopback_address, parse_address, warnings
from pploy.gate.core import Gate
from pploy.gate.fastpath import FastPath

# The metrics listener's idle connections (the main listener's: `head_timeout`, the same by
# default). aiohttp's AppRunner default is an hour.
IDLE_CONNECTION_TIMEOUT = 75.0
# On stop, how long requests in progress get to finish before they are cancelled. Streams and
# WebSockets never finish by themselves: without a bound, a restart waited a minute for them.
SHUTDOWN_GRACE = 3.0


# Pending connections the kernel queues for gate (aiohttp's default).
BACKLOG = 128


def _url(listener: asyncio.Server, *, secure: bool) -> str:
    host, port = listener.sockets[0].getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    return f"{'https' if secure else 'http'}://{host}:{port}"


class StartupRefused(Exception):
    """gate will not start with this configuration (the message says why)."""


def startup_problems(config: GateConfig, host_override: str | None = None) -> list[str]:
    """Problems that stop gate from starting (also reported by --check-config)."""
    problems = check_files(config)
    host = host_override if host_override is not None else config.listen[0]
    info = config.auth.info
    if info.service == "dev" and not is_loopback_address(host) and not info.force:
        problems.append(
            f"address: the dev service lets anyone log in as anyone, and {config.address!r} is "
            "not a loopback address; listen on 127.0.0.1 or set auth.info.force: true"
        )
    return problems


def _ssl_context(config: GateConfig) -> ssl.SSLContext | None:
    if not config.ssl.enabled:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(
        str(config.resolve(config.ssl.cert or "")), str(config.resolve(config.ssl.key or ""))
    )
    return context


@dataclass
class GateServer:
    """gate running in this event loop; used by the CLI, the tests and the benchmark."""

    config: GateConfig
    gate: Gate | None = None
    runners: list[web.AppRunner] = field(default_factory=list)
    listeners: list[asyncio.Server] = field(default_factory=list)
    fast_path: FastPath | None = None
    urls: list[str] = field(default_factory=list)
    # Several worker processes listen on the same address (see pploy.gate.workers).
    reuse_port: bool = False
    # The assertion signing key when the config names no key file (shared by workers).
    assertion_key: ECKey | None = None

    async def start(self, sock: socket.socket | None = None) -> None:
        host = sock.getsockname()[0] if sock is not None else self.config.listen[0]
        problems = startup_problems(self.config, host_override=host)
        if problems:
            raise StartupRefused("\n".join(problems))
        for warning in warnings(self.config):
            log.event("gate.config.warning", level="warning", message=warning)
        if self.config.auth.info.service == "dev" and not is_loopback_address(host):
            log.event(
                "gate.dev.exposed",
                level="error",
                message="DEV LOGIN ON A NON-LOOPBACK ADDRESS: ANYONE CAN LOG IN AS ANYONE",
            )
        self.gate = Gate(self.config, assertion_key=self.assertion_key)
        app = build_app(self.gate)
        # handler_cancellation: a client that leaves cancels its handler, and with it the
        # upstream request, instead of the upstream running on until its next write.
        runner = web.AppRunner(
            app,
            handler_cancellation=True,
            access_log=None,
            # A request being handled or streamed is never cut by it.
            keepalive_timeout=self.config.head_timeout,
            shutdown_timeout=SHUTDOWN_GRACE,
        )
        await runner.setup()
        self.runners.append(runner)
        assert runner.server is not None
        factory: Callable[[], asyncio.Protocol] = runner.server
        if self.config.fast_path:
            self.fast_path = FastPath(
                self.gate, app[ENDPOINTS_KEY], runner.server, self.config.head_timeout
            )
            self.fast_path.start()
            factory = self.fast_path.protocol
        context = _ssl_context(self.config)
        loop = asyncio.get_running_loop()
        if sock is not None:
            listener = await loop.create_server(factory, sock=sock, ssl=context, backlog=BACKLOG)
        else:
            listen_host, port = self.config.listen
            listener = await loop.create_server(
                factory,
                listen_host,
                port,
                ssl=context,
                backlog=BACKLOG,
                reuse_port=self.reuse_port or None,
            )
        self.listeners.append(listener)
        self.urls.append(_url(listener, secure=context is not None))
        if self.config.metrics.address:
            mhost, mport = parse_address(self.config.metrics.address)
            mrunner = web.AppRunner(
                build_metrics_app(self.gate),
                access_log=None,
                keepalive_timeout=IDLE_CONNECTION_TIMEOUT,
                shutdown_timeout=SHUTDOWN_GRACE,
            )
            await mrunner.setup()
            self.runners.append(mrunner)
            msite = web.TCPSite(mrunner, mhost, mport, reuse_port=self.reuse_port or None)
            await msite.start()
            self.urls.append(msite.name)
        log.event(
            "gate.start",
            address=self.urls[0],
            service=self.config.auth.info.service,
            routes=len(self.config.proxy),
            metrics=self.urls[1] if len(self.urls) > 1 else self.gate.metrics_path,
        )

    async def stop(self) -> None:
        for listener in self.listeners:
            listener.close()
        self.listeners.clear()
        # Both front ends give their requests in progress the same grace, at the same time.
        await asyncio.gather(
            *([self.fast_path.close(SHUTDOWN_GRACE)] if self.fast_path is not None else []),
            self._cleanup_runners(),
        )
        self.fast_path = None

    async def _cleanup_runners(self) -> None:
        for runner in reversed(self.runners):
            await runner.cleanup()
        self.runners.clear()
