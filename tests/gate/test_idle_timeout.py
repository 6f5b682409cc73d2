"""``upstream.idle_timeout``: an upstream silent for longer than that gets a 504 page before
the response started, and a cut client connection (never a truncated body that looks whole)
after; both counted as ``idle_timeout``. Real upstreams on loopback."""

from __future__ import annotations

import asyncio
import socket
import time

import aiohttp
import pytest
from aiohttp import web

from tests.gate.conftest import client_session, dev_config, dev_login, start_gate
from tests.gate.upstream import Upstream


async def _silent_server() -> tuple[asyncio.AbstractServer, int]:
    """Accepts, reads the request, never answers."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(3600)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = await asyncio.start_server(handle, sock=sock)
    return server, sock.getsockname()[1]


BIG = 32 * 1024 * 1024


async def _big_server() -> tuple[web.AppRunner, int]:
    """Streams 32 MiB (chunked) as fast as it is read."""

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        piece = b"x" * 65536
        for _ in range(BIG // len(piece)):
            await response.write(piece)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/big", big)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    return runner, sock.getsockname()[1]


@pytest.fixture(params=[True, False], ids=["fast_path", "aiohttp"])
async def stack(request):
    upstream = Upstream()
    await upstream.start()
    silent, port = await _silent_server()
    big_runner, big_port = await _big_server()
    gate = await start_gate(
        dev_config(
            proxy=[
                {"path": "/app", "dest": upstream.url, "strip_path": True},
                {"path": "/silent", "dest": f"http://127.0.0.1:{port}"},
                {"path": "/bulk", "dest": f"http://127.0.0.1:{big_port}", "strip_path": True},
            ],
            upstream={"idle_timeout": "1s"},
            fast_path=request.param,
        )
    )
    try:
        yield gate, upstream
    finally:
        await gate.server.stop()
        silent.close()
        await big_runner.cleanup()
        await upstream.stop()


def _idle_errors(gate) -> int:  # noqa: ANN001
    return sum(
        n for key, n in gate.gate.metrics.upstream_errors.items() if ("kind", "idle_timeout") in key
    )


async def test_silence_before_the_response_is_a_504(stack):
    gate, _ = stack
    async with client_session() as client:
        await dev_login(client, gate.url)
        started = time.monotonic()
        async with client.get(gate.url + "/silent/x") as resp:
            assert resp.status == 504
            assert "timed out" in (await resp.text()).lower()
        assert 0.9 < time.monotonic() - started < 10
    assert _idle_errors(gate) == 0  # before the response: counted as a timeout, not idle
    errors = gate.gate.metrics.upstream_errors
    assert sum(n for key, n in errors.items() if ("kind", "timeout") in key) == 1


async def test_silence_mid_stream_cuts_the_client_connection(stack):
    gate, upstream = stack
    async with client_session() as client:
        await dev_login(client, gate.url)
        started = time.monotonic()
        async with client.get(gate.url + "/app/hang") as resp:
            assert resp.status == 200
            assert await resp.content.readline() == b"first\n"
            with pytest.raises(aiohttp.ClientPayloadError):
                await asyncio.wait_for(resp.read(), 10)
        assert 0.9 < time.monotonic() - started < 10
    await asyncio.wait_for(upstream.cancelled.wait(), 5)  # and the upstream was let go
    assert _idle_errors(gate) == 1


@pytest.mark.slow  # seconds of a slow client
async def test_a_slow_client_is_not_the_upstreams_silence(stack):
    """gate waiting for the client to read is no reason to cut the upstream."""
    gate, _ = stack
    async with client_session(timeout=aiohttp.ClientTimeout(total=60)) as client:
        await dev_login(client, gate.url)
        async with client.get(gate.url + "/bulk/big") as resp:
            assert resp.status == 200
            first = await resp.content.readany()
            await asyncio.sleep(3)  # three idle timeouts without reading
            rest = await asyncio.wait_for(resp.read(), 30)
    assert len(first) + len(rest) == BIG
    assert _idle_errors(gate) == 0
