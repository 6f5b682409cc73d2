"""Every request must name a host gate serves: a DNS-rebinding page's own name resolving to
gate must neither borrow the victim's network (auth.allow_networks) nor ride a session."""

from __future__ import annotations

import pytest

from pploy.gate.config import GateConfig
from tests.gate.conftest import client_session, dev_config, dev_login, gate_command, start_gate
from tests.gate.upstream import Upstream
from tests.gate.wire import Conn, read_reply


def test_serves_host_names():
    data = dev_config(proxy=[{"path": "/", "dest": "http://127.0.0.1:1", "host": "Docs.Test"}])
    data["auth"]["session"]["cookie_domain"] = ".corp.example"
    data["auth"]["info"]["redirect_url"] = "https://deploy.example.com/oauth2callback"
    data["allowed_hosts"] = ["deploy.internal"]
    config = GateConfig.model_validate(data)
    served = ["127.0.0.1", "[::1]", "localhost", "docs.test", "deploy.example.com"]
    served += ["corp.example", "a.corp.example", "deploy.internal", "DEPLOY.INTERNAL."]
    for host in served:
        assert config.serves_host(host), host
    for host in ("", "evil.example", "corp.example.evil.test", "xcorp.example", "deploy.example"):
        assert not config.serves_host(host), host


async def test_network_admission_only_for_known_host_names():
    upstream = Upstream()
    await upstream.start()
    config = dev_config(proxy=[{"path": "/", "dest": upstream.url}])
    config["auth"]["allow_networks"] = ["127.0.0.0/8"]
    config["allowed_hosts"] = ["deploy.internal"]
    gate = await start_gate(config)
    try:
        port = gate.url.rsplit(":", 1)[1].rstrip("/")
        async with client_session() as anon:
            for host in ("evil.example", f"evil.example:{port}"):
                async with anon.get(gate.url + "/x", headers={"Host": host}) as resp:
                    assert resp.status == 421, host
                    assert "allowed_hosts" in await resp.text()
            assert upstream.requests == []  # nothing reached the upstream
            for host in (f"127.0.0.1:{port}", "deploy.internal", "localhost"):
                async with anon.get(gate.url + "/x", headers={"Host": host}) as resp:
                    assert resp.status == 200, host
        # A logged-in user's cookie does not lift the check either: every request must name
        # a host gate serves, or a rebinding page would ride the session.
        async with client_session() as client:
            await dev_login(client, gate.url, "alice@example.com")
            async with client.get(gate.url + "/x", headers={"Host": "other.test"}) as resp:
                assert resp.status == 421
            async with client.get(gate.url + "/x") as resp:
                assert resp.status == 200
        assert [r["raw_path"] for r in upstream.requests] == ["/x"] * 4
    finally:
        await gate.server.stop()
        await upstream.stop()


@pytest.mark.slow  # a `pploy gate` process each
@pytest.mark.parametrize("fast_path", [True, False], ids=["fast_path", "aiohttp"])
async def test_a_host_that_is_not_host_and_port_is_refused(tmp_path, fast_path):
    """Issue 21: ``Host: <served-name>:1@evil.example`` passed the check (the text before the
    last ``:`` was taken as the name) and reached the upstream as X-Forwarded-Host. Anything
    but ``host[:port]`` is a 400 now, on both front ends, through ``pploy gate``."""
    upstream = Upstream()
    await upstream.start()
    config = {**dev_config(proxy=[{"path": "/", "dest": upstream.url}]), "fast_path": fast_path}
    try:
        async with gate_command(config, tmp_path) as gate, client_session() as browser:
            await dev_login(browser, gate.url, "alice")
            cookie = "; ".join(f"{c.key}={c.value}" for c in browser.cookie_jar)
            served = f"127.0.0.1:{gate.port}"
            hostile = [
                f"{served}@evil.example",
                "127.0.0.1:1@evil.example",
                "localhost:1@evil.example",
                f"evil.example@{served}",
                f"{served}/evil",
                f"{served}?evil",
                f"{served}#evil",
                "127.0.0.1 evil.example",
                f"{served}:{gate.port}",
                "127.0.0.1:99999",
                "127.0.0.1:",
                "127.0.0.1\\@evil.example",
                "127.0.0.1%40evil.example",
            ]
            for host in hostile:
                conn = await Conn.open(gate)
                try:
                    reply = await conn.get("/x", cookie)
                    assert reply.status == 200  # first a request on the same connection
                    await conn.send(conn.head("GET", "/y", cookie, host=host))
                    reply = await read_reply(conn.reader)
                    assert reply.status == 400, (host, reply)
                    assert b"host[:port]" in reply.body
                finally:
                    await conn.close()
            assert [r["raw_path"] for r in upstream.requests] == ["/x"] * len(hostile)
            forwarded = {
                v for r in upstream.requests for k, v in r["headers"] if k == "X-Forwarded-Host"
            }
            assert forwarded == {served}
            # What host[:port] allows still passes.
            for host in (served, "localhost", f"[::1]:{gate.port}", "LOCALHOST:80"):
                conn = await Conn.open(gate)
                try:
                    await conn.send(conn.head("GET", "/ok", cookie, host=host))
                    reply = await read_reply(conn.reader)
                    assert reply.status == 200, (host, reply)
                finally:
                    await conn.close()
    finally:
        await upstream.stop()
