"""Login providers, one module each; ``make_provider`` picks the configured one."""

from __future__ import annotations

import aiohttp

from pploy.gate.config import GateConfig
from pploy.gate.providers.base import Forbidden, LoginFailed, Provider, UserInfo
from pploy.gate.providers.dev import DevProvider
from pploy.gate.providers.github import GitHubProvider
from pploy.gate.providers.google import GoogleProvider
from pploy.gate.providers.oidc import OIDCProvider

__all__ = ["Forbidden", "LoginFailed", "Provider", "UserInfo", "make_provider"]


def make_provider(config: GateConfig, http: aiohttp.ClientSession) -> Provider:
    info = config.auth.info
    restrictions = config.all_restrictions
    if info.service == "dev":
        return DevProvider(http, restrictions)
    assert info.client_id and info.client_secret
    if info.service == "github":
        return GitHubProvider(
            http,
            restrictions,
            client_id=info.client_id,
            client_secret=info.client_secret,
            endpoint=info.endpoint,
            api_endpoint=info.api_endpoint,
            scopes=info.scopes or None,
        )
    oidc = GoogleProvider if info.service == "google" else OIDCProvider
    return oidc(
        http,
        restrictions,
        issuer=info.issuer,
        client_id=info.client_id,
        client_secret=info.client_secret,
        scopes=info.scopes or None,
        user_claim=info.user_claim,
    )
