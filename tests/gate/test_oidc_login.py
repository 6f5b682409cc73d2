"""Login through a real OpenID provider (panva's oidc-provider on Node, on loopback).

The test client plays the browser: it follows gate's redirect to the provider, fills in the
provider's login form, and follows the provider's redirect back to gate's callback.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import aiohttp
import pytest
import pytest_asyncio

from pploy.gate.config import parse_config
from pploy.gate.providers import make_provider
from tests.gate.conftest import REPO, SESSION_KEY, client_session, gate_logout, start_gate
from tests.helpers import require_binary, skip_or_fail

# slow: the OpenID provider on node
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

OIDC_DIR = REPO / "tests" / "oidc"
HTML = {"Accept": "text/html"}


def start_provider() -> tuple[subprocess.Popen[str], str]:
    """Start tests/oidc/server.js (a real OpenID provider) on a free port; return the process
    and its issuer URL. Skips (fails under PPLOY_REQUIRE_ALL=1) without node or its modules."""
    node = require_binary("node")
    if not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
        skip_or_fail("tests/oidc has no node_modules: run `npm ci --prefix tests/oidc`")
    proc = subprocess.Popen(
        [node, "server.js", "0"],
        cwd=OIDC_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "NODE_ENV": "test"},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the server prints its address
    if not line.startswith("listening "):
        stop_provider(proc)
        pytest.fail(f"oidc-provider did not start: {line!r}")
    return proc, line.split(" ", 1)[1].strip()


def stop_provider(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    """The OpenID provider's issuer URL, one provider per module."""
    proc, issuer = start_provider()
    try:
        yield issuer
    finally:
        stop_provider(proc)


def oidc_config(issuer: str, proxy: list[dict], **top: object) -> dict:
    """A gate config signing in with the OpenID provider at ``issuer`` as client ``gate``."""
    return {
        "address": "127.0.0.1:0",
        "auth": {
            "session": {"key": SESSION_KEY},
            "info": {
                "service": "oidc",
                "issuer": issuer,
                "client_id": "gate",
                "client_secret": "gate-test-secret",
                "redirect_url": "http://127.0.0.1:{port}/oauth2callback",
            },
        },
        "htdocs": None,
        "proxy": proxy,
        **top,
    }


@pytest_asyncio.fixture(
    scope="module", loop_scope="module", params=[True, False], ids=["fast_path", "aiohttp"]
)
async def gate(request, provider, upstream):
    """gate with each front end: its fast path (the default) and aiohttp's server alone."""
    config = oidc_config(
        provider,
        [{"path": "/app", "dest": upstream.url, "strip_path": True}],
        restrictions=["example.com", "bob@other.test"],
        fast_path=request.param,
    )
    config["auth"]["session"]["lifetime"] = "1h"
    running = await start_gate(config)
    yield running
    await running.server.stop()


