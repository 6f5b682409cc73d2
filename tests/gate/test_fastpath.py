"""gate on the wire, for the fast path: raw keep-alive connections, pipelining, handing
requests over to aiohttp mid-connection, smuggling attempts, streaming, and the counters.

Everything behavioural here holds for gate served wholly by aiohttp today and must keep
holding once the fast path (a raw asyncio protocol in front of aiohttp) serves plain proxied
GET/HEAD requests itself and hands every other connection over. The tests that read the fast
path's own counters are named ``test_*_served_by_the_fast_path`` / ``test_*_handed_over*``
and fail until those counters exist:

- ``test_logged_in_gets_are_served_by_the_fast_path``
- ``test_connection_is_handed_over_to_aiohttp[...]`` (one per reason to hand over)

Real servers on loopback only; streaming tests synchronise through the upstream's acks.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import re
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from tests.gate.conftest import (
    client_session,
    dev_config,
    dev_login,
    pploy_log,
    serving,
    start_gate,
)
from tests.gate.upstream import RawUpstream
from tests.gate.wire import (
    WAIT,
    Conn,
    at_eof,
    header_map,
    metric,
    paths_seen,
    read_body,
    read_chunk,
    read_head,
    read_reply,
    read_until_closed,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

BIG_SIZE = 5 * 1024 * 1024
BIG_BODY = random.Random(20240601).randbytes(BIG_SIZE)


# --- a raw upstream, for responses aiohttp's server will not write as they are -------------


class CannedUpstream(RawUpstream):
    """Answers with canned bytes (keep-alive), or never (``/silent``); records request heads."""

    CHUNKED = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
        b"Trailer: X-Checksum\r\n\r\n"
        b"5;name=value\r\nhello\r\nA\r\n0123456789\r\n1\r\n!\r\n0\r\nX-Checksum: 1\r\n\r\n"
    )

    def __init__(self) -> None:
        super().__init__()
        self.heads: list[bytes] = []
        self.connections = 0  # accepted so far

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                method, target = head.split(b" ", 2)[:2]
                served += 1
                if target.startswith(b"/once") and served > 1:
                    return  # a kept connection the server drops as the next request comes
                if target.startswith(b"/silent"):
                    await reader.read()  # never answers; done when gate hangs up
                    return
                writer.write(self.answer(method, target))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def answer(self, method: bytes, target: bytes) -> bytes:
        if target == b"/204":
            return b"HTTP/1.1 204 No Content\r\nX-Kind: none\r\n\r\n"
        if target == b"/304":
            # A 304 may carry the representation's Content-Length; no body follows it.
            return (
                b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 1234\r\n'
                b"Cache-Control: max-age=60\r\n\r\n"
            )
        if target == b"/head-sized":
            # HEAD: the Content-Length of what a GET would send, and no body.
            if method == b"HEAD":
                return (
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5000\r\n\r\n"
                )
            return (
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5000\r\n\r\n"
                + (b"h" * 5000)
            )
        if target == b"/big":
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {BIG_SIZE}\r\n\r\n"
            return head.encode() + BIG_BODY
        if target == b"/chunked":
            return self.CHUNKED
        if target == b"/switch":
            # An upgrade nobody asked for: gate must not start relaying another protocol.
            return (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\n"
            )
        if target == b"/garbage":
            return b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n"
        if target.startswith(b"/once"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nonce"
        return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


# --- fixtures -------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def raw_upstream():
    async with serving(CannedUpstream()) as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gate(upstream, raw_upstream):
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    config = dev_config(
        proxy=[
            {
                "path": "/app",
                "dest": upstream.url,
                "strip_path": True,
                "assertion_audience": "pploy",
            },
            {"path": "/raw", "dest": raw_upstream.url, "strip_path": True},
            {"path": "/down", "dest": f"http://127.0.0.1:{dead.getsockname()[1]}"},
        ],
        # Identity under names of this config's own choosing: those are stripped from what a
        # client sends too, whatever their spelling.
        identity_headers={
            "user": "X-Team-User",
            "email": "X-Team-Email",
            "assertion": "X-Gate-Assertion",
            "strip": ["X-Employee"],
        },
    )
    running = await start_gate(config)
    yield running
    await running.server.stop()
    dead.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cookie(gate):
    """A valid session cookie, as a Cookie header value."""
    async with client_session() as session:
        await dev_login(session, gate.url, "alice@example.com")
        return "; ".join(f"{c.key}={c.value}" for c in session.cookie_jar)


@pytest_asyncio.fixture(loop_scope="module")
async def conn(gate, upstream, raw_upstream) -> AsyncIterator[Conn]:
    upstream.reset()
    raw_upstream.heads.clear()
    connection = await Conn.open(gate)
    yield connection
    await connection.close()


# --- keep-alive, pipelining, handing over mid-connection -----------------------------------


async def test_keep_alive_gets_then_a_post_with_a_body_then_a_get(gate, conn, cookie, upstream):
    for i in range(4):
        reply = await conn.get(f"/app/k{i}?n={i}", cookie)
        assert reply.status == 200 and not reply.closes
        record = reply.json()
        assert (record["method"], record["raw_path"]) == ("GET", f"/k{i}?n={i}")
        assert reply.header("X-Request-Id")
    body = b'{"posted": true}'
    await conn.send(
        conn.head(
            "POST",
            "/app/posted",
            cookie,
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n",
        )
        + body
    )
    reply = await read_reply(conn.reader)
    assert reply.status == 200 and not reply.closes
    record = reply.json()
    assert (record["method"], record["raw_path"], record["body"]) == (
        "POST",
        "/posted",
        body.decode(),
    )
    reply = await conn.get("/app/after", cookie)
    assert reply.status == 200
    assert reply.json()["raw_path"] == "/after"
    assert paths_seen(upstream) == ["/k0?n=0", "/k1?n=1", "/k2?n=2", "/k3?n=3", "/posted", "/after"]


async def test_three_pipelined_gets_come_back_in_order(gate, conn, cookie, upstream):
    await conn.send(
        conn.head("GET", "/app/p1", cookie)
        + conn.head("GET", "/app/fixed", cookie)
        + conn.head("GET", "/app/p3", cookie)
    )
    first = await read_reply(conn.reader)
    second = await read_reply(conn.reader)
    third = await read_reply(conn.reader)
    assert [first.status, second.status, third.status] == [200, 200, 200]
    assert first.json()["raw_path"] == "/p1"
    assert second.header("Content-Length") == "1000" and second.body == b"x" * 1000
    assert third.json()["raw_path"] == "/p3"
    ids = {r.header("X-Request-Id") for r in (first, second, third)}
    assert len(ids) == 3
    # Nothing more on the wire: the connection is still usable, in step.
    assert (await conn.get("/app/p4", cookie)).json()["raw_path"] == "/p4"


async def test_pipelined_post_between_gets_is_handed_over_in_order(gate, conn, cookie, upstream):
    """The POST (with a body) needs aiohttp; the GET after it was already sent with it."""
    body = b"a=1&b=2"
    await conn.send(
        conn.head("GET", "/app/q1", cookie)
        + conn.head("POST", "/app/q2", cookie, f"Content-Length: {len(body)}\r\n")
        + body
        + conn.head("GET", "/app/q3", cookie)
    )
    replies = [await read_reply(conn.reader) for _ in range(3)]
    assert [r.status for r in replies] == [200, 200, 200]
    records = [r.json() for r in replies]
    assert [(r["method"], r["raw_path"], r["body"]) for r in records] == [
        ("GET", "/q1", ""),
        ("POST", "/q2", "a=1&b=2"),
        ("GET", "/q3", ""),
    ]


async def test_a_head_arriving_in_pieces(gate, conn, cookie, upstream):
    data = conn.head("GET", "/app/pieces?a=b", cookie, "Accept: */*\r\n")
    for cut in (data[:3], data[3:20], data[20:-3], data[-3:-1], data[-1:]):
        conn.writer.write(cut)
        await conn.writer.drain()
    reply = await read_reply(conn.reader)
    assert reply.status == 200 and reply.json()["raw_path"] == "/pieces?a=b"


async def test_post_with_an_empty_body(gate, conn, cookie, upstream):
    reply = await conn.get("/app/empty", cookie, "Content-Length: 0\r\n", method="POST")
    assert reply.status == 200
    record = reply.json()
    assert (record["method"], record["raw_path"], record["body"]) == ("POST", "/empty", "")
    assert (await conn.get("/app/after-empty", cookie)).status == 200


async def test_connection_close_from_the_client_is_honoured(gate, conn, cookie):
    reply = await conn.get("/app/bye", cookie, "Connection: close\r\n")
    assert reply.status == 200 and reply.json()["raw_path"] == "/bye"
    assert reply.closes
    assert await at_eof(conn.reader) == b""


async def test_a_header_line_too_long_is_refused(gate, conn, cookie, upstream):
    reply = await conn.get("/app/long", cookie, f"X-Long: {'v' * 10000}\r\n")
    assert reply.status in (400, 431)
    assert upstream.requests == []


async def test_headers_too_large_together_are_refused(gate, conn, cookie, upstream):
    many = "".join(f"X-Big-{i}: {'v' * 7000}\r\n" for i in range(10))
    reply = await conn.get("/app/many", cookie, many)
    assert reply.status == 431
    assert reply.header("X-Request-Id")
    assert upstream.requests == []


# --- what gate refuses or hands over -----------------------------------------------------


SMUGGLED = "GET /app/smuggled HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def _smuggling_attempts() -> dict[str, tuple[str, bytes]]:
    hidden = SMUGGLED.encode()
    chunked_hidden = f"{len(hidden):x}\r\n".encode() + hidden + b"\r\n0\r\n\r\n"
    return {
        # CL.TE: a Content-Length reader forwards the hidden request as body.
        "cl-te": (
            f"Content-Length: {5 + len(hidden)}\r\nTransfer-Encoding: chunked\r\n",
            b"0\r\n\r\n" + hidden,
        ),
        # TE.CL: a chunked reader sends the hidden request inside the chunk.
        "te-cl": ("Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", chunked_hidden),
        # Obfuscated Transfer-Encoding that one reader honours and another ignores.
        "te-space-before-colon": (
            f"Content-Length: {5 + len(hidden)}\r\nTransfer-Encoding : chunked\r\n",
            b"0\r\n\r\n" + hidden,
        ),
        "te-twice": (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n"
            f"Content-Length: {5 + len(hidden)}\r\n",
            b"0\r\n\r\n" + hidden,
        ),
        "cl-twice": (f"Content-Length: 0\r\nContent-Length: {len(hidden)}\r\n", hidden),
    }


@pytest.mark.parametrize("attempt", list(_smuggling_attempts()))
async def test_smuggling_attempt_after_a_get_never_reaches_the_upstream(
    gate, conn, cookie, upstream, attempt
):
    headers, body = _smuggling_attempts()[attempt]
    reply = await conn.get("/app/first", cookie)
    assert reply.status == 200
    await conn.send(conn.head("POST", "/app/carrier", cookie, headers) + body)
    reply = await read_reply(conn.reader)
    if reply.status == 400:
        # Refused: and the connection is closed, nothing else read from it.
        assert await at_eof(conn.reader) == b""
    else:
        # Treated safely: the carrier got its own answer; if gate then read the hidden
        # request (which has no cookie) as a request of its own, it refused it (401).
        assert reply.status == 200, reply
        assert reply.json()["raw_path"] == "/carrier"
        if not reply.closes:
            await conn.send(conn.head("GET", "/app/sync", cookie, "Connection: close\r\n"))
            replies = []
            while (rest := await read_until_closed(conn.reader)) is not None:
                replies.append(rest)
            assert replies and replies[-1].json()["raw_path"] == "/sync", replies
            assert all(r.status == 401 for r in replies[:-1]), replies
    # Another request over gate's upstream pool: a request queued on a pooled upstream
    # connection behind the carrier would be answered before this one.
    other = await Conn.open(gate)
    try:
        assert (await other.get("/app/last", cookie)).status == 200
    finally:
        await other.close()
    # As data inside a body gate framed itself it would be harmless; as a request, never.
    assert not [p for p in paths_seen(upstream) if "smuggled" in p], upstream.requests


async def test_bare_lf_request_head_gets_an_answer(gate, conn, cookie, upstream):
    await conn.send(
        f"GET /app/lf HTTP/1.1\nHost: {conn.host}\nCookie: {cookie}\n\n".encode("latin-1")
    )
    reply = await asyncio.wait_for(read_head(conn.reader), WAIT)
    assert reply.status in (200, 400), reply
    if reply.status == 200:
        await read_body(conn.reader, reply, "GET")
        assert reply.json()["raw_path"] == "/lf"


async def test_bare_lf_after_a_get_on_the_same_connection(gate, conn, cookie, upstream):
    assert (await conn.get("/app/ok", cookie)).status == 200
    await conn.send(
        f"GET /app/lf2 HTTP/1.1\nHost: {conn.host}\nCookie: {cookie}\n\n".encode("latin-1")
    )
    reply = await asyncio.wait_for(read_head(conn.reader), WAIT)
    assert reply.status in (200, 400), reply


async def test_duplicate_host_is_refused_and_reaches_nothing(gate, conn, cookie, upstream):
    await conn.send(
        conn.head("GET", "/app/dup", cookie, f"Host: {conn.host}\r\n")  # second Host line
    )
    reply = await read_reply(conn.reader)
    assert reply.status == 400
    assert "dup" not in " ".join(paths_seen(upstream))
    assert upstream.requests == []


async def test_duplicate_host_after_a_get_is_refused(gate, conn, cookie, upstream):
    assert (await conn.get("/app/before", cookie)).status == 200
    await conn.send(conn.head("GET", "/app/dup2", cookie, "Host: evil.test\r\n"))
    reply = await read_reply(conn.reader)
    assert reply.status == 400
    assert paths_seen(upstream) == ["/before"]


async def test_duplicate_content_length_on_a_get_is_refused(gate, conn, cookie, upstream):
    await conn.send(
        conn.head("GET", "/app/dupcl", cookie, "Content-Length: 0\r\nContent-Length: 5\r\n")
    )
    reply = await read_reply(conn.reader)
    assert reply.status == 400
    assert upstream.requests == []


async def test_http_1_0_get_is_answered(gate, conn, cookie, upstream):
    await conn.send(conn.head("GET", "/app/old?v=1.0", cookie, version="HTTP/1.0"))
    reply = await read_reply(conn.reader)
    assert reply.status == 200
    assert reply.json()["raw_path"] == "/old?v=1.0"
    assert await at_eof(conn.reader) == b""  # 1.0 without keep-alive: closed after


async def test_http_1_0_keep_alive_then_1_1(gate, conn, cookie, upstream):
    await conn.send(
        conn.head("GET", "/app/old-ka", cookie, "Connection: keep-alive\r\n", version="HTTP/1.0")
    )
    reply = await read_reply(conn.reader)
    assert reply.status == 200 and reply.json()["raw_path"] == "/old-ka"
    assert not reply.closes
    assert (await conn.get("/app/new", cookie)).json()["raw_path"] == "/new"


async def test_expect_100_continue_gets_the_body_through(gate, conn, cookie, upstream):
    await conn.send(
        conn.head("POST", "/app/expect", cookie, "Content-Length: 5\r\nExpect: 100-continue\r\n")
    )
    interim = await read_head(conn.reader)
    assert interim.status == 100
    await conn.send(b"hello")
    reply = await read_reply(conn.reader)
    assert reply.status == 200 and reply.json()["body"] == "hello"
    assert (await conn.get("/app/after-expect", cookie)).status == 200


async def test_upgrade_that_is_not_websocket_is_plain_http(gate, conn, cookie, upstream):
    reply = await conn.get("/app/h2c", cookie, "Connection: Upgrade\r\nUpgrade: h2c\r\n")
    assert reply.status == 200
    sent = header_map(reply.json())
    assert "upgrade" not in sent
    assert (await conn.get("/app/after-upgrade", cookie)).status == 200


# --- identity, cookies, Host --------------------------------------------------------------


SPOOF_LINES = (
    "X-Forwarded-User: mallory\r\n"
    "x_forwarded_user: mallory\r\n"
    "X-TEAM-USER: mallory\r\n"
    "x_team_user: mallory\r\n"
    "X-Team-Email: mallory@example.com\r\n"
    "x_Team_EMAIL: mallory@example.com\r\n"
    "X-GATE-ASSERTION: forged\r\n"
    "x_gate_assertion: forged\r\n"
    "X-Gate-Anything: forged\r\n"
    "X-Employee: mallory\r\n"
    "Remote-User: mallory\r\n"
    "X-Forwarded-For: 10.9.9.9\r\n"
    "Forwarded: for=10.9.9.9\r\n"
    "X-Request-Id: client-chosen\r\n"
)


async def test_spoofed_identity_on_a_kept_connection_never_reaches_upstream(
    gate, conn, cookie, upstream
):
    assert (await conn.get("/app/plain", cookie)).status == 200
    reply = await conn.get("/app/whoami", cookie, SPOOF_LINES)
    assert reply.status == 200
    record = reply.json()
    flat = json.dumps(record["headers"]).lower()
    assert "mallory" not in flat and "forged" not in flat and "10.9.9.9" not in flat
    sent = header_map(record)
    assert sent["x-team-user"] == ["alice@example.com"]
    assert sent["x-team-email"] == ["alice@example.com"]
    assert len(sent["x-gate-assertion"]) == 1
    assert "x-forwarded-user" not in sent and "x-employee" not in sent
    assert sent["x-forwarded-for"] == ["127.0.0.1"]
    assert sent["x-request-id"] == [reply.header("X-Request-Id")] != ["client-chosen"]
    assert all("_" not in name for name in sent)
    # The assertion is gate's, for the route's audience.
    from pploy.identity import AssertionVerifier, Identity

    verifier = AssertionVerifier(
        audience="pploy", jwks_url=gate.url + "/.well-known/gate/jwks.json"
    )
    try:
        identity = await verifier.verify(sent["x-gate-assertion"][0])
    finally:
        await verifier.close()
    assert identity == Identity(user="alice@example.com", email="alice@example.com")


async def test_gate_cookies_are_stripped_other_cookies_pass(gate, conn, cookie, upstream):
    jar = f"app_pref=dark; {cookie}; _gate_login=state; theme=x"
    reply = await conn.get("/app/cookies", jar)
    assert reply.status == 200
    sent = header_map(reply.json())
    assert sent["cookie"] == ["app_pref=dark; theme=x"]
    # Only gate's cookie: no Cookie header at all upstream.
    reply = await conn.get("/app/cookies2", cookie)
    assert "cookie" not in header_map(reply.json())


async def test_host_guard_on_a_kept_connection(gate, conn, cookie, upstream):
    assert (await conn.get("/app/good-host", cookie)).status == 200
    await conn.send(conn.head("GET", "/app/evil-host", cookie, host="evil.test"))
    reply = await read_reply(conn.reader)
    assert reply.status == 421
    assert reply.header("X-Request-Id")
    assert not reply.closes  # a refused Host costs the client its request, not the connection
    assert (await conn.get("/app/good-again", cookie)).status == 200
    assert "/evil-host" not in paths_seen(upstream)


async def test_not_logged_in_gets_401_json_or_the_login_redirect(gate, conn, upstream):
    reply = await conn.get("/app/private?x=1", None, "Accept: application/json\r\n")
    assert reply.status == 401
    assert reply.header("X-Request-Id")
    assert reply.header("Content-Type").startswith("application/json")
    assert reply.json() == {"error": "unauthenticated", "login": "/login"}
    reply = await conn.get(
        "/app/private?x=1", None, "Accept: text/html\r\nSec-Fetch-Mode: navigate\r\n"
    )
    assert reply.status == 302
    assert reply.header("Location") == "/login?next=/app/private%3Fx%3D1"
    assert reply.header("X-Request-Id")
    # A stale or forged session cookie is no session.
    reply = await conn.get("/app/private", "_gate_session=g1.forged", "Accept: */*\r\n")
    assert reply.status == 401
    assert upstream.requests == []


# --- bodies the upstream does or does not send --------------------------------------------


async def test_head_gives_headers_without_a_body_and_the_connection_stays_usable(
    gate, conn, cookie, raw_upstream
):
    reply = await conn.get("/raw/head-sized", cookie, method="HEAD")
    assert reply.status == 200
    assert reply.header("Content-Length") == "5000"
    reply = await conn.get("/app/fixed", cookie, method="HEAD")
    assert reply.status == 200
    assert reply.header("Content-Length") == "1000"
    # The next response must start right here: a body after the HEAD would be misread.
    reply = await conn.get("/raw/head-sized", cookie)
    assert reply.status == 200 and reply.body == b"h" * 5000
    reply = await conn.get("/app/after-head", cookie)
    assert reply.json()["raw_path"] == "/after-head"


async def test_204_and_304_have_no_body_and_keep_the_connection(gate, conn, cookie):
    reply = await conn.get("/raw/204", cookie)
    assert reply.status == 204 and reply.header("X-Kind") == "none"
    assert reply.header("Transfer-Encoding") is None
    reply = await conn.get("/raw/304", cookie, 'If-None-Match: "v1"\r\n')
    assert reply.status == 304 and reply.header("ETag") == '"v1"'
    assert reply.header("Content-Length") in (None, "1234")
    assert reply.header("Transfer-Encoding") is None
    reply = await conn.get("/app/after-304", cookie)
    assert reply.status == 200 and reply.json()["raw_path"] == "/after-304"


async def test_chunked_upstream_with_extensions_and_trailers(gate, conn, cookie):
    reply = await conn.get("/raw/chunked", cookie)
    assert reply.status == 200
    assert reply.body == b"hello0123456789!"
    assert reply.header("Content-Length") is None
    assert (await conn.get("/app/after-chunked", cookie)).status == 200


# --- streaming -----------------------------------------------------------------------------


async def test_sse_arrives_event_by_event(gate, conn, cookie, upstream):
    await conn.send(conn.head("GET", "/app/sse?n=4", cookie, "Accept: text/event-stream\r\n"))
    reply = await read_head(conn.reader)
    assert reply.status == 200
    assert reply.header("Content-Type").startswith("text/event-stream")
    assert reply.header("X-Accel-Buffering") == "no"
    assert reply.header("Transfer-Encoding") == "chunked"
    for i in range(4):
        event = b""
        while not event.endswith(b"\n\n"):
            piece = await read_chunk(conn.reader)
            assert piece, "the stream ended early"
            event += piece
        assert event == f"id: {i}\ndata: event {i}\n\n".encode()
        await upstream.acks.put(i)
    assert await read_chunk(conn.reader) == b""  # the last chunk, after the upstream ended
    assert (await conn.get("/app/after-sse", cookie)).status == 200


async def test_chunked_drip_is_reframed_and_the_connection_stays_usable(
    gate, conn, cookie, upstream
):
    await conn.send(conn.head("GET", "/app/drip?n=5", cookie))
    reply = await read_head(conn.reader)
    assert reply.status == 200
    assert reply.header("X-Accel-Buffering") == "no"
    assert reply.header("Content-Length") is None
    assert reply.header("Transfer-Encoding") == "chunked"
    for i in range(5):
        line = b""
        while not line.endswith(b"\n"):
            piece = await read_chunk(conn.reader)
            assert piece, "the stream ended early"
            line += piece
        assert line == f"line {i}\n".encode()
        await upstream.acks.put(i)
    assert await read_chunk(conn.reader) == b""
    reply = await conn.get("/app/after-drip", cookie)
    assert reply.json()["raw_path"] == "/after-drip"


async def test_sized_body_in_pieces_passes_with_its_length(gate, conn, cookie, upstream):
    await conn.send(conn.head("GET", "/app/sized-drip", cookie))
    reply = await read_head(conn.reader)
    assert reply.header("Content-Length") == "14"
    assert reply.header("Transfer-Encoding") is None
    assert await asyncio.wait_for(conn.reader.readexactly(7), WAIT) == b"part 0\n"
    await upstream.acks.put(0)
    assert await asyncio.wait_for(conn.reader.readexactly(7), WAIT) == b"part 1\n"
    assert (await conn.get("/app/after-sized", cookie)).status == 200


async def test_client_leaving_mid_stream_cancels_the_upstream(gate, conn, cookie, upstream):
    assert (await conn.get("/app/warm", cookie)).status == 200  # a kept connection first
    await conn.send(conn.head("GET", "/app/hang", cookie))
    reply = await read_head(conn.reader)
    assert reply.status == 200
    assert await read_chunk(conn.reader) == b"first\n"
    await asyncio.wait_for(upstream.hang_started.wait(), WAIT)
    conn.writer.transport.abort()
    await asyncio.wait_for(upstream.cancelled.wait(), WAIT)


# --- upstream failures ---------------------------------------------------------------------


async def test_upstream_down_is_a_502_page_and_the_connection_stays_usable(gate, conn, cookie):
    reply = await conn.get("/down/x", cookie, "Accept: text/html\r\n")
    assert reply.status == 502
    assert reply.header("X-Request-Id")
    assert b"Upstream unavailable" in reply.body
    assert not reply.closes
    assert (await conn.get("/app/after-502", cookie)).status == 200


async def test_silent_upstream_before_headers_is_a_504(raw_upstream):
    running = await start_gate(
        dev_config(
            proxy=[{"path": "/silent", "dest": raw_upstream.url}],
            upstream={"idle_timeout": 0.3},
        )
    )
    try:
        async with client_session() as session:
            await dev_login(session, running.url)
            jar = "; ".join(f"{c.key}={c.value}" for c in session.cookie_jar)
        c = await Conn.open(running)
        try:
            reply = await c.get("/silent/x", jar)
            assert reply.status == 504
            assert reply.header("X-Request-Id")
            assert b"timed out" in reply.body.lower()
        finally:
            await c.close()
    finally:
        await running.server.stop()


# --- size ----------------------------------------------------------------------------------


async def test_five_megabytes_to_a_slow_reader_arrive_byte_exact(gate, cookie):
    c = await Conn.open(gate, limit=16 * 1024)  # a small buffer: gate must wait for us
    try:
        await c.send(c.head("GET", "/raw/big", cookie))
        reply = await read_head(c.reader)
        assert reply.status == 200
        assert reply.header("Content-Length") == str(BIG_SIZE)
        digest = hashlib.sha256()
        total = 0
        while total < BIG_SIZE:
            piece = await asyncio.wait_for(c.reader.read(min(16 * 1024, BIG_SIZE - total)), WAIT)
            assert piece, f"connection ended after {total} bytes"
            digest.update(piece)
            total += len(piece)
        assert total == BIG_SIZE
        assert digest.digest() == hashlib.sha256(BIG_BODY).digest()
        assert (await c.get("/app/after-big", cookie)).status == 200  # and nothing extra
    finally:
        await c.close()


# --- access log and metrics ----------------------------------------------------------------


@pytest.fixture
def access_lines():
    with pploy_log() as captured:
        yield captured


async def test_access_log_line_per_request_on_a_kept_connection(gate, conn, cookie, access_lines):
    lines, arrived = access_lines
    expected: dict[str, dict[str, str | None]] = {}
    for path, method, jar, status, route in (
        ("/app/log1", "GET", cookie, 200, "/app"),
        ("/app/fixed", "GET", cookie, 200, "/app"),
        ("/app/fixed", "HEAD", cookie, 200, "/app"),
        ("/raw/204", "GET", cookie, 204, "/raw"),
        ("/app/log2", "GET", None, 401, None),  # refused before a route was chosen
    ):
        reply = await conn.get(path, jar, "Accept: application/json\r\n", method=method)
        assert reply.status == status
        expected[reply.header("X-Request-Id")] = {
            "method": method,
            "path": path,
            "status": str(status),
            "route": route,
            "user": "alice@example.com" if jar else None,
            "via": "session" if jar else None,
            "client": "127.0.0.1",
        }

    def mine(rid: str) -> list[dict[str, str]]:
        return [
            dict(re.findall(r"(\w+)=(\S+)", line))
            for line in lines
            if "event=gate.access" in line and f"rid={rid}" in line
        ]

    while not all(mine(rid) for rid in expected):
        arrived.clear()
        await asyncio.wait_for(arrived.wait(), WAIT)
    for rid, want in expected.items():
        found = mine(rid)
        assert len(found) == 1, found
        got = found[0]
        assert {k: got.get(k) for k in want} == want, got
        assert float(got["ms"]) >= 0
    sized = next(
        mine(rid)[0]
        for rid, w in expected.items()
        if w["path"] == "/app/fixed" and w["method"] == "GET"
    )
    assert sized["bytes"] == "1000"  # the body's length


async def test_request_counts_per_route_on_a_kept_connection(gate, conn, cookie, metrics_reader):
    name = 'gate_requests_total{route="/app",method="GET",code="200"}'
    start = await metrics_reader.read(name) or 0
    for i in range(5):
        assert (await conn.get(f"/app/count{i}", cookie)).status == 200
    assert await metrics_reader.read(name) == start + 5


class MetricsReader:
    """Reads gate's metrics over one kept connection: once gate's own endpoint has been
    served on it, later reads add no request or handover of their own to the counters."""

    def __init__(self, conn: Conn, cookie: str) -> None:
        self.conn, self.cookie = conn, cookie

    async def read(self, name: str) -> float | None:
        reply = await self.conn.get("/_gate/metrics", self.cookie)
        assert reply.status == 200, reply
        return metric(reply.body.decode(), name)


@pytest_asyncio.fixture(loop_scope="module")
async def metrics_reader(gate, cookie):
    c = await Conn.open(gate)
    reader = MetricsReader(c, cookie)
    await reader.read("gate_requests_total")  # the connection's first request
    yield reader
    await c.close()


N_FAST = 6


async def test_logged_in_gets_are_served_by_the_fast_path(gate, conn, cookie, metrics_reader):
    """Needs the fast path: fails until ``gate_fast_path_requests_total`` exists."""
    name = "gate_fast_path_requests_total"
    before = await metrics_reader.read(name)
    for i in range(N_FAST):
        reply = await conn.get(f"/app/fast{i}", cookie)
        assert reply.status == 200 and reply.json()["raw_path"] == f"/fast{i}"
    after = await metrics_reader.read(name)
    assert before is not None, f"{name} is not rendered at /_gate/metrics"
    assert after == before + N_FAST


# What makes the fast path hand a fresh connection to aiohttp, and the status aiohttp answers.
HANDOVERS = {
    "post-with-body": (
        lambda c, jar: c.head("POST", "/app/h", jar, "Content-Length: 3\r\n") + b"abc",
        200,
    ),
    "http-1.0": (lambda c, jar: c.head("GET", "/app/h", jar, version="HTTP/1.0"), 200),
    "duplicate-host": (lambda c, jar: c.head("GET", "/app/h", jar, f"Host: {c.host}\r\n"), 400),
    "bare-lf": (
        lambda c, jar: f"GET /app/h HTTP/1.1\nHost: {c.host}\nCookie: {jar}\n\n".encode(),
        400,
    ),
    "websocket-upgrade": (
        lambda c, jar: c.head(
            "GET",
            "/app/ws-refuse",
            jar,
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        ),
        403,
    ),
    "gate-endpoint": (lambda c, jar: c.head("GET", "/ping", jar), 200),
}


@pytest.mark.parametrize("trigger", list(HANDOVERS))
async def test_connection_is_handed_over_to_aiohttp(gate, cookie, metrics_reader, trigger):
    """Needs the fast path: fails until ``gate_fast_path_handovers_total`` exists."""
    name = "gate_fast_path_handovers_total"
    build, status = HANDOVERS[trigger]
    before = await metrics_reader.read(name)
    c = await Conn.open(gate)
    try:
        await c.send(build(c, cookie))
        reply = await read_head(c.reader)
        assert reply.status == status, reply
    finally:
        await c.close()
    after = await metrics_reader.read(name)
    assert before is not None, f"{name} is not rendered at /_gate/metrics"
    assert after == before + 1


# --- the upstream pool: reuse, concurrency, retries, back-pressure ---------------------------


async def test_concurrent_kept_connections_each_get_their_own_answer(gate, cookie, upstream):
    """Many clients at once over a shared upstream pool: a connection released by one
    response serves another client's request at once; each client must get its own answer
    and the log and metrics its own status (a relay read after reuse once logged status 0)."""
    clients, rounds = 24, 8
    conns = [await Conn.open(gate) for _ in range(clients)]
    before = len(upstream.requests)

    async def one(index: int, c: Conn) -> list[str]:
        seen = []
        for n in range(rounds):
            reply = await c.get(f"/app/who/{index}/{n}", cookie)
            assert reply.status == 200
            seen.append(reply.json()["raw_path"])
        return seen

    try:
        results = await asyncio.gather(*(one(i, c) for i, c in enumerate(conns)))
    finally:
        for c in conns:
            await c.close()
    for index, seen in enumerate(results):
        assert seen == [f"/who/{index}/{n}" for n in range(rounds)]
    assert len(upstream.requests) - before == clients * rounds
    text = gate.gate.metrics.render()
    assert 'code="0"' not in text and 'code="499"' not in text


async def test_a_pooled_connection_dropped_by_the_upstream_is_retried_once(
    gate, cookie, raw_upstream
):
    """The upstream closes a kept connection just as gate reuses it: a GET is sent again on
    a new connection; a POST, which may have had effects, gets 502 instead."""
    c = await Conn.open(gate)
    try:
        first = await c.get("/raw/once/1", cookie)
        assert first.status == 200 and first.body == b"once"
        connections = raw_upstream.connections
        again = await c.get("/raw/once/2", cookie)  # pooled connection: dropped, then retried
        assert again.status == 200 and again.body == b"once"
        assert raw_upstream.connections == connections + 1
        await c.get("/raw/once/3", cookie)  # leaves a kept upstream connection in the pool
        post = await c.get("/raw/once/4", cookie, "Content-Length: 0\r\n", method="POST")
        assert post.status == 502
        assert post.header("X-Request-Id")
    finally:
        await c.close()


async def test_a_client_that_stops_reading_pauses_the_upstream(gate, cookie):
    """Back-pressure: gate stops reading the upstream while the client's socket is full, so a
    slow reader never makes gate hold the body in memory; then every byte still arrives."""
    fast = gate.server.fast_path
    c = await Conn.open(gate, limit=2**16)
    try:
        await c.send(c.head("GET", "/raw/big", cookie))
        deadline = asyncio.get_running_loop().time() + WAIT
        while not any(r.paused for r in fast.pool.active.since):
            assert asyncio.get_running_loop().time() < deadline, "the upstream was never paused"
            await asyncio.sleep(0.01)
        reply = await read_reply(c.reader)
        assert reply.status == 200 and reply.body == BIG_BODY
        assert (await c.get("/app/after-big", cookie)).status == 200
    finally:
        await c.close()


async def test_the_fast_path_can_be_switched_off(upstream):
    """``fast_path: false``: aiohttp's server answers everything (same answers)."""
    running = await start_gate(
        dev_config(fast_path=False, proxy=[{"path": "/app", "dest": upstream.url}])
    )
    try:
        assert running.server.fast_path is None
        async with client_session() as session:
            await dev_login(session, running.url)
            async with session.get(running.url + "/app/x") as resp:
                assert resp.status == 200
        assert "gate_fast_path_requests_total 0" in running.gate.metrics.render()
    finally:
        await running.server.stop()


