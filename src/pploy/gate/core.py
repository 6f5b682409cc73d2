"""The state of one running gate, built once from its configuration.

Everything request handling needs and nothing more: cookie codecs, the authenticator, the
assertion signer, the routers, the static files, the upstream connection pool, and (once
started) the login provider and the restrictions re-checker. Handlers live in their own
modules (login, guards, endpoints, app) and receive a :class:`Gate`; this module imports none
of them, so imports run one way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
from aiohttp import web
from joserfc.jwk import ECKey

from pploy.gate.accesslog import AccessLog
from pploy.gate.auth import Authenticator
from pploy.gate.config import GateConfig
from pploy.gate.headers import identity_names
from pploy.gate.metrics import Metrics
from pploy.gate.providers import Provider, make_provider
from pploy.gate.proxy import UpstreamProxy
from pploy.gate.recheck import Rechecker
from pploy.gate.routing import Router, request_host
from pploy.gate.session import CookieCodec
from pploy.gate.static import StaticFiles
from pploy.identity import AssertionSigner, load_private_key

DEFAULT_METRICS_PATH = "/_gate/metrics"
# The in-flight login (state, nonce, PKCE verifier) lives in this short-lived cookie.
STATE_COOKIE = "_gate_login"


class Gate:
    """Everything one running gate needs, built from the configuration."""

    def __init__(self, config: GateConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        keys = [config.auth.session.key, *config.auth.session.old_keys]
        self.codec = CookieCodec(keys, purpose="session")
        self.state_codec = CookieCodec(keys, purpose="login-state")
        self.auth = Authenticator(config, self.codec)
        assertion = config.auth.assertion
        key = load_private_key(config.resolve(assertion.key_file)) if assertion.key_file else None
        extra = [public_key(config.resolve(p)) for p in assertion.extra_public_keys]
        self.signer = AssertionSigner(
            lifetime=int(assertion.lifetime), key=key, extra_public_keys=extra
        )
        self.metrics = Metrics()
        self.access_log = AccessLog(config.access_log.format)
        self.router = Router(config.proxy)
        self.static = (
            StaticFiles(config.resolve(config.htdocs), never_serve=config.files_read())
            if config.htdocs
            else None
        )
        self.upstream = UpstreamProxy(config.upstream, self.metrics)
        self.metrics_path = (
            None if config.metrics.address else (config.metrics.path or DEFAULT_METRICS_PATH)
        )
        self._http: aiohttp.ClientSession | None = None
        self._provider: Provider | None = None
        self._rechecker: Rechecker | None = None
        self.gate_cookies = {config.auth.session.cookie_name, STATE_COOKIE}
        headers = config.identity_headers
        sent = [h for h in (headers.user, headers.email, headers.assertion) if h]
        self.identity_names = identity_names([*sent, *headers.strip])
        self._hosts: dict[str, bool] = {}

    def serves_host(self, host_header: str) -> bool:
        """``config.serves_host`` for a Host header, remembered per header value (the same
        few names arrive on every request; bounded, as a client may send any)."""
        known = self._hosts.get(host_header)
        if known is None:
            if len(self._hosts) >= 1024:
                self._hosts.clear()
            known = self._hosts[host_header] = self.config.serves_host(request_host(host_header))
        return known

    @property
    def provider(self) -> Provider:
        assert self._provider is not None, "gate is not started"
        return self._provider

    @property
    def rechecker(self) -> Rechecker:
        assert self._rechecker is not None, "gate is not started"
        return self._rechecker

    async def start(self, _app: web.Application | None = None) -> None:
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=15),
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": "pploy-gate"},
        )
        self._provider = make_provider(self.config, self._http)
        self._rechecker = Rechecker(self._provider, self.config.auth.info.recheck_interval)
        await self.upstream.start()

    async def stop(self, _app: web.Application | None = None) -> None:
        self.access_log.flush()
        await self.upstream.close()
        if self._http is not None:
            await self._http.close()


def public_key(path: Path) -> ECKey:
    """A published extra key: accept a private or public PEM, publish only the public part."""
    key = ECKey.import_key(path.read_bytes())
    return ECKey.import_key(key.as_dict(private=False), {"kid": key.thumbprint()})
