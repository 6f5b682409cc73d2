"""Google: an OpenID provider with a fixed issuer; restrictions are addresses or domains."""

from __future__ import annotations

from pploy.gate.providers.oidc import OIDCProvider

GOOGLE_ISSUER = "https://accounts.google.com"


class GoogleProvider(OIDCProvider):
    name = "google"
    default_issuer = GOOGLE_ISSUER

    def extra_authorization_params(self) -> dict[str, str]:
        # A single domain restriction: let Google preselect that Workspace account. Only a
        # hint for the account chooser; the check after login is what admits the user.
        domains = [r for r in self.restrictions if "@" not in r]
        if len(domains) == 1 and len(self.restrictions) == 1:
            return {"hd": domains[0]}
        return {}