async def test_tls_gate_serves_the_fast_path_and_hands_over_on_the_same_connection(
    upstream, tmp_path
):
    """gate terminating TLS itself: the fast path reads the decrypted bytes, and a request it
    does not take moves to aiohttp's server on the same TLS connection."""
    import ssl

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(tmp_path / "key.pem")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    running = await start_gate(
        dev_config(
            ssl={"cert": str(tmp_path / "cert.pem"), "key": str(tmp_path / "key.pem")},
            proxy=[{"path": "/app", "dest": upstream.url, "strip_path": True}],
        )
    )
    context = ssl.create_default_context()
    ca.configure_trust(context)
    try:
        url = f"https://127.0.0.1:{running.port}"
        async with client_session(connector=aiohttp.TCPConnector(ssl=context)) as session:
            await dev_login(session, url)  # a form post: aiohttp's server answers it
            jar = session.cookie_jar
        connector = aiohttp.TCPConnector(ssl=context, limit=1)  # one connection throughout
        async with aiohttp.ClientSession(connector=connector, cookie_jar=jar) as session:
            for i in range(3):
                async with session.get(f"{url}/app/tls{i}") as resp:
                    assert resp.status == 200
                    assert (await resp.json())["raw_path"] == f"/tls{i}"
            async with session.post(f"{url}/app/upload", data=b"x" * 5000) as resp:
                assert resp.status == 200 and (await resp.json())["bytes"] == 5000
            async with session.get(f"{url}/app/after") as resp:
                assert resp.status == 200
        text = running.gate.metrics.render()
        assert "gate_fast_path_requests_total 3" in text, [
            line for line in text.splitlines() if "fast_path" in line or "requests_total{" in line
        ]
        assert 'gate_fast_path_handovers_total{reason="body"}' in text
    finally:
        await running.server.stop()


