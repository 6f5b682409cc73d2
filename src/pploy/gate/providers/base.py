"""What every login provider does: build the authorization URL, turn a code into a user."""

from __future__ import annotations

import base64
import hashlib
import secrets
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass
class UserInfo:
    """A user the provider vouches for."""

    user: str
    email: str | None
    provider: str
    orgs: list[str] = field(default_factory=list)
    # Kept in the (encrypted) session only by providers that re-check restrictions later.
    token: str | None = None


class LoginFailed(Exception):
    """The login did not complete (bad state, bad token, provider error); shown as 400/502."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class TokenRevoked(LoginFailed):
    """The provider no longer accepts the access token kept in the session (HTTP 401)."""


class Forbidden(Exception):
    """The provider authenticated the user, but the restrictions do not admit them."""

    def __init__(self, info: UserInfo, reason: str) -> None:
        super().__init__(reason)
        self.info = info
        self.reason = reason


def new_token(nbytes: int = 24) -> str:
    return secrets.token_urlsafe(nbytes)


def pkce_challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def email_allowed(email: str | None, restrictions: list[str]) -> str | None:
    """None if admitted, else why not. ``x@y`` is an exact address, anything else a domain.

    The domain is compared exactly with what follows the ``@``; an address with more than one
    ``@`` is refused outright, so ``a@evil.com@example.com`` is not in ``example.com``.
    """
    if not restrictions:
        return None
    if not email:
        return "the provider gave no email address to check against the restrictions"
    address = email.strip().lower()
    if address.count("@") != 1 or address.startswith("@") or address.endswith("@"):
        return f"{email!r} is not a plain email address"
    domain = address.rsplit("@", 1)[1]
    for rule in restrictions:
        wanted = rule.strip().lower()
        if "@" in wanted:
            if address == wanted:
                return None
        elif domain == wanted:
            return None
    return f"{email} is neither an allowed address nor in an allowed domain"


class Provider(ABC):
    """One login service. ``redirects`` is False for the dev form, which needs no round trip."""

    name: str = ""
    redirects: bool = True
    # Whether admission can change during a session and is re-checked from the stored token.
    rechecks: bool = False

    def __init__(self, http: aiohttp.ClientSession, restrictions: list[str]) -> None:
        self.http = http
        self.restrictions = restrictions

    @abstractmethod
    async def authorization_url(
        self, *, state: str, nonce: str, code_challenge: str, redirect_uri: str
    ) -> str:
        """Where to send the browser to log in."""

    @abstractmethod
    async def complete(
        self, *, params: dict[str, str], verifier: str, nonce: str, redirect_uri: str
    ) -> UserInfo:
        """Exchange the callback's code for a verified user; raise LoginFailed/Forbidden."""

    async def recheck(self, token: str) -> str | None:
        """Whether a session's user is still admitted: None if so, else why not. Raises
        LoginFailed when the provider cannot answer now (the session is kept, not ended)."""
        return None

    async def check_response(self, resp: aiohttp.ClientResponse, what: str) -> Any:
        """Decode a provider's JSON answer or fail with a message naming the step."""
        if resp.status == 401:
            raise TokenRevoked(f"{self.name}: {what}: the access token is no longer valid")
        if resp.status >= 400:
            text = (await resp.text())[:200]
            raise LoginFailed(f"{self.name}: {what} failed: HTTP {resp.status} {text}", 502)
        try:
            return await resp.json(content_type=None)
        except ValueError as exc:
            raise LoginFailed(f"{self.name}: {what} returned invalid JSON", 502) from exc
