"""The opened-session cache: a browser's cookie is opened once, but the cache never admits a
session past the expiry sealed inside its cookie, and it stays bounded."""

from __future__ import annotations

from pploy.gate import auth as auth_module
from tests.gate.conftest import client_session, dev_config, dev_login, start_gate


async def test_a_cached_session_ends_at_its_cookie_expiry_and_leaves_the_cache():
    gate = await start_gate(dev_config(auth={
        "session": {"key": "k" * 32, "lifetime": "1h"}, "info": {"service": "dev"},
    }))  # fmt: skip
    real_clock = gate.gate.clock
    try:
        async with client_session() as client:
            await dev_login(client, gate.url)
            for _ in range(3):  # opened once, then served from the cache
                async with client.get(gate.url + "/_gate/metrics") as resp:
                    assert resp.status == 200
            assert len(gate.gate.auth._sessions) == 1
            gate.gate.clock = lambda: real_clock() + 3599
            async with client.get(gate.url + "/_gate/metrics") as resp:
                assert resp.status == 200
            gate.gate.clock = lambda: real_clock() + 3601
            async with client.get(gate.url + "/_gate/metrics") as resp:
                assert resp.status == 401
            assert gate.gate.auth._sessions == {}
    finally:
        gate.gate.clock = real_clock
        await gate.server.stop()


async def test_the_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(auth_module, "SESSION_CACHE_SIZE", 3)
    gate = await start_gate(dev_config())
    try:
        for user in ("a", "b", "c", "d", "e"):
            async with client_session() as client:
                await dev_login(client, gate.url, user)
                async with client.get(gate.url + "/_gate/metrics") as resp:
                    assert resp.status == 200
            assert len(gate.gate.auth._sessions) <= 3
    finally:
        await gate.server.stop()
