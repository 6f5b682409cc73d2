"""Who is asking: session cookie, htpasswd (bcrypt) Basic auth, or an allowed network.

Any one of them admits a request (nginx's ``satisfy any`` of the original setup). The client
address is the socket peer, unless the peer is a configured trusted proxy, in which case the
rightmost untrusted ``X-Forwarded-For`` entry is taken; otherwise anyone could claim to be in
an allowed network by sending the header.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import time
from dataclasses import dataclass
from pathlib import Path

import bcrypt

from pploy import log
from pploy.gate.config import GateConfig
from pploy.gate.headers import cookie_value
from pploy.gate.incoming import Incoming
from pploy.gate.session import CookieCodec, Session
from pploy.networks import address_in, parse_networks

BASIC_CACHE_SECONDS = 300.0
BASIC_CACHE_SIZE = 1024
# Opened session cookies, by their exact value: a browser sends the same cookie on every
# request, and opening it (base64, AES-GCM, JSON, checks) was a tenth of a small proxied
# request's cost. Expiry and policy are still checked on every request.
SESSION_CACHE_SIZE = 4096


@dataclass(frozen=True)
class Principal:
    """An admitted request: a user (session or htpasswd) or just an allowed address."""

    user: str | None
    email: str | None
    via: str  # "session", "htpasswd", "network" or "bearer" (passed on for the upstream)
    session: Session | None = None


def policy_fingerprint(config: GateConfig) -> str:
    """Changes when the login rules change, so old sessions stop being accepted."""
    text = "|".join([config.auth.info.service, *sorted(r.lower() for r in config.all_restrictions)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Htpasswd:
    """An Apache-style ``user:hash`` file with bcrypt hashes, reloaded when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime = -1.0
        self._users: dict[str, bytes] = {}

    def _load(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            self._users = {}
            return
        if mtime == self._mtime:
            return
        users: dict[str, bytes] = {}
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, hashed = line.partition(":")
            if not sep or not hashed.startswith(("$2y$", "$2b$", "$2a$")):
                log.event(
                    "gate.htpasswd.skip",
                    level="warning",
                    file=str(self.path),
                    line=number,
                    reason="only bcrypt hashes are accepted (htpasswd -B)",
                )
                continue
            users[name] = hashed.replace("$2y$", "$2b$", 1).encode()
        self._users, self._mtime = users, mtime

    def hash_for(self, user: str) -> bytes | None:
        self._load()
        return self._users.get(user)


class Authenticator:
    def __init__(self, config: GateConfig, codec: CookieCodec) -> None:
        self.config = config
        self.codec = codec
        self.cookie_name = config.auth.session.cookie_name
        self.allowed = parse_networks(config.auth.allow_networks)
        self.trusted = parse_networks(config.trusted_proxies)
        self.policy = policy_fingerprint(config)
        self.htpasswd = (
            Htpasswd(config.resolve(config.auth.htpasswd)) if config.auth.htpasswd else None
        )
        self._basic_ok: dict[bytes, float] = {}
        self._sessions: dict[str, Session] = {}
        self._basic_key = hashlib.sha256(config.auth.session.key.encode()).digest()
        self._trusted_peers: dict[str, bool] = {}

    # --- client facts -------------------------------------------------------------------

    def _is_trusted(self, address: str | None) -> bool:
        """Whether a peer address is a trusted proxy; remembered, as gate asks several times
        per request about the same few peers (bounded: peers are many on a public address)."""
        if not address or not self.trusted:
            return False
        known = self._trusted_peers.get(address)
        if known is None:
            if len(self._trusted_peers) >= 4096:
                self._trusted_peers.clear()
            known = self._trusted_peers[address] = address_in(address, self.trusted)
        return known

    def client_ip(self, request: Incoming) -> str:
        peer = request.remote or ""
        if not self._is_trusted(peer):
            return peer
        chain = [
            p.strip()
            for h in request.headers.getall("X-Forwarded-For", [])
            for p in h.split(",")
            if p.strip()
        ]
        for hop in reversed(chain):
            if not address_in(hop, self.trusted):
                return hop
        return chain[0] if chain else peer

    def client_proto(self, request: Incoming) -> str:
        if self._is_trusted(request.remote):
            proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
            if proto in ("http", "https"):
                return proto
        return "https" if request.secure else "http"

    def own_origin(self, request: Incoming) -> str:
        """The origin the client is on: scheme (as nginx saw it, if trusted) and Host. A
        browser's ``Origin`` must equal it, scheme included, to count as same-origin."""
        return f"{self.client_proto(request)}://{(request.host or '').lower()}"

    def from_trusted_proxy(self, request: Incoming) -> bool:
        return self._is_trusted(request.remote)

    # --- credentials --------------------------------------------------------------------

    def cookie(self, request: Incoming) -> str:
        """The session cookie's value as sent ("" when there is none)."""
        return cookie_value(request.headers, self.cookie_name) or ""

    def session(self, request: Incoming, now: float) -> Session | None:
        value = self.cookie(request)
        if not value:
            return None
        session = self._sessions.get(value)
        if session is None:
            payload = self.codec.open(self.cookie_name, value)
            if payload is None:
                return None
            session = Session.from_payload(payload)
            if session is None:
                return None
            if len(self._sessions) >= SESSION_CACHE_SIZE:
                self._sessions = {k: s for k, s in self._sessions.items() if s.valid(now)}
                if len(self._sessions) >= SESSION_CACHE_SIZE:
                    self._sessions.clear()
            self._sessions[value] = session  # only cookies gate sealed get here
        if not session.valid(now) or session.policy != self.policy:
            # Never kept past the cookie's own expiry (nor served from the cache after it).
            self._sessions.pop(value, None)
            return None
        return session

    def forget(self, cookie: str | None) -> None:
        """Drop an opened session from the cache (logout, or the session ended)."""
        if cookie:
            self._sessions.pop(cookie, None)

    async def basic(self, request: Incoming) -> str | None:
        """The htpasswd user named by a valid ``Authorization: Basic`` header, if any."""
        if self.htpasswd is None:
            return None
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic" or not value or len(value) > 1024:
            return None
        try:
            user, sep, password = (
                base64.b64decode(value.strip(), validate=True).decode().partition(":")
            )
        except (binascii.Error, UnicodeDecodeError):
            return None
        if not sep:
            return None
        hashed = self.htpasswd.hash_for(user)
        if hashed is None:
            return None
        # bcrypt is slow on purpose; remember recent successes (keyed, never the password).
        cache_key = hmac.new(self._basic_key, header.encode() + b"\0" + hashed, "sha256").digest()
        now = time.monotonic()
        if self._basic_ok.get(cache_key, 0.0) > now:
            return user
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(None, bcrypt.checkpw, password.encode(), hashed)
        if not ok:
            return None
        if len(self._basic_ok) >= BASIC_CACHE_SIZE:
            self._basic_ok = {k: v for k, v in self._basic_ok.items() if v > now}
            if len(self._basic_ok) >= BASIC_CACHE_SIZE:
                self._basic_ok.clear()
        self._basic_ok[cache_key] = now + BASIC_CACHE_SECONDS
        return user

    async def authenticate(self, request: Incoming, now: float) -> Principal | None:
        session = self.session(request, now)
        if session is not None:
            return Principal(session.user, session.email, "session", session)
        user = await self.basic(request)
        if user is not None:
            return Principal(user, None, "htpasswd")
        if address_in(self.client_ip(request), self.allowed):
            return Principal(None, None, "network")
        return None
