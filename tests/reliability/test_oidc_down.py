"""The OpenID provider goes down: a login in progress ends on a clear error page from gate,
a new login is answered at once, and sessions made before keep working."""

from __future__ import annotations

import time

import pytest

from tests.gate.conftest import SESSION_KEY, client_session, start_gate
from tests.gate.test_oidc_login import at_provider, full_login, start_login, start_provider
from tests.gate.upstream import Upstream

pytestmark = pytest.mark.slow  # the OpenID provider on node


async def test_provider_down_new_logins_get_an_error_page_sessions_go_on():
    proc, issuer = start_provider()
    upstream = Upstream()
    await upstream.start()
    config = {
        "address": "127.0.0.1:0",
        "auth": {
            "session": {"key": SESSION_KEY, "lifetime": "1h"},
            "info": {
                "service": "oidc", "issuer": issuer, "client_id": "gate",
                "client_secret": "gate-test-secret",
                "redirect_url": "http://127.0.0.1:{port}/oauth2callback",
            },
        },
        "restrictions": ["example.com"],
        "htdocs": None,
        "proxy": [{"path": "/app", "dest": upstream.url, "strip_path": True}],
    }  # fmt: skip
    gate = await start_gate(config)
    try:
        async with client_session() as logged_in, client_session() as newcomer:
            resp = await full_login(logged_in, gate, "alice")
            assert resp.status == 303
            resp.release()
            # The newcomer is at the provider's login form when it dies: the provider has sent
            # them back with a code, but gate cannot redeem it.
            auth_url = await start_login(newcomer, gate.url, "/app/")
            callback = await at_provider(newcomer, auth_url, "alice", gate.url)
            proc.terminate()
            proc.wait(10)
            started = time.monotonic()
            async with newcomer.get(
                callback, allow_redirects=False, headers={"Accept": "text/html"}
            ) as resp:
                page = await resp.text()
                assert resp.status == 502, (resp.status, page[:500])
                assert resp.content_type == "text/html"
            assert time.monotonic() - started < 10  # the connect timeout, not a hang
            # "Sign-in failed — oidc: code exchange failed: Cannot connect to host …", Try again
            assert "Sign-in failed" in page and "code exchange failed" in page, page[:800]
            assert 'href="/login"' in page
            assert "Traceback" not in page
            # The existing session does not need the provider.
            async with logged_in.get(gate.url + "/app/still-here") as resp:
                assert resp.status == 200
                assert (await resp.json())["raw_path"] == "/still-here"
            # A fresh login is answered at once (gate knows the provider's endpoints already).
            async with newcomer.get(
                gate.url + "/login", allow_redirects=False, headers={"Accept": "text/html"}
            ) as resp:
                assert resp.status in (302, 502), resp.status
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        await gate.server.stop()
        await upstream.stop()
