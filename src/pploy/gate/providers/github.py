"""GitHub and GitHub Enterprise: OAuth app login, identity and organisations from the API.

GitHub issues no ID token, so the user (login) and the primary verified email come from the
REST API with the access token. ``restrictions`` are organisation logins, checked at login
through ``/user/orgs``; the access token is then kept in the encrypted session so membership
can be re-checked during the session (``auth.info.recheck_interval``): a user removed from the
organisation loses access at the next check, not when the session expires.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode

import aiohttp

from pploy.gate.providers.base import Forbidden, LoginFailed, Provider, TokenRevoked, UserInfo

GITHUB_ENDPOINT = "https://github.com"
GITHUB_API = "https://api.github.com"
MAX_ORG_PAGES = 10
_NEXT_LINK = re.compile(r'<([^>]+)>\s*;\s*rel="next"')


class GitHubProvider(Provider):
    name = "github"

    def __init__(
        self,
        http: aiohttp.ClientSession,
        restrictions: list[str],
        *,
        client_id: str,
        client_secret: str,
        endpoint: str | None = None,
        api_endpoint: str | None = None,
        scopes: list[str] | None = None,
    ) -> None:
        super().__init__(http, restrictions)
        self.client_id = client_id
        self.client_secret = client_secret
        self.endpoint = (endpoint or GITHUB_ENDPOINT).rstrip("/")
        self.api = (api_endpoint or GITHUB_API).rstrip("/")
        default = ["read:user", "user:email"] + (["read:org"] if restrictions else [])
        self.scopes = scopes or default
        self.rechecks = bool(restrictions)

    async def authorization_url(
        self, *, state: str, nonce: str, code_challenge: str, redirect_uri: str
    ) -> str:
        params = {
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(self.scopes),
            "state": state,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
            "allow_signup": "false",
        }
        return f"{self.endpoint}/login/oauth/authorize?{urlencode(params)}"

    async def _api(self, token: str, url: str) -> tuple[Any, str | None]:
        headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
        }
        try:
            async with self.http.get(url, headers=headers, allow_redirects=False) as resp:
                data = await self.check_response(resp, f"GET {url}")
                match = _NEXT_LINK.search(resp.headers.get("Link", ""))
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise LoginFailed(f"github: GET {url} failed: {exc}", 502) from exc
        next_url = match.group(1) if match else None
        # Follow pagination only within the configured API.
        if next_url and not next_url.startswith(self.api + "/"):
            next_url = None
        return data, next_url

    async def complete(
        self, *, params: dict[str, str], verifier: str, nonce: str, redirect_uri: str
    ) -> UserInfo:
        code = params.get("code")
        if not code:
            raise LoginFailed("github: the callback has no code")
        data = {
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        }
        try:
            async with self.http.post(
                f"{self.endpoint}/login/oauth/access_token",
                data=data,
                headers={"Accept": "application/json"},
                allow_redirects=False,
            ) as resp:
                tokens = await self.check_response(resp, "code exchange")
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise LoginFailed(f"github: code exchange failed: {exc}", 502) from exc
        if not isinstance(tokens, dict) or not isinstance(tokens.get("access_token"), str):
            error = tokens.get("error_description") or tokens.get("error") if tokens else None
            raise LoginFailed(f"github: code exchange refused: {error or 'no access_token'}")
        token = tokens["access_token"]

        user, _ = await self._api(token, f"{self.api}/user")
        login = user.get("login") if isinstance(user, dict) else None
        if not isinstance(login, str) or not login:
            raise LoginFailed("github: /user has no login", 502)
        email = await self._primary_email(token)
        info = UserInfo(user=login, email=email, provider=self.name)
        if self.restrictions:
            matched = await self._allowed_orgs(token)
            if not matched:
                raise Forbidden(info, f"{login} is not a member of an allowed organisation")
            info.orgs = matched
            info.token = token
        return info

    async def _allowed_orgs(self, token: str) -> list[str]:
        wanted = {r.lower() for r in self.restrictions}
        return sorted(o for o in await self._orgs(token) if o.lower() in wanted)

    async def recheck(self, token: str) -> str | None:
        """Membership now, from the session's token: removed from every allowed organisation
        (or the token revoked) ends the session."""
        if not self.restrictions:
            return None
        try:
            matched = await self._allowed_orgs(token)
        except TokenRevoked:
            return "GitHub no longer accepts this session's token; sign in again"
        return None if matched else "no longer a member of an allowed organisation"

    async def _primary_email(self, token: str) -> str | None:
        try:
            emails, _ = await self._api(token, f"{self.api}/user/emails")
        except LoginFailed:
            return None
        if not isinstance(emails, list):
            return None
        for item in emails:
            if isinstance(item, dict) and item.get("primary") and item.get("verified") is True:
                value = item.get("email")
                return value if isinstance(value, str) else None
        return None

    async def _orgs(self, token: str) -> list[str]:
        url: str | None = f"{self.api}/user/orgs?per_page=100"
        orgs: list[str] = []
        for _ in range(MAX_ORG_PAGES):
            if url is None:
                break
            page, url = await self._api(token, url)
            if not isinstance(page, list):
                raise LoginFailed("github: /user/orgs did not return a list", 502)
            orgs += [o["login"] for o in page if isinstance(o, dict) and "login" in o]
        return orgs
