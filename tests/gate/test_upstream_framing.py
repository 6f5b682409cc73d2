"""Upstreams that misbehave on the wire, through a real gate, on both front ends (issue 21):
every response reaches the client framed exactly (or as a 502), nothing beyond a response's
framing is delivered, and a pooled upstream connection that received bytes nobody asked for
is never used again.

The upstream is a raw asyncio server writing canned bytes, as aiohttp's server never would.
"""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio

from tests.gate.conftest import client_session, dev_config, dev_login, serving, start_gate
from tests.gate.upstream import RawUpstream
from tests.gate.wire import WAIT, Conn, Reply

pytestmark = pytest.mark.asyncio(loop_scope="module")

SMUGGLED = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-Smuggled: 1\r\n\r\nevil"


def sized(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\n" + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body


class MisbehavingUpstream(RawUpstream):
    """Answers each request by its path; records (connection number, path) per request."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, str]] = []
        self.connections = 0
        self.late = asyncio.Event()  # /late: write the unasked bytes now
        self.late_closed = asyncio.Event()  # gate hung up on the poisoned connection
        self.late_answer = b""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                self.seen.append((number, path))
                if path == "/connection-names-length":
                    # Content-Length named in Connection: as hop-by-hop it would be dropped,
                    # leaving a kept connection's body without an end.
                    writer.write(sized(b"hello", b"Connection: Content-Length\r\n"))
                elif path == "/extra-head":
                    # A second response nobody asked for, right behind the first one's body.
                    writer.write(sized(b"hello") + SMUGGLED)
                elif path == "/late":
                    writer.write(sized(b"hello"))
                    await writer.drain()
                    await self.late.wait()
                    writer.write(SMUGGLED)  # while the connection sits in gate's pool
                    await writer.drain()
                    # gate must hang up on a connection that sent what nobody asked for.
                    self.late_answer = await asyncio.wait_for(reader.read(), WAIT)
                    self.late_closed.set()
                    return
                else:
                    writer.write(sized(f"fresh {path}".encode()))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def connection_of(self, path: str) -> int:
        [number] = [n for n, p in self.seen if p == path]
        return number


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def upstream():
    async with serving(MisbehavingUpstream()) as server:
        yield server


@pytest_asyncio.fixture(
    scope="module", loop_scope="module", params=[True, False], ids=["fast_path", "aiohttp"]
)
async def gate(request, upstream):
    config = {
        **dev_config(proxy=[{"path": "/u", "dest": upstream.url, "strip_path": True}]),
        "fast_path": request.param,
    }
    running = await start_gate(config)
    async with client_session() as session:
        await dev_login(session, running.url, "alice")
        running.cookie = "; ".join(f"{c.key}={c.value}" for c in session.cookie_jar)
    yield running
    await running.server.stop()


@pytest.fixture(autouse=True)
def fresh(upstream):
    upstream.seen.clear()


async def exchange(conn: Conn, gate, path: str) -> Reply:  # noqa: ANN001
    """One request on a kept client connection; the reply read by its framing (wire.py
    fails a kept connection's response that has none)."""
    reply = await conn.get(path, gate.cookie)
    assert reply.header("X-Smuggled") is None
    return reply


async def nothing_more(conn: Conn, gate) -> None:  # noqa: ANN001
    """No byte beyond the responses asked for has reached the client: the next request on the
    connection gets exactly its own answer (stray bytes would be read before it, as a reply
    or a broken one: gate writes to a connection in order)."""
    reply = await exchange(conn, gate, "/u/probe")
    assert reply.status == 200 and reply.body == b"fresh /probe", reply


async def test_content_length_named_in_connection_keeps_the_body_framed(gate, upstream):
    conn = await Conn.open(gate)
    try:
        reply = await exchange(conn, gate, "/u/connection-names-length")
        assert reply.status == 200 and reply.body == b"hello"
        assert reply.header("Content-Length") == "5" or reply.header("Transfer-Encoding")
        reply = await exchange(conn, gate, "/u/after-connection-names-length")
        assert reply.body == b"fresh /after-connection-names-length"
        await nothing_more(conn, gate)
    finally:
        await conn.close()


async def test_a_response_head_right_after_a_body_is_never_delivered(gate, upstream):
    conn = await Conn.open(gate)
    try:
        reply = await exchange(conn, gate, "/u/extra-head")
        assert reply.status == 200 and reply.body == b"hello"
        await nothing_more(conn, gate)
        reply = await exchange(conn, gate, "/u/after-extra-head")
        assert reply.body == b"fresh /after-extra-head"
    finally:
        await conn.close()
    # The upstream connection that sent more than was asked was not used again.
    assert upstream.connection_of("/after-extra-head") != upstream.connection_of("/extra-head")


async def test_bytes_sent_late_after_a_sized_body_poison_no_later_request(gate, upstream):
    upstream.late.clear()
    upstream.late_closed.clear()
    conn = await Conn.open(gate)
    try:
        reply = await exchange(conn, gate, "/u/late")
        assert reply.status == 200 and reply.body == b"hello"
        upstream.late.set()  # the pooled connection now receives a response nobody asked for
        await asyncio.wait_for(upstream.late_closed.wait(), WAIT)
        assert upstream.late_answer == b""  # gate closed it, sending nothing more
        await nothing_more(conn, gate)
        # The next request, from another client, must get its own answer.
        other = await Conn.open(gate)
        try:
            reply = await exchange(other, gate, "/u/after-late")
            assert reply.body == b"fresh /after-late"
        finally:
            await other.close()
    finally:
        await conn.close()
    assert upstream.connection_of("/after-late") != upstream.connection_of("/late")
