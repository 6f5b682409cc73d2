"""GitHub (Enterprise) login against a faithful local stand-in for GitHub's OAuth and API."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
import pytest_asyncio

from tests.gate.conftest import SESSION_KEY, client_session, start_gate
from tests.gate.github_standin import USERS, GitHubStandIn

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def github():
    server = GitHubStandIn("gh-client", "gh-secret")
    await server.start()
    yield server
    await server.stop()


@pytest_asyncio.fixture(
    scope="module", loop_scope="module", params=[True, False], ids=["fast_path", "aiohttp"]
)
async def gate(request, github, upstream):
    """gate with each front end: the re-checks hold on the fast path as on aiohttp's server."""
    config = {
        "address": "127.0.0.1:0",
        "auth": {
            "session": {"key": SESSION_KEY},
            "info": {
                "service": "github",
                "client_id": "gh-client",
                "client_secret": "gh-secret",
                "redirect_url": "http://127.0.0.1:{port}/oauth2callback",
                "endpoint": github.url,
                "api_endpoint": github.url + "/api/v3/",
            },
        },
        "restrictions": ["pixiv"],
        "htdocs": None,
        "proxy": [{"path": "/", "dest": upstream.url}],
        "fast_path": request.param,
    }
    running = await start_gate(config)
    yield running
    await running.server.stop()


async def github_login(client, gate, next_path="/deploy/app"):
    async with client.get(
        gate.url + "/login", params={"next": next_path}, allow_redirects=False
    ) as resp:
        assert resp.status == 302
        authorize = resp.headers["Location"]
    async with client.get(authorize, allow_redirects=False) as resp:
        assert resp.status == 302, await resp.text()
        callback = resp.headers["Location"]
    # On a connection of its own: the session's next requests start on fresh connections,
    # which the fast path serves (aiohttp's server keeps the ones it answered).
    return authorize, await client.get(
        callback, allow_redirects=False, headers={"Connection": "close"}
    )


async def test_org_member_logs_in(gate, github):
    github.login_as = "octocat"
    async with client_session() as client:
        authorize, resp = await github_login(client, gate)
        query = parse_qs(urlsplit(authorize).query)
        assert "read:org" in query["scope"][0] and query["code_challenge_method"] == ["S256"]
        assert resp.status == 303 and resp.headers["Location"] == "/deploy/app"
        resp.release()
        async with client.get(gate.url + "/deploy/app") as r:
            headers = {k.lower(): v for k, v in (await r.json())["headers"]}
        assert headers["x-forwarded-user"] == "octocat"
        assert headers["x-forwarded-email"] == "octocat@octo.test"


async def test_orgs_are_checked_once_per_login_not_per_request(gate, github):
    github.login_as = "octocat"
    before = github.calls["orgs"]  # the stand-in serves every test of the module
    async with client_session() as client:
        (await github_login(client, gate))[1].release()
        calls = dict(github.calls)
        for _ in range(5):
            async with client.get(gate.url + "/x") as r:
                assert r.status == 200
        assert dict(github.calls) == calls
    # Org membership spans three pages (Link: rel="next" followed).
    assert calls["orgs"] - before == 3


async def test_non_member_is_refused_with_reason(gate, github):
    github.login_as = "outsider"
    try:
        async with client_session() as client:
            _, resp = await github_login(client, gate)
            text = await resp.text()
            assert resp.status == 403
            assert "outsider" in text and "organisation" in text
            async with client.get(gate.url + "/x", allow_redirects=False) as r:
                assert r.status == 401
    finally:
        github.login_as = "octocat"


async def test_wrong_state_is_refused(gate, github):
    async with client_session() as client:
        async with client.get(gate.url + "/login", allow_redirects=False) as resp:
            authorize = resp.headers["Location"]
        async with client.get(authorize.replace("state=", "state=x"), allow_redirects=False) as r:
            callback = r.headers["Location"]
        async with client.get(callback, allow_redirects=False) as resp:
            assert resp.status == 400
        # The code was never exchanged.
        assert any(c for c in github.codes)


