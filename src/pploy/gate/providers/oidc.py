"""Any OpenID Connect provider, found by discovery (Keycloak, Okta, Entra, Dex, Google…).

The ID token is verified, never just decoded: signature against the provider's JWKS (refetched
when a new ``kid`` appears), ``iss``, ``aud``/``azp``, ``exp``, ``iat`` and our ``nonce``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any
from urllib.parse import quote_plus, urlencode

import aiohttp
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from pploy.gate.providers.base import Forbidden, LoginFailed, Provider, UserInfo, email_allowed

# Asymmetric algorithms only: no "none", no HMAC keyed with a public value.
ALLOWED_ALGS = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}
DISCOVERY_TTL = 3600.0
JWKS_REFETCH_INTERVAL = 10.0
LEEWAY = 60


def _b64json(part: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def _verified(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


class OIDCProvider(Provider):
    name = "oidc"
    default_scopes = ["openid", "email", "profile"]
    default_issuer: str | None = None  # a provider with a fixed issuer names it here

    def __init__(
        self,
        http: aiohttp.ClientSession,
        restrictions: list[str],
        *,
        issuer: str | None,
        client_id: str,
        client_secret: str,
        scopes: list[str] | None = None,
        user_claim: str | None = None,
    ) -> None:
        super().__init__(http, restrictions)
        issuer = issuer or self.default_issuer
        if not issuer:
            raise ValueError(f"{self.name}: an issuer is required")
        self.issuer = issuer
        self.client_id = client_id
        self.client_secret = client_secret
        self.scopes = scopes or self.default_scopes
        self.user_claim = user_claim or "email"
        self._meta: dict[str, Any] | None = None
        self._meta_at = 0.0
        self._keys: KeySet | None = None
        self._keys_at = -JWKS_REFETCH_INTERVAL
        self._lock = asyncio.Lock()

    async def metadata(self) -> dict[str, Any]:
        """The discovery document, cached for an hour."""
        async with self._lock:
            if self._meta is None or time.monotonic() - self._meta_at > DISCOVERY_TTL:
                url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
                try:
                    async with self.http.get(url, allow_redirects=False) as resp:
                        meta = await self.check_response(resp, "discovery")
                except (TimeoutError, aiohttp.ClientError) as exc:
                    raise LoginFailed(
                        f"{self.name}: discovery at {url} failed: {exc}", 502
                    ) from exc
                if not isinstance(meta, dict):
                    raise LoginFailed(f"{self.name}: discovery document is not an object", 502)
                if str(meta.get("issuer", "")).rstrip("/") != self.issuer.rstrip("/"):
                    raise LoginFailed(
                        f"{self.name}: discovery issuer {meta.get('issuer')!r} is not "
                        f"the configured {self.issuer!r}",
                        502,
                    )
                for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                    if not isinstance(meta.get(key), str):
                        raise LoginFailed(f"{self.name}: discovery lacks {key}", 502)
                self._meta, self._meta_at = meta, time.monotonic()
            return self._meta

    async def authorization_url(
        self, *, state: str, nonce: str, code_challenge: str, redirect_uri: str
    ) -> str:
        meta = await self.metadata()
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(self.scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
        }
        params.update(self.extra_authorization_params())
        endpoint = str(meta["authorization_endpoint"])  # checked to be a string at discovery
        return endpoint + ("&" if "?" in endpoint else "?") + urlencode(params)

    def extra_authorization_params(self) -> dict[str, str]:
        return {}

    async def _jwks(self, *, refresh: bool) -> KeySet:
        meta = await self.metadata()
        async with self._lock:
            due = time.monotonic() - self._keys_at >= JWKS_REFETCH_INTERVAL
            if self._keys is None or (refresh and due):
                self._keys_at = time.monotonic()
                try:
                    async with self.http.get(meta["jwks_uri"], allow_redirects=False) as resp:
                        document = await self.check_response(resp, "JWKS fetch")
                    self._keys = KeySet.import_key_set(document)
                except (TimeoutError, aiohttp.ClientError, JoseError, ValueError) as exc:
                    raise LoginFailed(f"{self.name}: cannot load signing keys: {exc}", 502) from exc
            return self._keys

    async def _key(self, header: dict[str, Any]) -> Any:
        kid = header.get("kid")
        for refresh in (False, True):
            keys = await self._jwks(refresh=refresh)
            candidates = [k for k in keys.keys if kid is None or k.kid == kid]
            if kid is None and len(candidates) > 1:
                candidates = [k for k in candidates if k.get("use") in (None, "sig")]
            if kid is not None and candidates:
                return candidates[0]
            if kid is None and len(candidates) == 1:
                return candidates[0]
        raise LoginFailed(f"{self.name}: ID token signed with an unknown key {kid!r}")

    async def verify_id_token(self, id_token: str, nonce: str) -> dict[str, Any]:
        """Check the ID token's signature and claims; return the claims."""
        try:
            header = _b64json(id_token.split(".")[0])
        except (ValueError, IndexError) as exc:
            raise LoginFailed(f"{self.name}: ID token is not a JWT") from exc
        alg = header.get("alg") if isinstance(header, dict) else None
        if alg not in ALLOWED_ALGS:
            raise LoginFailed(f"{self.name}: ID token algorithm {alg!r} not accepted")
        key = await self._key(header)
        try:
            claims = jwt.decode(id_token, key, algorithms=[alg]).claims
        except JoseError as exc:
            raise LoginFailed(f"{self.name}: ID token signature invalid ({exc})") from exc
        meta = await self.metadata()
        now = time.time()
        if claims.get("iss") != meta["issuer"]:
            raise LoginFailed(f"{self.name}: ID token issuer {claims.get('iss')!r} is wrong")
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if self.client_id not in audiences:
            raise LoginFailed(f"{self.name}: ID token is for another client")
        if len(audiences) > 1 and claims.get("azp") != self.client_id:
            raise LoginFailed(f"{self.name}: ID token azp is not this client")
        exp, iat = claims.get("exp"), claims.get("iat")
        if not isinstance(exp, int | float) or exp + LEEWAY < now:
            raise LoginFailed(f"{self.name}: ID token expired")
        if not isinstance(iat, int | float) or iat - LEEWAY > now:
            raise LoginFailed(f"{self.name}: ID token issued in the future")
        if not nonce or claims.get("nonce") != nonce:
            raise LoginFailed(f"{self.name}: ID token nonce does not match this login")
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise LoginFailed(f"{self.name}: ID token has no subject")
        return claims

    async def _exchange(self, code: str, verifier: str, redirect_uri: str) -> dict[str, Any]:
        meta = await self.metadata()
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        }
        methods = meta.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        headers = {"Accept": "application/json"}
        if "client_secret_basic" in methods:
            pair = f"{_form(self.client_id)}:{_form(self.client_secret)}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        else:
            data.update(client_id=self.client_id, client_secret=self.client_secret)
        try:
            async with self.http.post(
                meta["token_endpoint"],
                data=data,
                headers=headers,
                allow_redirects=False,
            ) as resp:
                tokens = await self.check_response(resp, "code exchange")
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise LoginFailed(f"{self.name}: code exchange failed: {exc}", 502) from exc
        if not isinstance(tokens, dict) or not isinstance(tokens.get("id_token"), str):
            raise LoginFailed(f"{self.name}: the token response has no id_token", 502)
        return tokens

    async def _userinfo(self, access_token: str, sub: str) -> dict[str, Any]:
        meta = await self.metadata()
        endpoint = meta.get("userinfo_endpoint")
        if not endpoint or not access_token:
            return {}
        try:
            async with self.http.get(
                endpoint,
                headers={"Authorization": f"Bearer {access_token}"},
                allow_redirects=False,
            ) as resp:
                info = await self.check_response(resp, "userinfo")
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise LoginFailed(f"{self.name}: userinfo failed: {exc}", 502) from exc
        if not isinstance(info, dict) or info.get("sub") != sub:
            raise LoginFailed(f"{self.name}: userinfo is about another subject", 502)
        return info

    async def complete(
        self, *, params: dict[str, str], verifier: str, nonce: str, redirect_uri: str
    ) -> UserInfo:
        meta = await self.metadata()
        # RFC 9207: a provider that names itself in the response must be the one we asked.
        if "iss" in params and params["iss"] != meta["issuer"]:
            raise LoginFailed(f"{self.name}: the response comes from another issuer")
        code = params.get("code")
        if not code:
            raise LoginFailed(f"{self.name}: the callback has no code")
        tokens = await self._exchange(code, verifier, redirect_uri)
        claims = await self.verify_id_token(tokens["id_token"], nonce)
        if "email" not in claims and "email" in self.scopes:
            extra = await self._userinfo(str(tokens.get("access_token") or ""), claims["sub"])
            claims = {**extra, **claims}
        email = claims.get("email")
        if not isinstance(email, str) or not email:
            email = None
        if email is not None and not _verified(claims.get("email_verified")):
            # Only an address the provider says it verified is one: anyone can type any
            # address into an account at some providers (the claim absent counts as false).
            if self.restrictions:
                info = UserInfo(user=email, email=email, provider=self.name)
                raise Forbidden(info, f"the provider has not verified the address {email}")
            email = None
        user = email if self.user_claim == "email" else claims.get(self.user_claim)
        if not isinstance(user, str) or not user:
            user = email or claims["sub"]
        info = UserInfo(user=user, email=email, provider=self.name)
        self.check_restrictions(info)
        return info

    def check_restrictions(self, info: UserInfo) -> None:
        reason = email_allowed(info.email, self.restrictions)
        if reason:
            raise Forbidden(info, reason)


def _form(value: str) -> str:
    """RFC 6749 §2.3.1: client credentials are form-encoded before Basic auth."""
    return quote_plus(value)
