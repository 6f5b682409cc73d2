"""A session ends when it expires and when the restrictions change, end to end through a real
gate: a cookie sealed with the right key but past its expiry is refused, and restarting gate
with other ``restrictions`` logs existing sessions out (the same config keeps them)."""

from __future__ import annotations

import time

from pploy.gate.auth import policy_fingerprint
from pploy.gate.config import parse_config
from pploy.gate.session import CookieCodec, Session
from tests.gate.conftest import SESSION_KEY, client_session, dev_config, dev_login, start_gate
from tests.gate.upstream import Upstream

HTML = {"Accept": "text/html"}


def sealed(config: dict, *, issued: float, expires: float, user: str = "alice") -> str:
    """A session cookie exactly as gate seals it, with the given times."""
    session = Session(
        user=user,
        email=None,
        provider="dev",
        issued=issued,
        expires=expires,
        policy=policy_fingerprint(parse_config(config)),
    )
    return CookieCodec([SESSION_KEY], purpose="session").seal("_gate_session", session.to_payload())


async def test_validly_sealed_but_expired_cookie_is_refused():
    upstream = Upstream()
    await upstream.start()
    config = dev_config(proxy=[{"path": "/", "dest": upstream.url}])
    gate = await start_gate(config)
    now = time.time()
    try:
        async with client_session() as client:
            live = sealed(config, issued=now - 60, expires=now + 3600)
            async with client.get(gate.url + "/x", headers={"Cookie": f"_gate_session={live}"}):
                pass
            assert len(upstream.requests) == 1  # the same sealing, unexpired, is accepted
            upstream.reset()
            for expired in (
                sealed(config, issued=now - 13 * 3600, expires=now - 3600),
                sealed(config, issued=now - 13 * 3600, expires=now - 1),
            ):
                cookie = {"Cookie": f"_gate_session={expired}"}
                async with client.get(gate.url + "/x", headers=cookie) as resp:
                    assert resp.status == 401
                async with client.get(
                    gate.url + "/x", headers={**cookie, **HTML}, allow_redirects=False
                ) as resp:
                    assert resp.status == 302
                    assert resp.headers["Location"].startswith("/login?next=")
            assert upstream.requests == []
    finally:
        await gate.server.stop()
        await upstream.stop()


async def test_changing_restrictions_logs_existing_sessions_out():
    upstream = Upstream()
    await upstream.start()
    before = dev_config(proxy=[{"path": "/", "dest": upstream.url}], restrictions=["alice", "bob"])
    after = dev_config(proxy=[{"path": "/", "dest": upstream.url}], restrictions=["alice"])
    cookies: dict[str, str] = {}
    gate = await start_gate(before)
    try:
        for user in ("alice", "bob"):
            async with client_session() as client:
                await dev_login(client, gate.url, user)
                cookies[user] = next(c.value for c in client.cookie_jar if c.key == "_gate_session")
    finally:
        await gate.server.stop()

    async def status(running, user: str) -> int:
        async with client_session() as client:
            headers = {"Cookie": f"_gate_session={cookies[user]}"}
            async with client.get(running.url + "/x", headers=headers) as resp:
                return resp.status

    try:
        # A restart with the same configuration keeps every session...
        same = await start_gate(before)
        try:
            assert [await status(same, u) for u in ("alice", "bob")] == [200, 200]
        finally:
            await same.server.stop()
        # ...other restrictions end them all, bob (no longer admitted) included.
        changed = await start_gate(after)
        try:
            assert [await status(changed, u) for u in ("alice", "bob")] == [401, 401]
            async with client_session() as client:
                await dev_login(client, changed.url, "alice")  # signing in again works
                async with client.get(changed.url + "/x") as resp:
                    assert resp.status == 200
        finally:
            await changed.server.stop()
    finally:
        await upstream.stop()