async def test_bad_client_secret_is_reported(github, upstream):
    config = {
        "address": "127.0.0.1:0",
        "auth": {
            "session": {"key": SESSION_KEY},
            "info": {
                "service": "github",
                "client_id": "gh-client",
                "client_secret": "wrong",
                "redirect_url": "http://127.0.0.1:{port}/oauth2callback",
                "endpoint": github.url,
                "api_endpoint": github.url + "/api/v3",
            },
        },
        "htdocs": None,
    }
    running = await start_gate(config)
    try:
        async with client_session() as client:
            _, resp = await github_login(client, running)
            assert resp.status == 400
            assert "incorrect_client_credentials" in await resp.text()
    finally:
        await running.server.stop()


async def test_removed_from_the_org_loses_access_at_the_next_recheck(gate, github, upstream):
    """Membership is re-checked from the token kept in the session, every
    auth.info.recheck_interval (5 minutes by default); not on every request."""
    github.login_as = "octocat"
    orgs = USERS["octocat"]["orgs"]
    real_clock = gate.gate.clock
    try:
        async with client_session() as client:
            (await github_login(client, gate))[1].release()
            cookie = session_cookie_value(client)
            USERS["octocat"]["orgs"] = [o for o in orgs if o != "Pixiv"]
            calls = github.calls["orgs"]
            async with client.get(gate.url + "/x") as r:
                assert r.status == 200  # within the interval: no API call
            assert github.calls["orgs"] == calls
            gate.gate.clock = lambda: real_clock() + 299
            async with client.get(gate.url + "/x") as r:
                assert r.status == 200
            upstream.reset()
            gate.gate.clock = lambda: real_clock() + 301
            async with client.get(gate.url + "/x", allow_redirects=False) as r:
                assert r.status == 403
                text = await r.text()
                assert "no longer a member of an allowed organisation" in text
                assert r.cookies["_gate_session"].value == ""  # cleared
            assert github.calls["orgs"] > calls
            # The old cookie, replayed, stays refused; nothing reached the upstream.
            async with client_session() as replay:
                async with replay.get(
                    gate.url + "/x", headers={"Cookie": f"_gate_session={cookie}"}
                ) as r:
                    assert r.status == 403
            assert upstream.requests == []
    finally:
        USERS["octocat"]["orgs"] = orgs
        gate.gate.clock = real_clock


async def test_a_member_stays_in_and_a_revoked_token_ends_the_session(gate, github):
    github.login_as = "octocat"
    real_clock = gate.gate.clock
    try:
        async with client_session() as client:
            (await github_login(client, gate))[1].release()
            gate.gate.clock = lambda: real_clock() + 301
            calls = github.calls["orgs"]
            for _ in range(3):
                async with client.get(gate.url + "/x") as r:
                    assert r.status == 200
            assert github.calls["orgs"] == calls + 3  # one check (three pages), then cached
            # The user revokes gate's access at GitHub: the token stops working.
            github.tokens.clear()
            gate.gate.clock = lambda: real_clock() + 700
            async with client.get(gate.url + "/x", allow_redirects=False) as r:
                assert r.status == 403
                assert "sign in again" in await r.text()
    finally:
        gate.gate.clock = real_clock


def session_cookie_value(client) -> str:
    return next(c.value for c in client.cookie_jar if c.key == "_gate_session")


async def test_github_down_at_a_recheck_keeps_the_session(gate, github):
    github.login_as = "octocat"
    real_clock = gate.gate.clock
    try:
        async with client_session() as client:
            (await github_login(client, gate))[1].release()
            gate.gate.clock = lambda: real_clock() + 301
            github.orgs_status = 503
            async with client.get(gate.url + "/x", allow_redirects=False) as r:
                assert r.status == 502
                assert "cannot confirm your access" in await r.text()
                assert "_gate_session" not in r.cookies  # not signed out
            github.orgs_status = 200
            async with client.get(gate.url + "/x") as r:
                assert r.status == 200
    finally:
        github.orgs_status = 200
        gate.gate.clock = real_clock
