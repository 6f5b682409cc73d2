"""Encrypted, authenticated cookies: the login session and the in-flight login state.

AES-256-GCM with a key derived (HKDF-SHA256) from the configured secret, so the browser can
neither read nor alter what is inside. The cookie name is bound as associated data, so a value
cannot be moved from one cookie to another. Several keys are accepted for reading so the
secret can be rotated: the first key encrypts, every key decrypts.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# Browsers keep at most ~4096 bytes per cookie; anything longer is not ours.
MAX_COOKIE_LENGTH = 4096
_PREFIX = "g1."
_NONCE = 12


def _derive(secret: str, purpose: bytes) -> AESGCM:
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"pploy-gate-cookie-v1", info=purpose
    ).derive(secret.encode("utf-8"))
    return AESGCM(key)


class CookieCodec:
    """Seal and open small JSON payloads; opening never raises, it returns None."""

    def __init__(self, secrets: Sequence[str], purpose: str = "session") -> None:
        if not secrets:
            raise ValueError("at least one key is required")
        self._ciphers = [_derive(s, purpose.encode()) for s in secrets]

    def seal(self, name: str, payload: dict[str, Any]) -> str:
        data = json.dumps(payload, separators=(",", ":")).encode()
        nonce = os.urandom(_NONCE)
        sealed = self._ciphers[0].encrypt(nonce, data, name.encode())
        return _PREFIX + base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode()

    def open(self, name: str, value: str | None) -> dict[str, Any] | None:
        if not value or len(value) > MAX_COOKIE_LENGTH or not value.startswith(_PREFIX):
            return None
        body = value[len(_PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (ValueError, TypeError):
            return None
        if len(raw) < _NONCE + 16:
            return None
        nonce, sealed = raw[:_NONCE], raw[_NONCE:]
        for cipher in self._ciphers:
            try:
                data = cipher.decrypt(nonce, sealed, name.encode())
            except InvalidTag:
                continue
            try:
                payload = json.loads(data)
            except ValueError:
                return None
            return payload if isinstance(payload, dict) else None
        return None


@dataclass
class Session:
    """A logged-in user, as carried in the session cookie."""

    user: str
    email: str | None
    provider: str
    issued: float
    expires: float
    # GitHub organisations that matched the restrictions at login (cached, not re-fetched).
    orgs: list[str] = field(default_factory=list)
    # A fingerprint of the restrictions in force at login: changing them logs everyone out.
    policy: str = ""
    # The provider's access token, kept (encrypted in the cookie) only where restrictions
    # are re-checked with the provider during the session (GitHub organisations).
    token: str | None = None

    def to_payload(self) -> dict[str, Any]:
        return {
            "u": self.user,
            "e": self.email,
            "p": self.provider,
            "iat": int(self.issued),
            "exp": int(self.expires),
            "o": self.orgs,
            "pol": self.policy,
            **({"t": self.token} if self.token else {}),
        }

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> Session | None:
        try:
            user, email = data["u"], data.get("e")
            issued, expires = float(data["iat"]), float(data["exp"])
            orgs = data.get("o") or []
            token = data.get("t")
        except (KeyError, TypeError, ValueError):
            return None
        if not isinstance(user, str) or not user or not (email is None or isinstance(email, str)):
            return None
        if not isinstance(orgs, list) or not all(isinstance(o, str) for o in orgs):
            return None
        if token is not None and not isinstance(token, str):
            return None
        return cls(
            user=user,
            email=email,
            provider=str(data.get("p", "")),
            issued=issued,
            expires=expires,
            orgs=orgs,
            policy=str(data.get("pol", "")),
            token=token,
        )

    def valid(self, now: float | None = None) -> bool:
        current = time.time() if now is None else now
        # A cookie issued in the future (beyond small skew) is not one we made.
        return self.issued - 60 <= current < self.expires
