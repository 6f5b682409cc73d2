"""Slowloris against ``pploy serve``: a request head must be complete within the head timeout
(75 s, ``server.HEAD_TIMEOUT``) of the connection's opening, on the main listener and the
metrics one; bytes trickling in buy no time, and a followed log silent for longer is not cut.

The server is ``server.serve`` itself, what ``pploy serve`` runs, with the timeout lowered
to one second through its ``head_timeout`` parameter (aiohttp's ``AppRunner`` alone would
hold such a connection for 3,630 s)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from pploy.deploy import server
from pploy.deploy.app import create_app
from pploy.deploy.config import load_config
from tests.deploy.support import Fifo, make_remote, read_until

pytestmark = pytest.mark.slow  # waits out the head timeout, a byte at a time

TIMEOUT = 1.0  # the lowered head timeout
DRIP = 0.2  # a byte this often: far more often than the timeout


@pytest.fixture
async def ports(tmp_path: Path) -> AsyncIterator[dict[str, int]]:
    """``serve`` on a main and a metrics listener (ready: each has answered once)."""
    overrides = {
        "workdir": str(tmp_path / "work"),
        "users": ["alice"],
        "job.on_shutdown": "cancel",
        "job.cancel_grace_seconds": [1, 1],
    }
    app = create_app(load_config(None, overrides, environ={}))
    main, metrics = (socket.create_server(("127.0.0.1", 0)) for _ in range(2))
    found = {"main": main.getsockname()[1], "metrics": metrics.getsockname()[1]}
    task = asyncio.create_task(server.serve(app, main, metrics, head_timeout=TIMEOUT))
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            for port, path in ((found["main"], "/ping"), (found["metrics"], "/metrics")):
                async with http.get(f"http://127.0.0.1:{port}{path}") as resp:
                    assert resp.status == 200, path
        yield found
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def answered(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> None:
    """One whole request on the connection, and its whole answer (the connection is kept)."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200 "), head
    length = re.search(rb"(?im)^content-length: *(\d+)", head)
    assert length is not None, head
    await asyncio.wait_for(reader.readexactly(int(length[1])), 10)


@pytest.mark.parametrize(
    ("listener", "after_a_response"),
    [("main", False), ("main", True), ("metrics", False), ("metrics", True)],
    ids=["main", "main-kept-alive", "metrics", "metrics-kept-alive"],
)
async def test_a_head_trickled_a_byte_at_a_time_is_cut_at_the_head_timeout(
    ports, listener, after_a_response
):
    reader, writer = await asyncio.open_connection("127.0.0.1", ports[listener])
    if after_a_response:  # the next head gets the same time, counted from the answer
        await answered(reader, writer, "/ping" if listener == "main" else "/metrics")
    started = time.monotonic()
    head = b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200  # never ends
    closed = asyncio.ensure_future(reader.read())
    try:
        for byte in head:
            if closed.done() or time.monotonic() - started > TIMEOUT + 3:
                break
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                break  # closed meanwhile
            await asyncio.wait([closed], timeout=DRIP)
        assert closed.done(), "a byte now and then kept the connection open"
        assert await closed == b""  # closed without an answer
        elapsed = time.monotonic() - started
        assert TIMEOUT - 0.1 < elapsed < TIMEOUT + 1.0, elapsed
    finally:
        closed.cancel()
        writer.close()


async def test_a_followed_log_silent_for_longer_than_the_head_timeout_is_not_cut(ports, tmp_path):
    fifo = Fifo(tmp_path / "go")
    script = f"#!/bin/sh\necho started\n{fifo.script_open()}\n{fifo.wait_cmd}\necho finished\n"
    base = f"http://127.0.0.1:{ports['main']}"
    jar = aiohttp.CookieJar(unsafe=True)
    try:
        async with aiohttp.ClientSession(cookies={"user": "alice"}, cookie_jar=jar) as http:
            remote = make_remote(tmp_path, deploy_script=script)
            async with http.post(f"{base}/api/projects", json={"url": str(remote)}) as resp:
                assert resp.status == 201, await resp.text()
                name = (await resp.json())["project"]["name"]
            lock = f"{base}/api/projects/{name}/lock"
            async with http.post(lock, json={"operation": "gain"}) as resp:
                assert resp.status == 200, await resp.text()
            deploy = f"{base}/api/projects/{name}/deploy"
            async with http.post(deploy, json={"env": "staging"}) as resp:
                assert resp.status == 202, await resp.text()
                job = (await resp.json())["job"]["id"]
            async with http.get(f"{base}/api/jobs/{job}/log?follow=1") as resp:
                seen = await read_until(resp, b"started")
                await asyncio.sleep(2 * TIMEOUT)  # the silence under test: the script waits
                await fifo.release()
                seen.extend(await asyncio.wait_for(resp.content.read(), 20))
        assert b"finished" in seen and b"deploy succeeded" in seen, bytes(seen)
    finally:
        fifo.close()
