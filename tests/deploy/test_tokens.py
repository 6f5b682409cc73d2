"""API tokens (issue 13) through a real pploy on loopback: made with a session, shown once,
stored hashed, identifying their owner on every route, never combinable with cookies, and
refused with 401 JSON when garbage, revoked or expired."""

from __future__ import annotations

import hashlib
import re
import sqlite3
from pathlib import Path

import aiohttp
from yarl import URL

from pploy.deploy.storage import migrations
from pploy.deploy.storage.sqlite import Store
from tests.deploy.support import make_remote, start_pploy


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def call(session, method, url, token=None, **kwargs):  # type: ignore[no-untyped-def]
    headers = {**(bearer(token) if token else {}), **kwargs.pop("headers", {})}
    async with session.request(method, url, headers=headers, allow_redirects=False, **kwargs) as r:
        text = await r.text()
        return r.status, r.headers, text


async def test_token_lifecycle_and_identity(tmp_path: Path) -> None:
    pploy = await start_pploy(tmp_path / "work")
    remote = make_remote(tmp_path)
    bare = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())  # no cookies at all
    try:
        status, body = await pploy.api("POST", "/api/tokens", "alice", {"name": "ci"})
        assert status == 201, body
        token, token_id = body["token"], body["id"]
        assert token.startswith("pploy_") and len(token) > 40
        assert body["name"] == "ci" and body["user"] == "alice" and body["expires_at"] is None
        # Listed without the secret or its hash.
        status, listed = await pploy.api("GET", "/api/tokens", "alice")
        assert status == 200 and [t["name"] for t in listed["tokens"]] == ["ci"]
        assert token not in str(listed) and "digest" not in listed["tokens"][0]
        assert (await pploy.api("GET", "/api/tokens", "bob"))[1] == {"tokens": []}

        # The token alone identifies alice on every kind of route.
        status, _, text = await call(bare, "GET", pploy.url("/api/status"), token)
        assert status == 200 and '"user": "alice"' in text
        status, _, text = await call(
            bare, "POST", pploy.url("/api/projects"), token, json={"url": str(remote)}
        )
        assert status == 201, text
        status, _, text = await call(
            bare, "POST", pploy.url("/api/projects/testploy/lock"), token,
            json={"operation": "gain"},
        )  # fmt: skip
        assert status == 200 and '"user": "alice"' in text
        status, _, text = await call(
            bare, "POST", pploy.url("/api/projects/testploy/deploy"), token, json={"env": "staging"}
        )
        assert status == 202, text
        job = int(re.search(r'"id": (\d+)', text).group(1))  # type: ignore[union-attr]
        record = await pploy.wait_job(job)
        assert (record["user"], record["token"], record["status"]) == ("alice", "ci", "succeeded")
        # The one-shot endpoint, with a form body: a bearer request needs no CSRF token.
        status, headers, text = await call(
            bare, "POST", pploy.url("/testploy/deploy"), token, data={"env": "staging"}
        )
        assert status == 200 and "deployed staging" in text, text
        one_shot = pploy.services.store.get_job(int(headers["X-Pploy-Job"]))
        assert one_shot is not None and (one_shot.user, one_shot.token) == ("alice", "ci")
        # ... but the Origin check still applies: a foreign page cannot use a token either.
        status, _, text = await call(
            bare, "POST", pploy.url("/testploy/deploy?env=staging"), token,
            headers={"Origin": "https://evil.example"},
        )  # fmt: skip
        assert status == 403 and "cross-site" in text

        # A token with bob's cookie is still alice; a bad token with a good cookie is a 401:
        # the cookie never speaks for a bearer request.
        bob = pploy.client("bob")
        status, _, text = await call(bob, "GET", pploy.url("/api/status"), token)
        assert status == 200 and '"user": "alice"' in text
        alice = pploy.client("alice")
        for garbage in ("nope", "pploy_" + "A" * 43, token + "x", "é" * 10):
            status, headers, text = await call(
                alice, "GET", pploy.url("/"), garbage, headers={"Accept": "text/html"}
            )
            assert status == 401, (garbage, text)
            assert headers["Content-Type"].startswith("application/json")
            assert headers["WWW-Authenticate"].startswith("Bearer")
        # A cookie-authenticated form still needs its CSRF token; adding a bad bearer token
        # does not help, and neither does sending the header empty.
        status, _, text = await call(
            alice, "POST", pploy.url("/testploy/deploy"), data={"env": "staging"}
        )
        assert status == 403 and "CSRF" in text
        status, _, _ = await call(
            alice, "POST", pploy.url("/testploy/deploy"), headers={"Authorization": "Bearer "},
            data={"env": "staging"},
        )  # fmt: skip
        assert status == 401

        # Tokens do not mint tokens.
        status, _, text = await call(
            bare, "POST", pploy.url("/api/tokens"), token, json={"name": "x"}
        )
        assert status == 403 and "session" in text

        # Stored hashed: the database holds the SHA-256, never the token.
        db = (tmp_path / "work/pploy.db").read_bytes()
        assert token.encode() not in db and token[6:].encode() not in db
        row = pploy.services.store.db.execute("SELECT hash FROM tokens").fetchone()
        assert row[0] == hashlib.sha256(token.encode()).hexdigest()

        # Expired and revoked tokens are 401 JSON naming why.
        status, body = await pploy.api(
            "POST", "/api/tokens", "alice", {"name": "short", "expires_days": 1}
        )
        assert status == 201 and body["expires_at"] > 0
        short = body["token"]
        pploy.services.store.db.execute("UPDATE tokens SET expires_at = 1 WHERE name = 'short'")
        status, _, text = await call(bare, "GET", pploy.url("/api/status"), short)
        assert status == 401 and "expired" in text
        for bad in (
            {"name": ""},
            {"name": "x", "expires_days": 0},
            {"name": "x", "expires_days": "seven"},
            {"name": "x", "expires_days": True},
            {"name": "x", "expires_days": 99999},
        ):
            assert (await pploy.api("POST", "/api/tokens", "alice", bad))[0] == 400, bad
        status, body = await pploy.api("DELETE", f"/api/tokens/{token_id}", "bob")
        assert status == 404  # bob cannot revoke alice's token (nor learn that it exists)
        status, body = await pploy.api("DELETE", f"/api/tokens/{token_id}", "alice")
        assert status == 200 and body["token"]["revoked_at"] and not body["token"]["active"]
        status, _, text = await call(bare, "GET", pploy.url("/api/status"), token)
        assert status == 401 and "revoked" in text
        status, _, text = await call(bare, "GET", pploy.url("/api/jobs/1/log"), token)
        assert status == 401
        # Standalone mode: a token stops working when its owner leaves `users`.
        status, body = await pploy.api("POST", "/api/tokens", "bob", {"name": "bob-ci"})
        assert status == 201
        status, _, text = await call(bare, "GET", pploy.url("/api/status"), body["token"])
        assert status == 200
        pploy.services.config.users.remove("bob")
        status, _, text = await call(bare, "GET", pploy.url("/api/status"), body["token"])
        assert status == 401 and "no longer" in text
    finally:
        await bare.close()
        await pploy.close()


