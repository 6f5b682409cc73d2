"""The dev service: a local login form, anyone may be anyone. For trying the stack only."""

from __future__ import annotations

import re

from pploy.gate.providers.base import Forbidden, LoginFailed, Provider, UserInfo, email_allowed

USER_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+\-]{0,63}$")


class DevProvider(Provider):
    name = "dev"
    redirects = False

    async def authorization_url(
        self, *, state: str, nonce: str, code_challenge: str, redirect_uri: str
    ) -> str:
        raise NotImplementedError("the dev service logs in with a form, not a redirect")

    async def complete(
        self, *, params: dict[str, str], verifier: str, nonce: str, redirect_uri: str
    ) -> UserInfo:
        raise NotImplementedError("the dev service logs in with a form, not a redirect")

    def login(self, user: str) -> UserInfo:
        """Admit ``user`` if it looks like a name and passes the restrictions."""
        name = (user or "").strip()
        if not USER_PATTERN.match(name) or name.count("@") > 1:
            raise LoginFailed("user must be 1-64 letters, digits or . _ @ + -")
        email = name if "@" in name else None
        info = UserInfo(user=name, email=email, provider=self.name)
        if self.restrictions:
            if email is None:
                if name.lower() not in {r.lower() for r in self.restrictions}:
                    raise Forbidden(info, f"{name} is not in the allowed users")
            else:
                reason = email_allowed(email, self.restrictions)
                if reason:
                    raise Forbidden(info, reason)
        return info
