"""``pass_bearer`` (issue 13): gate passes bearer-token requests without a session to the
routes that set it, with no identity of its own (the upstream checks the token); elsewhere a
bearer request without a session gets 401 JSON, never the login page."""

from __future__ import annotations

import aiohttp
import pytest

from tests.gate.conftest import client_session, dev_config, dev_login, gate_command, start_gate
from tests.gate.upstream import Upstream

BEARER = {"Authorization": "Bearer pploy_some-token"}


def headers_of(body: dict) -> dict[str, str]:
    return {k.lower(): v for k, v in body["headers"]}


async def test_bearer_requests_pass_only_where_allowed_and_carry_no_identity() -> None:
    upstream = Upstream()
    await upstream.start()
    config = dev_config(
        proxy=[
            # gate's order: the first entry that matches wins, so the narrower one comes first
            {"path": "/wiki", "dest": upstream.url},
            {"path": "/", "dest": upstream.url, "assertion_audience": "pploy", "pass_bearer": True},
        ]
    )
    gate = await start_gate(config)
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as anon:
            # No session, a bearer token: passed on, Authorization intact, no identity added
            # (even if the client tries to smuggle one).
            smuggled = {**BEARER, "X-Forwarded-User": "root", "X-Gate-Assertion": "x.y.z"}
            async with anon.post(gate.url + "/api/projects", headers=smuggled) as resp:
                assert resp.status == 200, await resp.text()
                seen = headers_of(await resp.json())
            assert seen["authorization"] == BEARER["Authorization"]
            assert "x-forwarded-user" not in seen and "x-gate-assertion" not in seen
            # A route without pass_bearer: 401 JSON, also for what looks like a browser.
            for accept in ("*/*", "text/html"):
                async with anon.get(
                    gate.url + "/wiki/x", headers={**BEARER, "Accept": accept},
                    allow_redirects=False,
                ) as resp:  # fmt: skip
                    assert resp.status == 401 and resp.content_type == "application/json"
            # Without a bearer token the route is as closed as before.
            async with anon.get(gate.url + "/api/status") as resp:
                assert resp.status == 401
            async with anon.get(
                gate.url + "/api/status", headers={"Authorization": "Basic YTpi"}
            ) as resp:
                assert resp.status == 401
        async with client_session() as browser:
            await dev_login(browser, gate.url, "alice")
            # With a session and a bearer token, the token alone speaks: no identity added.
            async with browser.get(gate.url + "/api/status", headers=BEARER) as resp:
                seen = headers_of(await resp.json())
            assert "x-forwarded-user" not in seen and "x-gate-assertion" not in seen
            async with browser.get(gate.url + "/api/status") as resp:
                seen = headers_of(await resp.json())
            assert seen["x-forwarded-user"] == "alice" and "x-gate-assertion" in seen
    finally:
        await gate.server.stop()
        await upstream.stop()


@pytest.mark.slow  # a `pploy gate` process each
@pytest.mark.parametrize("fast_path", [True, False], ids=["fast_path", "aiohttp"])
async def test_a_bearer_token_opens_nothing_gate_serves_itself(tmp_path, fast_path):
    """Issue 21: with ``pass_bearer`` on ``/`` (contrib/config/gate.yml, ``pploy up``), any
    ``Authorization: Bearer …`` used to open gate's own private endpoints. A bearer is only
    ever forwarded: on gate's own pages a garbage token gets what no credentials get. Through
    ``pploy gate`` run from a config file, on both front ends."""
    upstream = Upstream()
    await upstream.start()
    config = {
        **dev_config(proxy=[{"path": "/", "dest": upstream.url, "pass_bearer": True}]),
        "fast_path": fast_path,
    }
    garbage = {"Authorization": "Bearer garbage-not-a-token"}
    try:
        async with (
            gate_command(config, tmp_path) as gate,
            aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as anon,
        ):
            own = [
                "/_gate/metrics",
                "/.gate/stream-test?lines=1",
                "/.gate/stream-test/events?lines=1",
                "/.gate/stream-test/nothing-here",
                "/logout",
            ]
            for path in own:
                answers = []
                for headers in ({}, garbage, {**garbage, "Accept": "text/html"}):
                    async with anon.get(
                        gate.url + path, headers=headers, allow_redirects=False
                    ) as resp:
                        answers.append((resp.status, resp.content_type, await resp.read()))
                # The same answer (gate's pages carry a request id: status and type there).
                assert answers[1][:2] == answers[0][:2], (path, answers)
                assert answers[0][0] == 401 or path == "/logout", (path, answers[0])
                if answers[0][0] == 401:
                    assert answers[1] == answers[0], path
                assert b"gate_requests_total" not in answers[1][2]
                assert b"tick" not in answers[1][2]
            assert upstream.requests == []
            # The same token on a proxied path is forwarded, for the upstream to judge.
            async with anon.get(gate.url + "/api/status", headers=garbage) as resp:
                assert resp.status == 200
                assert headers_of(await resp.json())["authorization"] == garbage["Authorization"]
            async with anon.get(gate.url + "/api/status") as resp:
                assert resp.status == 401
            # A signed-in user still reads the metrics: the session is the identity there.
            async with client_session() as browser:
                await dev_login(browser, gate.url, "alice")
                async with browser.get(gate.url + "/_gate/metrics", headers=garbage) as resp:
                    assert resp.status == 200
                    assert "gate_requests_total" in await resp.text()
    finally:
        await upstream.stop()
