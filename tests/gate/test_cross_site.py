"""Cross-site requests and DNS rebinding against gate itself, sent the way a hostile page's
browser sends them: logout cannot be triggered from another site, the dev login compares the
whole origin (scheme included), and a request naming a host gate does not serve is refused
before any login or proxying, cookie or not."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio

from tests.gate.conftest import (
    LOGOUT_TOKEN,
    client_session,
    dev_config,
    dev_login,
    gate_logout,
    start_gate,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(
    scope="module", loop_scope="module", params=[True, False], ids=["fast_path", "aiohttp"]
)
async def gate(request, upstream):
    """gate with each front end: its fast path (the default) and aiohttp's server alone."""
    config = dev_config(proxy=[{"path": "/", "dest": upstream.url}], fast_path=request.param)
    running = await start_gate(config)
    yield running
    await running.server.stop()


async def signed_in(client, gate) -> bool:
    async with client.get(gate.url + "/x", allow_redirects=False) as resp:
        return resp.status == 200


async def test_logout_by_link_or_image_from_another_site_does_nothing(gate):
    async with client_session() as client:
        await dev_login(client, gate.url)
        # <img src="https://gate/logout">: a cross-site GET carrying the cookie.
        headers = {"Sec-Fetch-Site": "cross-site", "Referer": "https://evil.test/"}
        async with client.get(gate.url + "/logout", headers=headers) as resp:
            assert resp.status == 200
            assert "set-cookie" not in resp.headers
            assert 'method="post"' in await resp.text()
        assert await signed_in(client, gate)


@pytest.mark.parametrize(
    ("origin", "token"),
    [
        ("http://evil.test", None),  # a hostile form, no token
        ("http://evil.test", "right"),  # even with the token (leaked), another origin
        ("https://127.0.0.1:{port}", "right"),  # same host and port, other scheme
        (None, "0" * 64),  # a forged token
        (None, None),
    ],
)
async def test_cross_site_or_tokenless_logout_post_is_refused(gate, origin, token):
    async with client_session() as client:
        await dev_login(client, gate.url)
        async with client.get(gate.url + "/logout") as resp:
            right = LOGOUT_TOKEN.search(await resp.text()).group(1)
        data = {} if token is None else {"token": right if token == "right" else token}
        headers = {"Origin": origin.format(port=gate.port)} if origin else {}
        async with client.post(gate.url + "/logout", data=data, headers=headers) as resp:
            assert resp.status == 403
            assert "set-cookie" not in resp.headers
        assert await signed_in(client, gate)


async def test_token_of_one_session_does_not_sign_out_another(gate):
    async with client_session() as mallory, client_session() as alice:
        await dev_login(mallory, gate.url, "mallory")
        await dev_login(alice, gate.url, "alice")
        async with mallory.get(gate.url + "/logout") as resp:
            token = LOGOUT_TOKEN.search(await resp.text()).group(1)
        async with alice.post(gate.url + "/logout", data={"token": token}) as resp:
            assert resp.status == 403
        assert await signed_in(alice, gate)


async def test_the_real_logout_flow_signs_out(gate):
    async with client_session() as client:
        await dev_login(client, gate.url)
        assert await signed_in(client, gate)
        await gate_logout(client, gate.url)
        assert not await signed_in(client, gate)


@pytest.mark.parametrize(
    "origin",
    ["http://evil.test:{port}", "https://127.0.0.1:{port}", "http://127.0.0.1:1", "null"],
)
async def test_dev_login_compares_the_whole_origin(gate, origin):
    async with client_session() as client:
        async with client.post(
            gate.url + "/login",
            data={"user": "alice"},
            headers={"Origin": origin.format(port=gate.port)},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 403
            assert "_gate_session" not in resp.cookies
        async with client.post(
            gate.url + "/login",
            data={"user": "alice"},
            headers={"Origin": gate.url},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 303


async def test_rebound_host_is_refused_before_login_or_proxying(gate, upstream):
    """A page at http://evil.test:PORT whose name now resolves to 127.0.0.1: to the browser
    every request is same-origin, so Origin and Sec-Fetch-Site match the attacker's name."""
    upstream.reset()
    evil = f"evil.test:{gate.port}"
    hostile = {
        "Host": evil,
        "Origin": f"http://{evil}",
        "Sec-Fetch-Site": "same-origin",
    }
    async with client_session() as client:
        async with client.post(
            gate.url + "/login", data={"user": "alice"}, headers=hostile, allow_redirects=False
        ) as resp:
            assert resp.status == 421
            assert "evil.test" in await resp.text() and "allowed_hosts" in await resp.text()
            assert "_gate_session" not in resp.cookies
        # Even with a session cookie (the browser would not send ours to evil.test, but the
        # check must not depend on that), nothing is proxied.
        await dev_login(client, gate.url)
        for method in ("GET", "POST"):
            async with client.request(method, gate.url + "/x", headers=hostile) as resp:
                assert resp.status == 421
        async with client.get(gate.url + "/logout", headers=hostile) as resp:
            assert resp.status == 421
    assert upstream.requests == []


async def test_a_request_without_host_is_refused(gate, upstream):
    upstream.reset()
    reader, writer = await asyncio.open_connection("127.0.0.1", gate.port)
    writer.write(b"GET /x HTTP/1.0\r\n\r\n")
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert data.startswith(b"HTTP/1.0 400") or data.startswith(b"HTTP/1.1 400"), data[:80]
    assert b"Host header is required" in data
    assert upstream.requests == []