def _b64json(part: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def _with_param(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


async def start_login(client: aiohttp.ClientSession, gate_url: str, next_path: str) -> str:
    """Ask gate to log in; return the provider's authorization URL it redirects to."""
    async with client.get(
        f"{gate_url}/login", params={"next": next_path}, allow_redirects=False
    ) as resp:
        assert resp.status == 302, await resp.text()
        return resp.headers["Location"]


async def at_provider(
    client: aiohttp.ClientSession, auth_url: str, user: str, gate_url: str, *, abort: bool = False
) -> str:
    """Play the user at the provider; return the callback URL the provider sends us to."""
    url = auth_url
    for _ in range(10):
        async with client.get(url, allow_redirects=False) as resp:
            if resp.status in (302, 303):
                url = resp.headers["Location"]
                if not url.startswith("http"):
                    url = urlunsplit(urlsplit(auth_url)[:2] + urlsplit(url)[2:])
                if url.startswith(gate_url):
                    return url
                continue
            assert resp.status == 200, await resp.text()
            page = await resp.text()
        if abort:
            url = url + "/abort"
            continue
        if 'value="consent"' in page:  # the provider asks native clients to confirm
            form = {"prompt": "consent"}
        else:
            assert 'name="login"' in page, page[:500]
            form = {"prompt": "login", "login": user, "password": "any"}
        async with client.post(url, data=form, allow_redirects=False) as resp:
            assert resp.status in (302, 303), await resp.text()
            url = resp.headers["Location"]
            if not url.startswith("http"):
                url = urlunsplit(urlsplit(auth_url)[:2] + urlsplit(url)[2:])
            if url.startswith(gate_url):
                return url
    raise AssertionError("the provider never redirected back to gate")


async def full_login(client, gate, user: str, next_path: str = "/app/after?x=1"):
    auth_url = await start_login(client, gate.url, next_path)
    callback = await at_provider(client, auth_url, user, gate.url)
    # On a connection of its own: the session's next requests start on fresh connections,
    # which the fast path serves (aiohttp's server keeps the ones it answered).
    return await client.get(callback, allow_redirects=False, headers={"Connection": "close"})


def session_cookie(client: aiohttp.ClientSession) -> str | None:
    for cookie in client.cookie_jar:
        if cookie.key == "_gate_session" and cookie.value:
            return cookie.value
    return None


async def test_authorization_request_uses_pkce_state_and_nonce(gate, provider):
    async with client_session() as client:
        auth_url = await start_login(client, gate.url, "/")
    assert auth_url.startswith(provider + "/auth?")
    query = parse_qs(urlsplit(auth_url).query)
    assert query["code_challenge_method"] == ["S256"]
    assert len(query["code_challenge"][0]) == 43
    assert len(query["state"][0]) >= 32 and len(query["nonce"][0]) >= 32
    assert query["redirect_uri"] == [f"{gate.url}/oauth2callback"]
    assert "openid" in query["scope"][0].split()


async def test_allowed_user_logs_in_and_returns_where_they_were(gate, upstream):
    async with client_session() as client:
        resp = await full_login(client, gate, "alice")
        assert resp.status == 303
        assert resp.headers["Location"] == "/app/after?x=1"
        cookie = resp.cookies["_gate_session"]
        assert cookie["httponly"] and cookie["samesite"] == "Lax"
        resp.release()
        async with client.get(gate.url + "/app/after?x=1") as r:
            record = await r.json()
        headers = {k.lower(): v for k, v in record["headers"]}
        assert headers["x-forwarded-user"] == "alice@example.com"
        assert headers["x-forwarded-email"] == "alice@example.com"
        # The browser never sees the provider's tokens: the cookie is opaque ciphertext.
        value = session_cookie(client)
        assert value and "alice" not in value and "eyJ" not in value


async def test_exact_address_restriction_admits_that_address(gate):
    async with client_session() as client:
        resp = await full_login(client, gate, "bob")
        assert resp.status == 303
        resp.release()
        async with client.get(gate.url + "/app/x") as r:
            assert r.status == 200


@pytest.mark.parametrize(
    ("user", "shown"),
    [
        ("eve", "eve@badexample.com"),  # a domain that merely ends with the allowed one
        ("trick", "a@evil.test@example.com"),  # two @: the part after the last is not enough
        ("carol", "carol@example.com"),  # right domain, address not verified
        ("dave", "dave@example.com"),  # right domain, no email_verified claim at all
        ("noemail", "noemail"),  # nothing to check the restrictions against
    ],
)
async def test_restricted_users_get_a_clear_403(gate, user, shown):
    async with client_session() as client:
        resp = await full_login(client, gate, user)
        text = await resp.text()
        assert resp.status == 403
        assert "Access denied" in text and shown in text
        assert session_cookie(client) is None
        async with client.get(gate.url + "/app/x", allow_redirects=False) as r:
            assert r.status == 401


async def test_an_unverified_address_is_never_passed_on_as_the_users_email(provider, upstream):
    """Issue 21: without ``email_verified: true`` an address is not the user's email: not for
    ``restrictions`` (above), and not upstream: neither the email header nor the assertion
    carries it, nor does the user name (``user_claim`` is ``email`` by default)."""
    # No restrictions: any account of the provider may sign in.
    proxy = [{"path": "/app", "dest": upstream.url, "assertion_audience": "pploy"}]
    config = oidc_config(provider, proxy)
    running = await start_gate(config)
    try:
        for user, address, verified in (
            ("dave", "dave@example.com", False),  # no email_verified claim
            ("carol", "carol@example.com", False),  # email_verified: false
            ("alice", "alice@example.com", True),
        ):
            async with client_session() as client:
                resp = await full_login(client, running, user, "/app/who")
                assert resp.status == 303, await resp.text()
                resp.release()
                async with client.get(running.url + "/app/who") as r:
                    headers = {k.lower(): v for k, v in (await r.json())["headers"]}
            claims = _b64json(headers["x-gate-assertion"].split(".")[1])
            if verified:
                assert headers["x-forwarded-user"] == address == claims.get("email")
                assert headers["x-forwarded-email"] == address
            else:
                assert headers["x-forwarded-user"] == user  # the subject, not the address
                assert "x-forwarded-email" not in headers
                assert address not in json.dumps(claims)
    finally:
        await running.server.stop()


async def test_tampered_state_is_refused(gate):
    async with client_session() as client:
        auth_url = await start_login(client, gate.url, "/")
        callback = await at_provider(client, auth_url, "alice", gate.url)
        state = parse_qs(urlsplit(callback).query)["state"][0]
        forged = _with_param(callback, state=state[:-2] + ("AA" if state[-2:] != "AA" else "BB"))
        async with client.get(forged, allow_redirects=False) as resp:
            assert resp.status == 400
            assert "not started from this browser" in await resp.text()
        assert session_cookie(client) is None


async def test_callback_in_another_browser_is_refused(gate):
    async with client_session() as victim, client_session() as attacker:
        auth_url = await start_login(attacker, gate.url, "/")
        callback = await at_provider(attacker, auth_url, "alice", gate.url)
        # Login CSRF: the attacker's callback URL opened in the victim's browser.
        async with victim.get(callback, allow_redirects=False) as resp:
            assert resp.status == 400
        assert session_cookie(victim) is None


async def test_callback_cannot_be_replayed(gate):
    async with client_session() as client:
        auth_url = await start_login(client, gate.url, "/")
        callback = await at_provider(client, auth_url, "alice", gate.url)
        async with client.get(callback, allow_redirects=False) as resp:
            assert resp.status == 303
        client.cookie_jar.clear(lambda c: c.key == "_gate_session")
        async with client.get(callback, allow_redirects=False) as resp:
            assert resp.status == 400


async def test_tampered_nonce_is_refused(gate):
    async with client_session() as client:
        auth_url = await start_login(client, gate.url, "/")
        # The provider will sign an ID token with this nonce, which is not the one gate chose.
        forged = _with_param(auth_url, nonce="attacker-chosen-nonce-value-1234567890")
        callback = await at_provider(client, forged, "alice", gate.url)
        async with client.get(callback, allow_redirects=False) as resp:
            assert resp.status == 400
            assert "nonce" in await resp.text()
        assert session_cookie(client) is None


async def test_tampered_pkce_challenge_fails_the_exchange(gate):
    async with client_session() as client:
        auth_url = await start_login(client, gate.url, "/")
        forged = _with_param(auth_url, code_challenge="A" * 43)
        callback = await at_provider(client, forged, "alice", gate.url)
        async with client.get(callback, allow_redirects=False) as resp:
            assert resp.status in (400, 502)
            assert "code exchange failed" in await resp.text()
        assert session_cookie(client) is None


async def test_user_cancelling_at_provider(gate):
    async with client_session() as client:
        auth_url = await start_login(client, gate.url, "/")
        callback = await at_provider(client, auth_url, "alice", gate.url, abort=True)
        async with client.get(callback, allow_redirects=False) as resp:
            assert resp.status == 403
            assert "access_denied" in await resp.text()


async def test_expired_session_sends_user_back_to_login(gate):
    async with client_session() as client:
        (await full_login(client, gate, "alice")).release()
        async with client.get(gate.url + "/app/x") as r:
            assert r.status == 200
        real_clock = gate.gate.clock
        gate.gate.clock = lambda: real_clock() + 3601
        try:
            async with client.get(gate.url + "/app/x", headers=HTML, allow_redirects=False) as r:
                assert r.status == 302
                assert r.headers["Location"].startswith("/login?next=")
            async with client.get(gate.url + "/app/x", allow_redirects=False) as r:
                assert r.status == 401
        finally:
            gate.gate.clock = real_clock


async def test_logout_clears_the_session(gate):
    async with client_session() as client:
        (await full_login(client, gate, "alice")).release()
        stolen = session_cookie(client)
        await gate_logout(client, gate.url)
        assert session_cookie(client) is None
        async with client.get(gate.url + "/app/x", allow_redirects=False) as r:
            assert r.status == 401
    # A cookie is a bearer token until it expires; rotation or the lifetime bounds it.
    assert stolen


async def test_session_key_rotation(gate, provider, upstream):
    async with client_session() as client:
        (await full_login(client, gate, "alice")).release()
        cookie = session_cookie(client)
    rotated = oidc_config(
        provider,
        [{"path": "/app", "dest": upstream.url, "strip_path": True}],
        restrictions=["example.com", "bob@other.test"],
    )
    rotated["auth"]["session"] = {
        "key": "a-brand-new-key-0123456789abcdef",
        "old_keys": [SESSION_KEY],
    }
    other = await start_gate(rotated)
    try:
        async with client_session() as client:
            client.cookie_jar.update_cookies({"_gate_session": cookie})
            async with client.get(other.url + "/app/x", allow_redirects=False) as r:
                assert r.status == 200
        # Dropping the old key logs those sessions out.
        rotated["auth"]["session"]["old_keys"] = []
        strict = await start_gate(rotated)
        try:
            async with client_session() as client:
                client.cookie_jar.update_cookies({"_gate_session": cookie})
                async with client.get(strict.url + "/app/x", allow_redirects=False) as r:
                    assert r.status == 401
        finally:
            await strict.server.stop()
    finally:
        await other.server.stop()


async def test_google_signs_in_through_its_issuer_with_the_workspace_hint(provider, upstream):
    """``service: google`` is OpenID Connect with Google's issuer unless one is given (here the
    real provider on loopback stands in for it); one domain restriction becomes the ``hd``
    hint of the authorization request, and the login is checked like any other."""
    data = oidc_config(provider, [{"path": "/app", "dest": upstream.url}])
    data["auth"]["info"]["service"] = "google"
    data["restrictions"] = ["example.com"]
    async with aiohttp.ClientSession() as http:
        info = {**data["auth"]["info"], "redirect_url": "https://gate.example/oauth2callback"}
        del info["issuer"]
        default = make_provider(
            parse_config({**data, "auth": {**data["auth"], "info": info}}), http
        )
        assert default.name == "google" and default.issuer == "https://accounts.google.com"
    running = await start_gate(data)
    try:
        async with client_session() as client:
            auth_url = await start_login(client, running.url, "/app/x")
            assert auth_url.startswith(provider + "/auth?")
            assert parse_qs(urlsplit(auth_url).query)["hd"] == ["example.com"]
            resp = await full_login(client, running, "alice")
            assert resp.status == 303
            resp.release()
            async with client.get(running.url + "/app/x") as r:
                assert r.status == 200
    finally:
        await running.server.stop()


async def test_discovery_failure_is_a_clear_502(upstream):
    config = {
        "address": "127.0.0.1:0",
        "auth": {
            "session": {"key": SESSION_KEY},
            "info": {
                "service": "oidc",
                "issuer": upstream.url + "/no-such-issuer",
                "client_id": "gate",
                "client_secret": "x",
                "redirect_url": "http://127.0.0.1:{port}/oauth2callback",
            },
        },
        "htdocs": None,
    }
    running = await start_gate(config)
    try:
        async with client_session() as client:
            started = time.monotonic()
            async with client.get(running.url + "/login", allow_redirects=False) as resp:
                assert resp.status == 502
                assert "discovery" in await resp.text()
            assert time.monotonic() - started < 5
    finally:
        await running.server.stop()
    await asyncio.sleep(0)