async def test_tokens_page_shows_a_new_token_once_and_revokes(tmp_path: Path) -> None:
    pploy = await start_pploy(tmp_path / "work")
    try:
        alice = pploy.client("alice")
        async with alice.get(pploy.url("/tokens")) as resp:
            assert resp.status == 200 and "API tokens" in await resp.text()
        csrf = alice.cookie_jar.filter_cookies(URL(pploy.url("/")))["csrf"].value
        # Without the CSRF token the form is refused.
        async with alice.post(pploy.url("/tokens"), data={"name": "laptop"}) as resp:
            assert resp.status == 403
        form = {"name": "laptop", "expires_days": "30", "csrf_token": csrf}
        async with alice.post(pploy.url("/tokens"), data=form) as resp:
            page = await resp.text()
            assert resp.status == 201 and resp.headers["Cache-Control"] == "no-store"
        token = re.search(r'id="new-token-value">(pploy_[^<]+)<', page).group(1)  # type: ignore[union-attr]
        async with alice.get(pploy.url("/tokens")) as resp:
            again = await resp.text()
        assert "laptop" in again and token not in again  # shown once
        status, _, text = await call(pploy.client(None), "GET", pploy.url("/api/status"), token)
        assert status == 200 and '"user": "alice"' in text
        token_id = re.search(r'data-token-id="(\d+)"', again).group(1)  # type: ignore[union-attr]
        async with alice.post(
            pploy.url(f"/tokens/{token_id}/revoke"), data={"csrf_token": csrf}
        ) as resp:
            assert resp.status == 200 and "revoked" in await resp.text()
        status, _, _ = await call(pploy.client(None), "GET", pploy.url("/api/status"), token)
        assert status == 401
    finally:
        await pploy.close()


def test_a_version_1_database_gains_tokens(tmp_path: Path) -> None:
    path = tmp_path / "pploy.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, project TEXT NOT NULL, "
        "kind TEXT NOT NULL, env TEXT, ref TEXT, sha TEXT, user TEXT NOT NULL, "
        "started_at REAL NOT NULL, ended_at REAL, exit_code INTEGER, signal INTEGER, "
        "status TEXT NOT NULL, cancelled_by TEXT, message TEXT, "
        "log_bytes INTEGER NOT NULL DEFAULT 0, repository INTEGER, url TEXT);"
        "INSERT INTO jobs (project, kind, user, started_at, status) "
        "VALUES ('app', 'deploy', 'alice', 1, 'succeeded');"
        "PRAGMA user_version = 1;"
    )
    old.close()
    store = Store(path)
    try:
        assert migrations.applied(store) == list(range(1, migrations.VERSION + 1))
        job = store.get_job(1)
        assert job is not None and job.user == "alice" and job.token is None
        assert store.list_tokens("alice") == []
        assert (
            store.create_job(project="app", kind="checkout", user="bob", token="ci").token == "ci"
        )
    finally:
        store.close()