@pytest.mark.parametrize("path", ["/raw/switch", "/raw/garbage"])
async def test_an_unasked_upgrade_or_a_malformed_response_is_a_502(gate, cookie, path):
    """The upstream answers a plain GET with 101 or with a head llhttp refuses: the client gets
    gate's 502 page and its connection stays usable; nothing else is relayed, and nothing
    escapes gate's own handling (no "Fatal error" from the event loop)."""
    errors: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            errors.append(record)

    handler = Keep(level=logging.ERROR)
    logging.getLogger("asyncio").addHandler(handler)
    c = await Conn.open(gate)
    try:
        reply = await c.get(path, cookie)
        assert reply.status == 502 and reply.header("X-Request-Id")
        assert (await c.get("/app/after-bad-upstream", cookie)).status == 200
    finally:
        await c.close()
        logging.getLogger("asyncio").removeHandler(handler)
    assert [r.getMessage() for r in errors] == []


@pytest.mark.parametrize("value", ["a\r\nX-Evil: 1", "a\nb", "a\rb", "a\r\n\r\nGET /x HTTP/1.1"])
async def test_a_line_break_inside_a_header_value_never_reaches_the_wire(value):
    """Values gate adds itself (a user name, a reason phrase) cannot split a head."""
    from pploy.gate.headers import head_bytes

    assert head_bytes("GET / HTTP/1.1", [("Host", "x")]) == b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    with pytest.raises(ValueError):
        head_bytes("GET / HTTP/1.1", [("Host", "x"), ("X-Forwarded-User", value)])
