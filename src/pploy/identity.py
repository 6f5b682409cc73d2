"""The signed identity assertion that gate passes to pploy (and any upstream).

A plain ``X-Forwarded-User`` header proves nothing: anyone who can reach the upstream can send
it. So gate also sends ``X-Gate-Assertion``, a short-lived ES256 JWT (``user``, ``email``,
``iat``, ``exp``, ``aud``; ``kid`` in the header). gate signs it (:class:`AssertionSigner`) and
serves the public keys at ``/.well-known/gate/jwks.json``; the upstream verifies it
(:class:`AssertionVerifier`) with keys fetched from there or read from a configured file.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet

if TYPE_CHECKING:
    import aiohttp

ASSERTION_HEADER = "X-Gate-Assertion"
JWKS_PATH = "/.well-known/gate/jwks.json"
ALGORITHM = "ES256"
DEFAULT_AUDIENCE = "pploy"
DEFAULT_LIFETIME = 60
# Clock skew tolerated between gate and the upstream, in seconds.
LEEWAY = 5
# A token longer than this is not ours; refuse before parsing.
MAX_TOKEN_LENGTH = 8192
# Refetch the JWKS for an unknown kid at most this often.
REFETCH_INTERVAL = 10.0


class InvalidAssertion(Exception):
    """The assertion is missing, malformed, forged, expired or meant for someone else."""


@dataclass(frozen=True)
class Identity:
    """Who gate says the request comes from."""

    user: str
    email: str | None


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _unverified_header(token: str) -> dict[str, Any]:
    """Read the JOSE header only to choose a key; nothing in it is trusted."""
    try:
        header = json.loads(_b64decode(token.split(".", 1)[0]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidAssertion("assertion is not a JWT") from exc
    if not isinstance(header, dict):
        raise InvalidAssertion("assertion header is not a JSON object")
    return header


def load_private_key(path: str | Path) -> ECKey:
    """Read a PEM P-256 private key (``openssl ecparam -name prime256v1 -genkey``)."""
    key = ECKey.import_key(Path(path).read_bytes())
    if not key.is_private:
        raise ValueError(f"{path}: not a private key")
    if key.as_dict(private=False).get("crv") != "P-256":
        raise ValueError(f"{path}: key must be on curve P-256 (ES256)")
    return ECKey.import_key(key.as_dict(private=True), {"kid": key.thumbprint()})


class AssertionSigner:
    """gate's side: signs assertions and publishes the public keys.

    Without a key file, a fresh key is generated at start; verifiers refetch the JWKS when
    they meet its new ``kid``, so a restart needs no coordination. Extra public keys (the
    previous key while rotating) can be published alongside.
    """

    def __init__(
        self,
        *,
        audience: str = DEFAULT_AUDIENCE,
        lifetime: int = DEFAULT_LIFETIME,
        key: ECKey | None = None,
        extra_public_keys: list[ECKey] | None = None,
    ) -> None:
        self.audience = audience
        self.lifetime = lifetime
        self.key = key or ECKey.generate_key("P-256", auto_kid=True)
        self._published = [self.key, *(extra_public_keys or [])]
        self._cache: dict[tuple[Identity, str], tuple[str, int]] = {}

    @property
    def kid(self) -> str:
        return str(self.key.kid)

    def jwks(self) -> dict[str, Any]:
        """The public JWKS document (never any private part)."""
        keys = []
        for key in self._published:
            public = key.as_dict(private=False)
            public.update({"use": "sig", "alg": ALGORITHM})
            keys.append(public)
        return {"keys": keys}

    def token_for(
        self, identity: Identity, *, audience: str | None = None, now: float | None = None
    ) -> str:
        """A fresh-enough assertion for ``identity`` and ``audience`` (default: the signer's),
        reused for a few seconds.

        Signing costs ~0.15 ms; re-using a token while at least 3/4 of its lifetime remains
        takes that off every proxied request without letting any token live longer. The cache
        is per audience: a token minted for one upstream is never handed to another.
        """
        current = time.time() if now is None else now
        aud = self.audience if audience is None else audience
        cached = self._cache.get((identity, aud))
        if cached is not None:
            token, issued = cached
            if 0 <= current - issued <= self.lifetime / 4:
                return token
        token = self.sign(identity, audience=aud, now=current)
        if len(self._cache) >= 4096:
            self._cache.clear()
        self._cache[(identity, aud)] = (token, int(current))
        return token

    def sign(
        self, identity: Identity, *, audience: str | None = None, now: float | None = None
    ) -> str:
        issued = int(now if now is not None else time.time())
        claims: dict[str, Any] = {
            "user": identity.user,
            "email": identity.email,
            "iat": issued,
            "exp": issued + self.lifetime,
            "aud": self.audience if audience is None else audience,
        }
        header = {"alg": ALGORITHM, "kid": self.kid, "typ": "JWT"}
        return jwt.encode(header, claims, self.key, algorithms=[ALGORITHM])


class AssertionVerifier:
    """pploy's side: verifies ``X-Gate-Assertion`` and returns the :class:`Identity`.

    Keys come from gate's JWKS URL (cached ``cache_seconds``, refetched at most every
    ten seconds when an unknown ``kid`` shows up) or from a fixed public key file (PEM
    or JWKS JSON).
    """

    def __init__(
        self,
        *,
        audience: str,
        jwks_url: str | None = None,
        public_key_file: str | None = None,
        session: aiohttp.ClientSession | None = None,
        cache_seconds: int = 300,
    ) -> None:
        if not jwks_url and not public_key_file:
            raise ValueError("AssertionVerifier needs jwks_url or public_key_file")
        self.audience = audience
        self.jwks_url = jwks_url
        self.cache_seconds = cache_seconds
        self._session = session
        self._own_session = False
        self._keys: KeySet | None = None
        self._fetched_at = 0.0
        # When an unknown kid last caused a refetch (rate-limits forged or stale kids).
        self._last_refetch = -float("inf")
        self._lock = asyncio.Lock()
        if public_key_file:
            self._keys = _read_key_file(public_key_file)
            self._fetched_at = float("inf")

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def _fetch(self) -> None:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
            self._own_session = True
        assert self.jwks_url
        try:
            async with self._session.get(self.jwks_url, allow_redirects=False) as resp:
                if resp.status != 200:
                    raise InvalidAssertion(f"cannot fetch gate keys: HTTP {resp.status}")
                document = await resp.json(content_type=None)
            keys = KeySet.import_key_set(document)
        except InvalidAssertion:
            raise
        except (TimeoutError, aiohttp.ClientError, ValueError, JoseError) as exc:
            raise InvalidAssertion(f"cannot fetch gate keys from {self.jwks_url}: {exc}") from exc
        self._keys = keys
        self._fetched_at = time.monotonic()

    async def _key_for(self, kid: str) -> ECKey:
        async with self._lock:
            stale = time.monotonic() - self._fetched_at > self.cache_seconds
            if self.jwks_url and (self._keys is None or stale):
                await self._fetch()
            key = self._find(kid)
            if key is None and self.jwks_url:
                if time.monotonic() - self._last_refetch >= REFETCH_INTERVAL:
                    self._last_refetch = time.monotonic()
                    await self._fetch()
                    key = self._find(kid)
            if key is None:
                raise InvalidAssertion(f"assertion signed with unknown key {kid!r}")
            return key

    def _find(self, kid: str) -> ECKey | None:
        if self._keys is None:
            return None
        for key in self._keys.keys:
            if key.kid == kid and isinstance(key, ECKey):
                return key
        return None

    async def verify(self, token: str, *, now: float | None = None) -> Identity:
        """Check signature, audience and time; raise :class:`InvalidAssertion` otherwise."""
        if not token:
            raise InvalidAssertion(f"missing {ASSERTION_HEADER}")
        if len(token) > MAX_TOKEN_LENGTH or token.count(".") != 2:
            raise InvalidAssertion("assertion is not a compact JWT")
        header = _unverified_header(token)
        if header.get("alg") != ALGORITHM:
            raise InvalidAssertion(f"assertion algorithm must be {ALGORITHM}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidAssertion("assertion header has no kid")
        key = await self._key_for(kid)
        try:
            decoded = jwt.decode(token, key, algorithms=[ALGORITHM])
        except JoseError as exc:
            raise InvalidAssertion(f"assertion signature invalid: {exc}") from exc
        claims = decoded.claims
        current = int(now if now is not None else time.time())
        registry = jwt.JWTClaimsRegistry(
            now=current,
            leeway=LEEWAY,
            aud={"essential": True, "value": self.audience},
            exp={"essential": True},
            iat={"essential": True},
            user={"essential": True},
        )
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise InvalidAssertion(f"assertion rejected: {exc}") from exc
        if claims["iat"] > current + LEEWAY:
            raise InvalidAssertion("assertion issued in the future")
        user = claims.get("user")
        email = claims.get("email")
        if not isinstance(user, str) or not user:
            raise InvalidAssertion("assertion has no user")
        if email is not None and not isinstance(email, str):
            raise InvalidAssertion("assertion email is not a string")
        return Identity(user=user, email=email)


def _read_key_file(path: str) -> KeySet:
    data = Path(path).read_bytes()
    if data.lstrip().startswith(b"{"):
        document = json.loads(data)
        if "keys" in document:
            return KeySet.import_key_set(document)
        return KeySet([ECKey.import_key(document)])
    key = ECKey.import_key(data)
    public = ECKey.import_key(key.as_dict(private=False), {"kid": key.thumbprint()})
    return KeySet([public])
