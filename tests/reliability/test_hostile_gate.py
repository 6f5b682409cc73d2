"""Hostile requests against a real gate: huge and numerous headers and cookies, a client that
sends half a request line and stalls, malformed WebSocket frames through the proxy. gate answers
4xx or closes the one connection, and keeps serving everyone else.

Every test gets a gate and an upstream of its own (both start in milliseconds): an attack that
breaks gate fails its own test, not every test after it."""

from __future__ import annotations

import asyncio
import time

import pytest
import pytest_asyncio

from tests.gate.conftest import client_session, dev_config, dev_login, start_gate
from tests.gate.upstream import Upstream
from tests.reliability.rawhttp import frame, raw_request, raw_websocket, read_close, status_of
from tests.reliability.test_hostile_pploy import MALFORMED, big_headers_cases

pytestmark = pytest.mark.asyncio(loop_scope="module")
IDLE = 1.0  # the header timeout the tests run gate with (75 s by default)


@pytest_asyncio.fixture(loop_scope="module")
async def upstream():
    server = Upstream()
    await server.start()
    yield server
    await server.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def gate(upstream):
    running = await start_gate(
        dev_config(
            proxy=[{"path": "/", "dest": upstream.url, "strip_path": False}], head_timeout=IDLE
        )
    )
    async with client_session() as client:
        await dev_login(client, running.url)
        cookie = "; ".join(f"{c.key}={c.value}" for c in client.cookie_jar)
    running.cookie = cookie
    yield running
    await running.server.stop()


async def still_serving(gate) -> None:
    async with client_session() as client:
        async with client.get(gate.url + "/ping") as resp:
            assert resp.status == 200
        async with client.get(gate.url + "/app/x", headers={"Cookie": gate.cookie}) as resp:
            assert resp.status == 200


@pytest.mark.parametrize(("case", "data"), big_headers_cases(), ids=lambda v: str(v)[:30])
async def test_huge_numerous_and_broken_headers_get_a_4xx(gate, case, data):
    data = data.replace(b"Cookie: user=alice", f"Cookie: {gate.cookie}".encode())
    head = await raw_request(gate.port, data)
    status = status_of(head)
    if case in ("100 Cookie headers", "1000 cookies"):
        assert status in (200, 400, 431), (case, head[:200])
    else:
        assert 400 <= status < 500, (case, head[:200])
    await still_serving(gate)


@pytest.mark.parametrize(
    "partial",
    [b"", b"GET /app/x HT", b"GET /app/x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaa"],
    ids=["nothing", "half a request line", "half the headers"],
)
async def test_a_client_that_stalls_mid_request_is_dropped(gate, partial):
    """Slowloris: gate closes a connection whose request does not arrive in time, instead of
    holding it (and a file descriptor) forever."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gate.port)
    try:
        writer.write(partial)
        await writer.drain()
        started = time.monotonic()
        data = await asyncio.wait_for(reader.read(), IDLE + 5)  # EOF: gate hung up
        assert time.monotonic() - started < IDLE + 4
        assert b"200 OK" not in data
    finally:
        writer.close()
    await still_serving(gate)


@pytest.mark.slow  # a stream longer than the header timeout
async def test_the_header_timeout_does_not_cut_a_slow_stream(gate, upstream):
    """The timeout is for idle connections only: a stream silent for longer goes on."""
    upstream.reset()
    async with client_session() as client:
        async with client.get(
            gate.url + "/drip?n=2", headers={"Cookie": gate.cookie}
        ) as resp:  # the upstream waits for each ack before the next chunk
            first = await asyncio.wait_for(resp.content.readany(), 10)
            assert first
            await asyncio.sleep(IDLE * 2.5)  # longer than the timeout, on purpose
            await upstream.acks.put(0)
            second = await asyncio.wait_for(resp.content.readany(), 10)
            await upstream.acks.put(1)
            await asyncio.wait_for(resp.content.read(), 10)
    assert resp.status == 200 and (first, second) == (b"line 0\n", b"line 1\n")


GATE_MALFORMED = [
    # gate's limit is upstream.websocket_max_message (16 MiB by default), not pploy's 64 KiB.
    (case, frame(0x2, b"x" * (17 << 20)) if case.endswith("size limit") else d, codes)
    for case, d, codes in MALFORMED
]


@pytest.mark.parametrize(
    ("case", "data", "codes"), GATE_MALFORMED, ids=[m[0] for m in GATE_MALFORMED]
)
async def test_malformed_websocket_frames_through_gate(gate, case, data, codes):
    reader, writer = await raw_websocket(
        gate.port, "/ws", {"Cookie": gate.cookie, "Origin": f"http://127.0.0.1:{gate.port}"}
    )
    try:
        try:
            writer.write(data)
            await writer.drain()
            code = await read_close(reader)
        except ConnectionResetError:  # gate hung up while the frame was still arriving
            code = None
        # gate echoes through the upstream: an accepted frame comes back as a message.
        assert code in (*codes, "text") if case.startswith("unmasked") else code in codes, (
            case,
            code,
        )
    finally:
        writer.close()
    await still_serving(gate)
