"""Google: an OpenID provider with a fixed issuer; restrictions are addresses or domains."""

from __future__ import annotations

import aiohttp

from pploy.gate.providers.oidc import OIDCProvider

GOOGLE_ISSUER = "https://accounts.google.com"


class GoogleProvider(OIDCProvider):
    name = "google"

    def __init__(
        self,
        http: aiohttp.ClientSession,
        restrictions: list[str],
        *,
        client_id: str,
        client_secret: str,
        issuer: str | None = None,
        scopes: list[str] | None = None,
        user_claim: str | None = None,
    ) -> None:
        super().__init__(
            http,
            restrictions,
            issuer=issuer or GOOGLE_ISSUER,
            client_id=client_id,
            client_secret=client_secret,
            scopes=scopes,
            user_claim=user_claim,
        )

    def extra_authorization_params(self) -> dict[str, str]:
        # A single domain restriction: let Google preselect that Workspace account. Only a
        # hint for the account chooser; the check after login is what admits the user.
        domains = [r for r in self.restrictions if "@" not in r]
        if len(domains) == 1 and len(self.restrictions) == 1:
            return {"hd": domains[0]}
        return {}
