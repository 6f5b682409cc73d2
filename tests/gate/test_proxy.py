"""gate's proxy against real loopback upstreams: streaming, WebSockets, headers, paths."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time

import aiohttp
import bcrypt
import pytest
import pytest_asyncio
from yarl import URL

from tests.gate.conftest import client_session, dev_config, dev_login, pploy_log, start_gate

pytestmark = pytest.mark.asyncio(loop_scope="module")

HTML = {"Accept": "text/html,application/xhtml+xml"}


@pytest.fixture(scope="module")
def htdocs(tmp_path_factory):
    root = tmp_path_factory.mktemp("htdocs")
    (root / "index.html").write_text("<h1>home</h1>")
    (root / "docs").mkdir()
    (root / "docs" / "index.html").write_text("docs index")
    (root / "docs" / "page.txt").write_text("a page")
    (root / ".secret").write_text("dotfile")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("git config")
    outside = root.parent / "outside.txt"
    outside.write_text("outside the root")
    (root / "escape.txt").symlink_to(outside)
    return root


@pytest.fixture(scope="module")
def htpasswd(tmp_path_factory):
    path = tmp_path_factory.mktemp("auth") / "htpasswd"
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode().replace("$2b$", "$2y$")
    path.write_text(f"# users\nrobot:{hashed}\nlegacy:{{SHA}}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n")
    return path


@pytest_asyncio.fixture(
    scope="module", loop_scope="module", params=[True, False], ids=["fast_path", "aiohttp"]
)
async def gate(request, upstream, htdocs, htpasswd):
    """gate with each front end: its fast path (the default) and aiohttp's server alone."""
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    config = dev_config(
        htdocs=str(htdocs),
        proxy=[
            # first: the first listed matching entry wins, as in typester/gate
            {"path": "/app/deep", "dest": upstream.url + "/base", "strip_path": True},
            {
                "path": "/app",
                "dest": upstream.url,
                "strip_path": True,
                "assertion_audience": "pploy",
            },
            {"path": "/keep", "dest": upstream.url},
            {"path": "/vhost", "dest": upstream.url + "/vhost-a", "host": "a.test"},
            {"path": "/vhost", "dest": upstream.url + "/vhost-any"},
            {"path": "/down", "dest": f"http://127.0.0.1:{dead.getsockname()[1]}"},
        ],
    )
    config["auth"]["htpasswd"] = str(htpasswd)
    config["auth"]["allow_networks"] = ["192.0.2.0/24"]
    config["identity_headers"] = {"strip": ["X-Employee"]}
    config["allowed_hosts"] = ["b.test"]
    config["fast_path"] = request.param
    running = await start_gate(config)
    yield running
    await running.server.stop()
    dead.close()


@pytest_asyncio.fixture(loop_scope="module")
async def client(gate, upstream):
    upstream.reset()
    async with client_session() as session:
        await dev_login(session, gate.url, "alice@example.com")
        yield session


@pytest_asyncio.fixture(loop_scope="module")
async def anon(upstream):
    upstream.reset()
    async with client_session() as session:
        yield session


