"""A local stand-in for GitHub (Enterprise layout: web at /, REST API at /api/v3).

It behaves like GitHub where gate depends on it: the authorize redirect with ``code`` and
``state``, the code exchange (client secret, redirect_uri and PKCE verifier checked, codes
single-use), bearer-token API calls for ``/user``, ``/user/emails`` and paginated
``/user/orgs`` with ``Link`` headers. ``login_as`` chooses who "is signed in at GitHub".
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import socket
from collections import Counter
from typing import Any

from aiohttp import web

USERS: dict[str, dict[str, Any]] = {
    "octocat": {
        "emails": [
            {"email": "old@octo.test", "primary": False, "verified": True},
            {"email": "octocat@octo.test", "primary": True, "verified": True},
        ],
        "orgs": [f"org{i}" for i in range(45)] + ["Pixiv"],  # spans pages of 20
    },
    "outsider": {
        "emails": [{"email": "outsider@else.test", "primary": True, "verified": False}],
        "orgs": ["someorg"],
    },
}
PER_PAGE = 20


class GitHubStandIn:
    def __init__(self, client_id: str, client_secret: str) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.login_as = "octocat"
        self.orgs_status = 200  # set to 5xx to play GitHub being down
        self.codes: dict[str, dict[str, str]] = {}
        self.tokens: dict[str, str] = {}
        self.calls: Counter[str] = Counter()
        self.url = ""
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/login/oauth/authorize", self.authorize)
        app.router.add_post("/login/oauth/access_token", self.access_token)
        app.router.add_get("/api/v3/user", self.user)
        app.router.add_get("/api/v3/user/emails", self.emails)
        app.router.add_get("/api/v3/user/orgs", self.orgs)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(self.runner, sock).start()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()

    async def authorize(self, request: web.Request) -> web.Response:
        q = request.query
        if q.get("client_id") != self.client_id:
            return web.Response(status=404, text="unknown client")
        code = secrets.token_hex(10)
        self.codes[code] = {
            "user": self.login_as,
            "redirect_uri": q["redirect_uri"],
            "challenge": q.get("code_challenge", ""),
            "scope": q.get("scope", ""),
        }
        location = f"{q['redirect_uri']}?code={code}&state={q.get('state', '')}"
        return web.Response(status=302, headers={"Location": location})

    async def access_token(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.calls["access_token"] += 1
        if form.get("client_id") != self.client_id or form.get("client_secret") != (
            self.client_secret
        ):
            return web.json_response({"error": "incorrect_client_credentials"})
        grant = self.codes.pop(str(form.get("code")), None)
        if grant is None or grant["redirect_uri"] != form.get("redirect_uri"):
            return web.json_response({"error": "bad_verification_code"})
        verifier = str(form.get("code_verifier", ""))
        digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        if grant["challenge"] and digest.rstrip(b"=").decode() != grant["challenge"]:
            return web.json_response({"error": "invalid_grant"})
        token = "gho_" + secrets.token_hex(16)
        self.tokens[token] = grant["user"]
        return web.json_response(
            {"access_token": token, "token_type": "bearer", "scope": grant["scope"]}
        )

    def _who(self, request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() not in ("bearer", "token") or token not in self.tokens:
            raise web.HTTPUnauthorized(text='{"message": "Bad credentials"}')
        return self.tokens[token]

    async def user(self, request: web.Request) -> web.Response:
        self.calls["user"] += 1
        login = self._who(request)
        return web.json_response({"login": login, "id": 1, "email": None})

    async def emails(self, request: web.Request) -> web.Response:
        self.calls["emails"] += 1
        return web.json_response(USERS[self._who(request)]["emails"])

    async def orgs(self, request: web.Request) -> web.Response:
        self.calls["orgs"] += 1
        if self.orgs_status != 200:
            return web.json_response({"message": "unavailable"}, status=self.orgs_status)
        orgs = USERS[self._who(request)]["orgs"]
        page = int(request.query.get("page", "1"))
        chunk = orgs[(page - 1) * PER_PAGE : page * PER_PAGE]
        headers = {}
        if page * PER_PAGE < len(orgs):
            headers["Link"] = f'<{self.url}/api/v3/user/orgs?page={page + 1}>; rel="next"'
        return web.json_response(
            [{"login": o, "id": i} for i, o in enumerate(chunk)], headers=headers
        )
