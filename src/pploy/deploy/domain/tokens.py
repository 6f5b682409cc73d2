"""API tokens: what scripts and CI send as ``Authorization: Bearer <token>``.

A token is ``pploy_`` + 32 random bytes (URL-safe base64), shown once when it is made. Only its
SHA-256 is stored: with 256 bits of randomness nobody can find a token from its hash, so a slow
password hash (bcrypt, scrypt) would add milliseconds to every request and no protection;
reading pploy.db or a backup of it gives no usable token. A request's token is found by its
hash (an indexed lookup), so no stored secret is ever compared byte by byte.

A bearer request is identified by its token alone: cookies, gate's assertion and proxy headers
are ignored, and a token that is malformed, unknown, revoked or expired is a 401 — never a
fallback to another identity. That is also why bearer requests need no CSRF token: a browser
never attaches an ``Authorization`` header on its own, and one page cannot make another send it
(pploy grants no CORS), while any cookie on the request gives it nothing.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pploy.deploy.domain.errors import BadRequest, NotFound, Unauthorized
from pploy.deploy.domain.permissions import Caller
from pploy.deploy.domain.records import ApiToken, Storage, StoreUnavailable

PREFIX = "pploy_"
MAX_TOKEN_LENGTH = 200
MAX_NAME_LENGTH = 100
MAX_EXPIRES_DAYS = 3650
# last_used_at is written at most this often per token (a busy CI would write on every call).
USED_RESOLUTION_SECONDS = 60.0


def digest(token: str) -> str:
    """The stored form of ``token``: its SHA-256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class NewToken:
    """A token just made: the secret (shown once) and its record."""

    secret: str
    record: ApiToken

    def to_json(self) -> dict[str, object]:
        return {**self.record.to_json(), "token": self.secret}


class Tokens:
    """Making, listing, revoking and checking API tokens, on the store."""

    def __init__(
        self, store: Storage, on_event: Callable[[str, dict[str, Any]], None] | None = None
    ) -> None:
        self.store = store
        self.on_event = on_event  # token.created, token.revoked (the audit trail)

    def create(self, caller: Caller, name: str, expires_days: object = None) -> NewToken:
        """A new token for ``caller`` (who acts with their session: tokens do not mint tokens);
        ``expires_days`` as sent (a number, its text, absent or empty for never)."""
        if isinstance(expires_days, str):
            try:
                expires_days = float(expires_days) if expires_days else None
            except ValueError:
                raise BadRequest(f"expires_days must be a number, not {expires_days!r}") from None
        name = name.strip()
        if not name or len(name) > MAX_NAME_LENGTH or not name.isprintable():
            raise BadRequest(
                f"name must be 1 to {MAX_NAME_LENGTH} printable characters (it names the token "
                "in job records)"
            )
        expires_at = None
        if expires_days is not None:
            if (
                isinstance(expires_days, bool)
                or not isinstance(expires_days, int | float)
                or not 0 < expires_days <= MAX_EXPIRES_DAYS
            ):
                raise BadRequest(f"expires_days must be a number from 1 to {MAX_EXPIRES_DAYS}")
            expires_at = time.time() + float(expires_days) * 86400
        secret = PREFIX + secrets.token_urlsafe(32)
        record = self.store.add_token(
            user=caller.user, email=caller.email, name=name, digest=digest(secret),
            expires_at=expires_at,
        )  # fmt: skip
        self._event("token.created", record)
        return NewToken(secret, record)

    def list(self, user: str) -> list[ApiToken]:
        return self.store.list_tokens(user)

    def revoke(self, user: str, token_id: int) -> ApiToken:
        """Revoke one of ``user``'s tokens (another user's is as unknown as a missing one)."""
        record = self.store.get_token(token_id)
        if record is None or record.user != user:
            raise NotFound(f"you have no token #{token_id}")
        self.store.revoke_token(token_id)
        revoked = self.store.get_token(token_id)
        assert revoked is not None
        self._event("token.revoked", revoked)
        return revoked

    def _event(self, kind: str, record: ApiToken) -> None:
        if self.on_event is not None:  # the name and dates, never the secret or its digest
            fields = {"user": record.user, "name": record.name, "token_id": record.id}
            self.on_event(kind, {**fields, "expires_at": record.expires_at})

    def authenticate(self, secret: str, now: float | None = None) -> Caller:
        """The caller a bearer token stands for; Unauthorized when it does not stand for one."""
        current = time.time() if now is None else now
        record = self.store.token_by_hash(digest(secret))
        if record is None:
            raise Unauthorized("unknown API token")
        if record.revoked_at is not None:
            raise Unauthorized(f"API token {record.name!r} was revoked")
        if not record.usable(current):
            raise Unauthorized(f"API token {record.name!r} has expired")
        if record.last_used_at is None or current - record.last_used_at > USED_RESOLUTION_SECONDS:
            try:
                self.store.token_used(record.id, current)
            except StoreUnavailable:
                pass  # bookkeeping only: a busy database must not refuse a valid token
        return Caller(record.user, record.email, token=record.name, token_id=record.id)
