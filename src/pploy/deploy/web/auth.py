"""Who is making a request, in each of pploy's three modes.

- standalone: the user picks a name from ``users``; it is remembered in the ``user`` cookie
  (as the original pploy did). Meant for a trusted network or behind gate/nginx.
- proxy: a header names the user, believed only from ``trusted_proxies`` addresses.
- gate: gate's signed ``X-Gate-Assertion`` is verified; nothing else is believed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

from aiohttp import web

from pploy.deploy.config import AuthConfig
from pploy.deploy.domain import names
from pploy.deploy.domain.errors import Unauthorized
from pploy.deploy.web.requestkeys import EMAIL
from pploy.networks import address_in, parse_networks

if TYPE_CHECKING:
    from pploy.deploy.directory import Directory
    from pploy.identity import AssertionVerifier

USER_COOKIE = "user"
GO_PPLOY_COOKIE = "pploy_user"  # go-pploy's: read (never written) so its users stay signed in
ASSERTION_HEADER = "X-Gate-Assertion"


def cookie_value(name: str) -> str:
    """``name`` as the ``user`` cookie holds it: percent-encoded UTF-8, so "Taro Yamada" or
    "山田" need no cookie quoting (which browsers and servers read differently)."""
    return quote(name, safe="@.+-_")


class Authenticator:
    def __init__(
        self, config: AuthConfig, users: list[str], directory: Directory | None = None
    ) -> None:
        self.config = config
        self.mode = config.mode
        self.users = list(users)
        self.directory = directory  # standalone mode: its people are deployers too
        self.networks = parse_networks(config.trusted_proxies)
        self.verifier: AssertionVerifier | None = None
        if self.mode == "gate":
            from pploy.identity import AssertionVerifier

            self.verifier = AssertionVerifier(
                audience=config.gate_audience,
                jwks_url=config.gate_jwks_url,
                public_key_file=config.gate_public_key_file,
            )

    @property
    def picks_name(self) -> bool:
        """True when users choose their own name (standalone mode)."""
        return self.mode == "standalone"

    def knows(self, name: str) -> bool:
        """standalone mode: ``name`` is a configured user or one the directory lists."""
        return name in self.users or (self.directory is not None and self.directory.knows(name))

    def deployers(self) -> list[str]:
        """standalone mode: the names to pick from: ``users``, then the directory's others."""
        extra = self.directory.users if self.directory is not None else ()
        return self.users + sorted(set(extra) - set(self.users))

    def trusted_peer(self, request: web.Request) -> bool:
        return address_in(request.remote, self.networks)

    async def identify(self, request: web.Request) -> str | None:
        """The user's name, None when the request names nobody; Unauthorized when it names
        someone pploy must not believe."""
        if self.mode == "standalone":
            raw = request.cookies.get(USER_COOKIE)
            if raw is None:  # an empty `user` (signed out) hides go-pploy's cookie too
                raw = request.cookies.get(GO_PPLOY_COOKIE)
            name = unquote(raw) if raw else None
            if name and self.knows(name):
                return name
            return None
        if self.mode == "proxy":
            value = self._one_header(request, self.config.header)
            if not value:
                return None
            if not self.trusted_peer(request):
                raise Unauthorized(
                    f"{self.config.header} is only accepted from trusted proxies "
                    f"(auth.trusted_proxies); {request.remote} is not one"
                )
            return self._valid_name(value, self.config.header)
        token = self._one_header(request, ASSERTION_HEADER)
        if not token:
            return None
        assert self.verifier is not None
        from pploy.identity import InvalidAssertion

        try:
            identity = await self.verifier.verify(token)
        except InvalidAssertion as exc:
            raise Unauthorized(f"invalid {ASSERTION_HEADER}: {exc}") from exc
        if identity.email:
            request[EMAIL] = identity.email  # for permission rules naming emails or @domains
        return self._valid_name(identity.user, ASSERTION_HEADER)

    @staticmethod
    def _one_header(request: web.Request, name: str) -> str | None:
        """The header's value; Unauthorized when it comes more than once (proxies that add
        the header without removing the client's would otherwise let the client's win)."""
        values = request.headers.getall(name, [])
        if len(values) > 1:
            raise Unauthorized(f"{name} was sent {len(values)} times; a request must name one user")
        return values[0] if values else None

    @staticmethod
    def _valid_name(value: str, source: str) -> str:
        """The same rule for every mode: a name with control characters, spaces or other
        odd characters would be written to the audit trail as if it were a person."""
        try:
            return names.user_name(value)
        except names.InvalidName as exc:
            raise Unauthorized(f"{exc} (from {source})") from exc

    async def close(self) -> None:
        if self.verifier is not None:
            await self.verifier.close()