def header_map(record: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in record["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


# --- basics ---------------------------------------------------------------------------------


async def test_ping_needs_no_login(gate, anon):
    async with anon.get(gate.url + "/ping") as resp:
        assert resp.status == 200
        assert await resp.text() == "pong\n"


async def test_browser_without_session_is_sent_to_login(gate, anon):
    async with anon.get(gate.url + "/app/page?x=1", headers=HTML, allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == "/login?next=/app/page%3Fx%3D1"


@pytest.mark.parametrize(
    "headers",
    [
        {"Accept": "application/json"},
        {"Accept": "text/html", "X-Requested-With": "XMLHttpRequest"},
        {"Accept": "*/*"},
    ],
)
async def test_non_browser_without_session_gets_401(gate, anon, upstream, headers):
    async with anon.get(gate.url + "/app/x", headers=headers, allow_redirects=False) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Basic")
    assert upstream.requests == []


async def test_static_files_need_login_too(gate, anon):
    async with anon.get(gate.url + "/docs/page.txt", allow_redirects=False) as resp:
        assert resp.status == 401


async def test_proxy_strips_prefix_and_passes_query(gate, client, upstream):
    async with client.get(URL(gate.url + "/app/some/path?q=%2F&b=2", encoded=True)) as resp:
        assert resp.status == 200
        record = await resp.json()
    assert record["raw_path"] == "/some/path?q=%2F&b=2"


async def test_the_more_specific_entry_listed_first_wins(gate, client):
    async with client.get(gate.url + "/app/deep/x") as resp:
        assert (await resp.json())["raw_path"] == "/base/x"
    async with client.get(gate.url + "/app/deeper") as resp:
        assert (await resp.json())["raw_path"] == "/deeper"


async def test_without_strip_path_the_prefix_stays(gate, client):
    async with client.get(gate.url + "/keep/x") as resp:
        assert (await resp.json())["raw_path"] == "/keep/x"


async def test_prefix_without_slash_redirects(gate, client):
    async with client.get(gate.url + "/app?a=1", allow_redirects=False) as resp:
        assert resp.status == 302  # typester/gate's status
        assert resp.headers["Location"] == "/app/?a=1"


async def test_prefix_matches_whole_segments_only(gate, client):
    async with client.get(gate.url + "/application", allow_redirects=False) as resp:
        assert resp.status == 404


async def test_host_routing(gate, client):
    async with client.get(gate.url + "/vhost/x", headers={"Host": "a.test"}) as resp:
        assert (await resp.json())["raw_path"] == "/vhost-a/vhost/x"
    async with client.get(gate.url + "/vhost/x", headers={"Host": "b.test:8080"}) as resp:
        assert (await resp.json())["raw_path"] == "/vhost-any/vhost/x"


async def test_upstream_down_gives_502_page_quickly(gate, client):
    started = time.monotonic()
    async with client.get(gate.url + "/down/x", headers=HTML) as resp:
        assert resp.status == 502
        assert "Upstream unavailable" in await resp.text()
    assert time.monotonic() - started < 2


async def test_request_body_is_streamed_upstream(gate, client):
    async def body():
        for _ in range(20):
            yield b"y" * 50_000

    async with client.post(gate.url + "/app/upload", data=body()) as resp:
        assert resp.status == 200
        assert (await resp.json())["bytes"] == 1_000_000


async def test_content_length_and_encoding_pass_through(gate, client):
    async with client.get(gate.url + "/app/fixed") as resp:
        assert resp.headers["Content-Length"] == "1000"
        assert "X-Accel-Buffering" not in resp.headers
        assert len(await resp.read()) == 1000
    async with client.get(gate.url + "/app/gzip", auto_decompress=False) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        import gzip

        assert gzip.decompress(await resp.read()) == b"hello " * 100


async def test_head_request(gate, client):
    async with client.head(gate.url + "/app/fixed") as resp:
        assert resp.status == 200
        assert await resp.read() == b""


# --- streaming ------------------------------------------------------------------------------


async def test_chunked_drip_arrives_chunk_by_chunk(gate, client, upstream):
    # The upstream writes line i, then waits for our ack before writing line i+1: each line
    # must cross gate on its own, or this test times out.
    async with client.get(gate.url + "/app/drip?n=6") as resp:
        assert resp.status == 200
        assert resp.headers["X-Accel-Buffering"] == "no"
        assert "Content-Length" not in resp.headers
        for i in range(6):
            line = await asyncio.wait_for(resp.content.readline(), 5)
            assert line == f"line {i}\n".encode()
            await upstream.acks.put(i)
        assert await asyncio.wait_for(resp.content.read(), 5) == b""


async def test_sized_body_arriving_in_pieces_is_not_held(gate, client, upstream):
    async with client.get(gate.url + "/app/sized-drip") as resp:
        assert resp.headers["Content-Length"] == "14"
        assert await asyncio.wait_for(resp.content.readline(), 5) == b"part 0\n"
        await upstream.acks.put(0)
        assert await asyncio.wait_for(resp.content.read(), 5) == b"part 1\n"


async def test_sse_events_arrive_one_by_one(gate, client, upstream):
    async with client.get(gate.url + "/app/sse?n=4", headers={"Accept": "text/event-stream"}) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        assert r.headers["X-Accel-Buffering"] == "no"
        for i in range(4):
            event = b""
            while not event.endswith(b"\n\n"):
                event += await asyncio.wait_for(r.content.readline(), 5)
            assert event == f"id: {i}\ndata: event {i}\n\n".encode()
            await upstream.acks.put(i)


async def test_client_disconnect_cancels_upstream(gate, upstream):
    upstream.reset()
    async with client_session() as session:
        await dev_login(session, gate.url)
        resp = await session.get(gate.url + "/app/hang")
        assert await asyncio.wait_for(resp.content.readline(), 5) == b"first\n"
        await asyncio.wait_for(upstream.hang_started.wait(), 5)
        resp.close()  # drop the connection mid-stream
    await asyncio.wait_for(upstream.cancelled.wait(), 1.0)


async def test_many_long_streams_at_once(gate, upstream):
    # More concurrent streams than aiohttp's default pool (100) must not queue up.
    upstream.reset()
    async with client_session(connector=aiohttp.TCPConnector(limit=0)) as session:
        await dev_login(session, gate.url)
        responses = await asyncio.gather(*(session.get(gate.url + "/app/hang") for _ in range(110)))
        try:
            firsts = await asyncio.wait_for(
                asyncio.gather(*(r.content.readline() for r in responses)), 10
            )
            assert set(firsts) == {b"first\n"}
            assert gate.gate.metrics.open_streams >= 110
        finally:
            for r in responses:
                r.close()


# --- identity headers -----------------------------------------------------------------------


SPOOFED = {
    "X-Forwarded-User": "mallory",
    "X_Forwarded_Email": "mallory@example.com",
    "x-forwarded-email": "m2@example.com",
    "X-GATE-ASSERTION": "forged",
    "X-Gate-Anything": "x",
    "X_Gate_User": "mallory",
    "X-Auth-Request-User": "mallory",
    "X-Remote-User": "mallory",
    "Remote-User": "mallory",
    "X-Employee": "mallory",
    "X-Forwarded-For": "10.9.9.9",
    "X-Forwarded-Host": "evil.test",
    "X-Forwarded-Proto": "https",
    "Forwarded": "for=10.9.9.9",
}


async def test_spoofed_identity_headers_never_reach_upstream(gate, client, upstream):
    async with client.get(gate.url + "/app/whoami", headers=SPOOFED) as resp:
        record = await resp.json()
    headers = header_map(record)
    flat = json.dumps(record["headers"]).lower()
    assert "mallory" not in flat and "forged" not in flat and "10.9.9.9" not in flat
    assert headers["x-forwarded-user"] == ["alice@example.com"]
    assert headers["x-forwarded-email"] == ["alice@example.com"]
    assert len(headers["x-gate-assertion"]) == 1
    assert headers["x-forwarded-for"] == ["127.0.0.1"]
    assert headers["x-forwarded-proto"] == ["http"]
    assert headers["x-forwarded-host"] == [f"127.0.0.1:{gate.port}"]
    assert "x-employee" not in headers and "x-gate-anything" not in headers
    assert all("_" not in name for name in headers)


async def test_raw_underscore_header_is_stripped(gate, upstream):
    """Send the header bytes by hand, exactly as a hostile client would."""
    upstream.reset()
    async with client_session() as session:
        await dev_login(session, gate.url)
        cookie = "; ".join(f"{c.key}={c.value}" for c in session.cookie_jar)
    reader, writer = await asyncio.open_connection("127.0.0.1", gate.port)
    writer.write(
        (
            f"GET /app/raw HTTP/1.1\r\nHost: 127.0.0.1:{gate.port}\r\nCookie: {cookie}\r\n"
            "X_FORWARDED_USER: mallory\r\nx_gate_assertion: forged\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert b" 200 " in data.split(b"\r\n", 1)[0]
    flat = json.dumps(upstream.requests[-1]["headers"]).lower()
    assert "mallory" not in flat and "forged" not in flat


async def test_assertion_verifies_with_gate_jwks(gate, client):
    from pploy.identity import AssertionVerifier, Identity

    async with client.get(gate.url + "/app/whoami") as resp:
        headers = header_map(await resp.json())
    verifier = AssertionVerifier(
        audience="pploy", jwks_url=gate.url + "/.well-known/gate/jwks.json"
    )
    try:
        identity = await verifier.verify(headers["x-gate-assertion"][0])
    finally:
        await verifier.close()
    assert identity == Identity(user="alice@example.com", email="alice@example.com")


async def test_jwks_is_public(gate, anon):
    async with anon.get(gate.url + "/.well-known/gate/jwks.json") as resp:
        assert resp.status == 200
        document = await resp.json()
    assert [k["kty"] for k in document["keys"]] == ["EC"]
    assert "d" not in document["keys"][0]


async def test_hop_by_hop_headers_are_removed(gate, client, upstream):
    headers = {
        "Connection": "keep-alive, X-Drop-Me",
        "X-Drop-Me": "1",
        "TE": "trailers",
        "Keep-Alive": "timeout=5",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==",
    }
    async with client.get(gate.url + "/app/hop", headers=headers) as resp:
        record = await resp.json()
        assert "X-Secret-Hop" not in resp.headers
        assert "Keep-Alive" not in resp.headers
    sent = header_map(record)
    for name in ("x-drop-me", "te", "keep-alive", "proxy-authorization"):
        assert name not in sent


async def test_gate_cookies_are_not_sent_upstream(gate, client):
    client.cookie_jar.update_cookies({"app_pref": "dark"})
    async with client.get(gate.url + "/app/cookies") as resp:
        sent = header_map(await resp.json())
    assert sent["cookie"] == ["app_pref=dark"]


async def test_request_id_passed_upstream_and_returned(gate, client):
    async with client.get(gate.url + "/app/rid", headers={"X-Request-Id": "client-chosen"}) as r:
        sent = header_map(await r.json())
        returned = r.headers["X-Request-Id"]
    # Not from a trusted proxy: the client's id is replaced by gate's own.
    assert sent["x-request-id"] == [returned]
    assert returned != "client-chosen" and len(returned) == 32


async def test_access_log_line_per_request(gate, client):
    with pploy_log() as (lines, arrived):
        async with client.get(gate.url + "/app/logged") as resp:
            rid = resp.headers["X-Request-Id"]
            await resp.read()
        # The line is written when the handler finishes, which may be just after we read.
        while not any(f"rid={rid}" in line for line in lines):
            arrived.clear()
            await asyncio.wait_for(arrived.wait(), 5)
    mine = [line for line in lines if "event=gate.access" in line and f"rid={rid}" in line]
    assert len(mine) == 1
    assert "status=200" in mine[0] and "user=alice@example.com" in mine[0]
    assert "path=/app/logged" in mine[0]


# --- other ways in --------------------------------------------------------------------------


async def test_htpasswd_basic_auth(gate, anon, upstream):
    good = base64.b64encode(b"robot:s3cret").decode()
    async with anon.get(gate.url + "/app/x", headers={"Authorization": f"Basic {good}"}) as r:
        assert r.status == 200
        sent = header_map(await r.json())
    assert sent["x-forwarded-user"] == ["robot"]
    assert "authorization" not in sent
    for creds in (b"robot:wrong", b"legacy:anything", b"nobody:s3cret", b"garbage"):
        value = base64.b64encode(creds).decode()
        async with anon.get(gate.url + "/app/x", headers={"Authorization": f"Basic {value}"}) as r:
            assert r.status == 401


async def test_allowed_network_needs_a_trusted_proxy_to_count(gate, anon):
    # 192.0.2.0/24 is allowed, but X-Forwarded-For from an untrusted peer is ignored.
    async with anon.get(gate.url + "/app/x", headers={"X-Forwarded-For": "192.0.2.7"}) as r:
        assert r.status == 401


async def test_metrics_behind_auth(gate, client, anon):
    async with anon.get(gate.url + "/_gate/metrics") as resp:
        assert resp.status == 401
    async with client.get(gate.url + "/_gate/metrics") as resp:
        text = await resp.text()
    assert "gate_requests_total" in text and "gate_open_websockets" in text
    assert 'gate_logins_total{provider="dev",result="ok"}' in text


# --- cookies --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["garbage", "g1.", "g1.!!!!", "g1." + "A" * 3000, "g1." + "A" * 5000, "\u00e9t\u00e9", ""],
)
async def test_garbage_or_oversized_session_cookie_is_ignored(gate, value):
    async with client_session() as session:
        session.cookie_jar.update_cookies({"_gate_session": value})
        async with session.get(gate.url + "/app/x", allow_redirects=False) as resp:
            assert resp.status == 401


async def test_huge_cookie_header_is_refused_cleanly(gate):
    async with client_session() as session:
        headers = {"Cookie": "; ".join(f"c{i}={'v' * 100}" for i in range(200))}
        async with session.get(gate.url + "/app/x", headers=headers) as resp:
            assert resp.status in (400, 401, 431)
        async with session.get(gate.url + "/ping") as resp:
            assert resp.status == 200


# --- path tricks ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/app/%2e%2e/keep/x",
        "/app/..%2fkeep",
        "/app/%2E%2E%2Fkeep",
        "/app/%252e%252e/x",
        "/app/..\\keep",
        "/app/.%2e/x",
        "/app/x/../../keep",
    ],
)
async def test_dot_segments_are_refused(gate, client, upstream, path):
    reader, writer = await asyncio.open_connection("127.0.0.1", gate.port)
    cookie = "; ".join(f"{c.key}={c.value}" for c in client.cookie_jar)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{gate.port}\r\nCookie: {cookie}\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert data.startswith(b"HTTP/1.1 400"), data[:100]
    assert upstream.requests == []


async def test_encoded_hash_and_slash_stay_in_their_route(gate, client):
    async with client.get(gate.url + "/app%23/x", allow_redirects=False) as resp:
        assert resp.status == 404  # "/app#" is not "/app"
    async with client.get(URL(gate.url + "/app/a%23b%2Fc?x", encoded=True)) as resp:
        assert (await resp.json())["raw_path"] == "/a%23b%2Fc?x"


async def test_duplicate_slashes_collapse(gate, client):
    async with client.get(gate.url + "//app//x//y") as resp:
        assert (await resp.json())["raw_path"] == "/x/y"


async def test_query_string_does_not_pick_the_route(gate, client):
    async with client.get(gate.url + "/nothing?/app/x", allow_redirects=False) as resp:
        assert resp.status == 404


async def test_htdocs_serves_files(gate, client):
    async with client.get(gate.url + "/docs/page.txt") as resp:
        assert resp.status == 200 and await resp.text() == "a page"
    async with client.get(gate.url + "/docs", allow_redirects=False) as resp:
        assert resp.status == 301 and resp.headers["Location"] == "/docs/"
    async with client.get(gate.url + "/docs/") as resp:
        assert await resp.text() == "docs index"
    async with client.get(gate.url + "/") as resp:
        assert await resp.text() == "<h1>home</h1>"


@pytest.mark.parametrize(
    "path",
    [
        "/.secret",
        "/.git/config",
        "/docs/%2e%2e/%2e%2e/outside.txt",
        "/escape.txt",
        "/%2e%2e/outside.txt",
        "/docs%2f..%2f..%2foutside.txt",
        "/nope.txt",
    ],
)
async def test_htdocs_refuses_escapes_and_dotfiles(gate, client, path):
    reader, writer = await asyncio.open_connection("127.0.0.1", gate.port)
    cookie = "; ".join(f"{c.key}={c.value}" for c in client.cookie_jar)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{gate.port}\r\nCookie: {cookie}\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    status = int(data.split(b" ", 2)[1])
    assert status in (400, 404)
    assert b"outside the root" not in data and b"dotfile" not in data and b"git config" not in data


# --- WebSocket ------------------------------------------------------------------------------


async def test_websocket_text_and_binary_echo(gate, client, upstream):
    async with client.ws_connect(gate.url + "/app/ws", protocols=("chat",)) as ws:
        assert ws.protocol == "chat"
        await ws.send_str("hello")
        assert (await ws.receive(timeout=5)).data == "echo:hello"
        await ws.send_bytes(b"\x00\x01\xff")
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.BINARY and msg.data == b"echo:\x00\x01\xff"
    sent = header_map(upstream.requests[-1])
    assert sent["x-forwarded-user"] == ["alice@example.com"]


async def test_upstream_close_code_and_reason_reach_client(gate, client):
    async with client.ws_connect(gate.url + "/app/ws-bye") as ws:
        assert (await ws.receive(timeout=5)).data == "hello"
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert (msg.data, msg.extra) == (4001, "bye")
    assert ws.close_code == 4001


async def test_client_close_code_and_reason_reach_upstream(gate, client, upstream):
    ws = await client.ws_connect(gate.url + "/app/ws")
    await ws.send_str("x")
    await ws.receive(timeout=5)
    await ws.close(code=4002, message=b"client says bye")
    assert await asyncio.wait_for(upstream.ws_closes.get(), 5) == (4002, "client says bye")


async def test_websocket_upgrade_without_session_is_refused(gate, anon, upstream):
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await anon.ws_connect(gate.url + "/app/ws", headers=HTML)
    assert info.value.status == 401
    assert upstream.requests == []


async def test_websocket_from_another_origin_is_refused(gate, client, upstream):
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect(gate.url + "/app/ws", origin="https://evil.test")
    assert info.value.status == 403
    ws = await client.ws_connect(gate.url + "/app/ws", origin=gate.url)
    await ws.close()


async def test_refused_upgrade_passes_status_and_opens_no_tunnel(gate, client):
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect(gate.url + "/app/ws-refuse")
    assert info.value.status == 403


async def test_raw_refused_upgrade_is_a_plain_response(gate, client):
    """No raw tunnel: after the refusal the connection speaks HTTP, not the upstream's bytes."""
    cookie = "; ".join(f"{c.key}={c.value}" for c in client.cookie_jar)
    reader, writer = await asyncio.open_connection("127.0.0.1", gate.port)
    writer.write(
        (
            f"GET /app/ws-refuse HTTP/1.1\r\nHost: 127.0.0.1:{gate.port}\r\nCookie: {cookie}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            f"GET /ping HTTP/1.1\r\nHost: 127.0.0.1:{gate.port}\r\nConnection: close\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert data.startswith(b"HTTP/1.1 403")
    assert b"101 Switching" not in data
    assert b"pong" in data  # the second request was answered by gate itself


async def test_upstream_ws_down_gives_502(gate, client):
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect(gate.url + "/down/ws")
    assert info.value.status == 502


async def test_other_upgrade_is_not_tunnelled(gate, client):
    async with client.get(
        gate.url + "/app/h2c", headers={"Upgrade": "h2c", "Connection": "Upgrade"}
    ) as resp:
        sent = header_map(await resp.json())
    assert "upgrade" not in sent


async def test_metrics_on_their_own_address(upstream):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = dev_config(proxy=[{"path": "/", "dest": upstream.url}])
    config["metrics"] = {"address": f"127.0.0.1:{port}"}
    config["access_log"] = {"format": False}  # YAML's unquoted `off`
    running = await start_gate(config)
    try:
        async with client_session() as session:
            async with session.get(running.url + "/_gate/metrics", allow_redirects=False) as r:
                assert r.status == 401  # not served on the main address at all
            async with session.get(f"http://127.0.0.1:{port}/metrics") as r:
                assert r.status == 200
                assert "gate_requests_total" in await r.text()
    finally:
        await running.server.stop()


async def test_websocket_heartbeat_keeps_idle_tunnel_open(upstream):
    config = dev_config(proxy=[{"path": "/", "dest": upstream.url}])
    config["upstream"] = {"websocket_heartbeat": 0.1}
    running = await start_gate(config)
    try:
        async with client_session() as session:
            await dev_login(session, running.url)
            async with session.ws_connect(running.url + "/ws", autoping=False) as ws:
                # gate pings the idle client; answer, and the tunnel stays up.
                msg = await ws.receive(timeout=5)
                assert msg.type == aiohttp.WSMsgType.PING
                await ws.pong(msg.data)
                await ws.send_str("still here")
                reply = await ws.receive(timeout=5)
                while reply.type == aiohttp.WSMsgType.PING:
                    await ws.pong(reply.data)
                    reply = await ws.receive(timeout=5)
                assert reply.data == "echo:still here"
    finally:
        await running.server.stop()


async def test_strip_path_route_sends_the_stripped_prefix(gate, client):
    """pploy builds its links with X-Forwarded-Prefix; only a strip_path route sends it, and
    a client's own value never passes."""
    spoof = {"X-Forwarded-Prefix": "/evil"}
    async with client.get(gate.url + "/app/whoami", headers=spoof) as resp:
        assert header_map(await resp.json())["x-forwarded-prefix"] == ["/app"]
    async with client.get(gate.url + "/app/deep/x", headers=spoof) as resp:
        assert header_map(await resp.json())["x-forwarded-prefix"] == ["/app/deep"]
    async with client.get(gate.url + "/keep/x", headers=spoof) as resp:
        assert "x-forwarded-prefix" not in header_map(await resp.json())


# --- which front end ------------------------------------------------------------------------


FRONT_ENDS = [
    # (method, path, extra request arguments, served by the fast path when it is on)
    ("GET", "/app/plain", {}, True),
    ("HEAD", "/app/plain", {}, True),
    ("GET", "/app/drip?n=0", {}, True),
    ("DELETE", "/keep/x", {}, True),
    ("POST", "/app/upload", {"data": b"a body"}, False),
    ("GET", "/app/x", {"headers": {"Expect": "100-continue"}}, False),
    ("GET", "/_gate/metrics", {}, False),
    ("GET", "/docs/page.txt", {}, False),  # htdocs
    ("GET", "/app", {"allow_redirects": False}, False),  # gate's /prefix redirect
    ("GET", "/ping", {}, False),
]


async def test_each_request_is_served_by_the_front_end_meant_for_it(gate, client, upstream):
    """Every request of this suite is answered by the fast path when it is on (the default)
    and the request is one it takes, by aiohttp's server otherwise: the fast path's counter
    moves by one for exactly those. Each on a fresh connection with the session's cookie (a
    connection handed over stays with aiohttp's server)."""
    fast_path = gate.server.config.fast_path
    cookie = "; ".join(f"{c.key}={c.value}" for c in client.cookie_jar)
    metrics = gate.gate.metrics
    for method, path, extra, fast in FRONT_ENDS:
        before = metrics.fast_path_requests
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True), headers={"Cookie": cookie}
        ) as fresh:
            async with fresh.request(method, gate.url + path, **extra) as resp:
                assert resp.status < 400, (method, path, resp.status)
                await resp.read()
        assert metrics.fast_path_requests - before == (1 if fast and fast_path else 0), (
            method,
            path,
        )
    # The suite's own session, once signed in, is served by the fast path too.
    before = metrics.fast_path_requests
    async with client.get(gate.url + "/app/after-login") as resp:
        assert resp.status == 200
    assert metrics.fast_path_requests - before == (1 if fast_path else 0)
