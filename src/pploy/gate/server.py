"""Running gate: listeners (main, optional metrics), TLS, and the start-up safety checks."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass, field

from aiohttp import web
from joserfc.jwk import ECKey

from pploy import log
from pploy.gate.app import build_app, build_metrics_app
from pploy.gate.config import GateConfig, check_files, is_loopback_address, parse_address, warnings
from pploy.gate.core import Gate

# How long a connection may sit without a complete request: idle keep-alive connections and
# clients that send half a request and stall (slowloris). aiohttp's AppRunner default is an
# hour; a request being handled or streamed is never cut by it.
IDLE_CONNECTION_TIMEOUT = 75.0
# On stop, how long requests in progress get to finish before they are cancelled. Streams and
# WebSockets never finish by themselves: without a bound, a restart waited a minute for them.
SHUTDOWN_GRACE = 3.0


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
            keepalive_timeout=IDLE_CONNECTION_TIMEOUT,
            shutdown_timeout=SHUTDOWN_GRACE,
        )
        await runner.setup()
        self.runners.append(runner)
        context = _ssl_context(self.config)
        if sock is not None:
            site: web.BaseSite = web.SockSite(runner, sock, ssl_context=context)
        else:
            listen_host, port = self.config.listen
            site = web.TCPSite(
                runner, listen_host, port, ssl_context=context, reuse_port=self.reuse_port or None
            )
        await site.start()
        self.urls.append(site.name)
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
        for runner in reversed(self.runners):
            await runner.cleanup()
        self.runners.clear()
