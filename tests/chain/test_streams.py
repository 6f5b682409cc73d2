"""A deploy's log through the whole chain — nginx (TLS, shipped config, proxy_buffering at its
default) → gate → pploy — line by line, for each transport.

The deploy script prints line N and then blocks reading a fifo that the test writes only after
it has seen line N at the nginx end: a hop that held line N back would hang the test (and fail
it at the deadline), never pass it by luck.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.chain.harness import (
    Chain,
    Client,
    Nginx,
    RecordingUpstream,
    TextStream,
    free_port,
    release,
    shipped_site,
)

pytestmark = pytest.mark.slow  # nginx

LINES = 3


@contextlib.asynccontextmanager
async def deploy(client: Client, chain: Chain, env: str) -> AsyncIterator[tuple[int, Path]]:
    """Gain the lock and start a deploy to ``env``; cancel it if the test leaves early."""
    fifo = chain.fifo(env)
    await client.api("POST", "/api/projects/chainploy/lock", {"operation": "gain"})
    job = (await client.api("POST", "/api/projects/chainploy/deploy", {"env": env}))["job"]
    try:
        yield job["id"], fifo
    finally:
        record = (await client.api("GET", f"/api/jobs/{job['id']}"))["job"]
        if record["status"] == "running":
            await client.api("POST", f"/api/jobs/{job['id']}/cancel", {})
            await client.wait_job(job["id"])


async def line_by_line(
    stream: TextStream, fifo: Path, pump: Coroutine[Any, Any, None], first: int = 1
) -> None:
    """Run ``pump`` (it feeds ``stream``) and let the script go line by line: each line is seen
    through the chain while the next cannot exist yet; then the stream must end."""
    reader = asyncio.create_task(pump)
    try:
        for n in range(first, LINES + 1):
            await stream.wait_for(f"line {n}\x1b[0m".encode())
            assert f"line {n + 1}".encode() not in stream.data
            await release(fifo)
        await asyncio.wait_for(reader, 15)
    finally:
        reader.cancel()


def assert_through_nginx(headers: aiohttp.typedefs.LooseHeaders) -> None:
    assert str(headers.get("Server", "")).startswith("nginx"), headers  # type: ignore[union-attr]
    # nginx consumed pploy's X-Accel-Buffering (it never passes it on).
    assert "X-Accel-Buffering" not in headers


async def test_shipped_config_leaves_proxy_buffering_at_its_default(nginx: Nginx) -> None:
    directives = [
        line.split("#")[0].strip() for line in nginx.site.splitlines() if line.split("#")[0].strip()
    ]
    assert not [d for d in directives if d.startswith("proxy_buffering")]
    assert not [d for d in directives if d.startswith("proxy_ignore_headers")]
    assert "proxy_http_version 1.1;" in directives


async def test_chunked_log_arrives_line_by_line(client: Client, chain: Chain) -> None:
    async with deploy(client, chain, "chunked") as (job_id, fifo):
        async with client.get(f"/api/jobs/{job_id}/log?follow=1") as resp:
            assert resp.status == 200
            assert_through_nginx(resp.headers)
            stream = TextStream()

            async def pump() -> None:
                async for chunk in resp.content.iter_any():
                    stream.feed(chunk)

            await line_by_line(stream, fifo, pump())
    assert b"deployed" in stream.data
    assert b"warning: on stderr" in stream.data
    assert (await client.wait_job(job_id))["status"] == "succeeded"


class SSEReader:
    """Server-Sent Events from a response: log text, last event id, final status."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.stream = TextStream()
        self.text = ""
        self.last_id: str | None = None
        self.status: dict[str, object] | None = None
        self.pending = ""

    async def run(self) -> None:
        async for chunk in self.resp.content.iter_any():
            self.pending += chunk.decode()
            *blocks, self.pending = self.pending.split("\n\n")
            for block in blocks:
                event, data = "message", []
                for line in block.split("\n"):
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("id:"):
                        self.last_id = line[3:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].lstrip(" "))
                if event == "log":
                    self.text += json.loads("\n".join(data))
                elif event == "status":
                    self.status = json.loads("\n".join(data))
            self.stream.feed(self.text.encode()[len(self.stream.data) :])
            if self.status is not None:
                return


async def test_sse_log_arrives_line_by_line(client: Client, chain: Chain) -> None:
    async with deploy(client, chain, "sse") as (job_id, fifo):
        async with client.get(
            f"/api/jobs/{job_id}/events", headers={"Accept": "text/event-stream"}
        ) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            assert_through_nginx(resp.headers)
            sse = SSEReader(resp)
            await line_by_line(sse.stream, fifo, sse.run())
    assert sse.status is not None and sse.status["status"] == "succeeded"
    assert sse.status["exit_code"] == 0
    assert "deployed" in sse.text


async def test_websocket_log_arrives_line_by_line_and_closes_normally(
    client: Client, chain: Chain
) -> None:
    async with deploy(client, chain, "ws") as (job_id, fifo):
        ws = await client.ws(f"/api/jobs/{job_id}/ws")
        assert_through_nginx(ws._response.headers)
        stream = TextStream()
        final: dict[str, object] | None = None
        close_code = None

        async def pump() -> None:
            nonlocal final, close_code
            while True:
                msg = await ws.receive()
                if msg.type == aiohttp.WSMsgType.BINARY:
                    stream.feed(msg.data)
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    final = json.loads(msg.data)
                elif msg.type == aiohttp.WSMsgType.CLOSE:
                    close_code = msg.data
                    return
                else:
                    raise AssertionError(f"unexpected {msg.type}: {msg.data!r}")

        try:
            await line_by_line(stream, fifo, pump())
        finally:
            await ws.close()
    assert b"deployed" in stream.data
    assert final is not None and final["status"] == "succeeded", final
    # The server's normal close reached the client through gate and nginx (the old gate's bug).
    assert close_code == aiohttp.WSCloseCode.OK


async def test_sse_reconnect_with_last_event_id_loses_nothing(client: Client, chain: Chain) -> None:
    async with deploy(client, chain, "reconnect") as (job_id, fifo):
        async with client.get(f"/api/jobs/{job_id}/events") as resp:
            first = SSEReader(resp)
            reader = asyncio.create_task(first.run())
            await first.stream.wait_for(b"line 1\x1b[0m")
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        assert first.last_id is not None and first.last_id.isdigit()
        assert "line 2" not in first.text
        # While nobody watches, the script goes on to line 2 (and waits there).
        await release(fifo)
        async with client.get(
            f"/api/jobs/{job_id}/events", headers={"Last-Event-ID": first.last_id}
        ) as resp:
            assert_through_nginx(resp.headers)
            second = SSEReader(resp)
            await line_by_line(second.stream, fifo, second.run(), first=2)
    assert second.status is not None and second.status["status"] == "succeeded"
    async with client.get(f"/api/jobs/{job_id}/log") as resp:
        whole = (await resp.read()).decode()
    # Nothing lost, nothing twice: the two connections together are exactly the log.
    assert first.text + second.text == whole
    assert len(first.text.encode()) == int(first.last_id)


async def test_nginx_buffers_an_upstream_that_does_not_opt_out(
    nginx_binary: str, certs, tmp_path: Path
) -> None:
    """The control: the same shipped config in front of an upstream that may or may not send
    `X-Accel-Buffering: no`. Without it nginx (buffering on, TLS) holds line 1 until the end
    — which is what the tests above would see if pploy or gate forgot the header."""
    seen = asyncio.Event()
    acknowledged: dict[bool, bool] = {}

    async def drip(request: web.Request) -> web.StreamResponse:
        opt_out = request.query.get("accel") == "no"
        resp = web.StreamResponse()
        if opt_out:
            resp.headers["X-Accel-Buffering"] = "no"
        resp.content_type = "text/plain"
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b"line 1\n")
        try:
            await asyncio.wait_for(seen.wait(), 2.0)  # the client saw line 1 (or not)
            acknowledged[opt_out] = True
        except TimeoutError:
            acknowledged[opt_out] = False
        await resp.write(b"line 2\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/drip", drip)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    upstream_port = runner.addresses[0][1]
    port = free_port()
    server = Nginx(
        nginx_binary,
        tmp_path / "nginx",
        shipped_site(port, f"127.0.0.1:{upstream_port}", certs),
        port,
    )
    await asyncio.to_thread(server.start)
    first_reads: dict[bool, bytes] = {}
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=certs.client_context())
        ) as session:
            for opt_out in (True, False):
                seen.clear()
                query = "?accel=no" if opt_out else ""
                async with session.get(f"{server.url}/drip{query}") as resp:
                    assert resp.headers["Server"].startswith("nginx")
                    data = b""
                    async for chunk in resp.content.iter_any():
                        if not data:
                            first_reads[opt_out] = chunk
                        data += chunk
                        if b"line 1" in data:
                            seen.set()
                    assert data == b"line 1\nline 2\n"
    finally:
        await asyncio.to_thread(server.stop)
        await runner.cleanup()
    # With the header: line 1 reached the client while the upstream waited for it.
    assert acknowledged[True] is True
    assert first_reads[True] == b"line 1\n"
    # Without it: nginx held line 1 back until the upstream ended the response.
    assert acknowledged[False] is False
    assert first_reads[False] == b"line 1\nline 2\n"


@pytest.mark.parametrize(
    ("allow", "credentials", "expected"),
    [
        (["10.0.0.0/8"], None, 401),  # not in the office, no password: refused
        (["10.0.0.0/8"], "ops:wrong", 401),
        (["10.0.0.0/8"], "ops:s3cret", 200),  # the password lets it through
        (["127.0.0.0/8"], None, 200),  # the office network needs no password
    ],
)
def test_allowlist_or_basic_auth_is_satisfy_any(
    nginx_binary: str, certs, tmp_path: Path, allow, credentials, expected
) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("ops:{PLAIN}s3cret\n")
    upstream = RecordingUpstream()
    port = free_port()
    site = shipped_site(
        port, f"127.0.0.1:{upstream.port}", certs, allow=allow, htpasswd=str(htpasswd)
    )
    assert "satisfy any;" in site and "deny all;" in site
    server = Nginx(nginx_binary, tmp_path / "n", site, port).start()
    try:
        connection = http.client.HTTPSConnection(
            "127.0.0.1", port, context=certs.client_context(), timeout=10
        )
        headers = {}
        if credentials:
            headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
        connection.request("GET", "/", headers=headers)
        assert connection.getresponse().status == expected
        connection.close()
    finally:
        server.stop()
        upstream.stop()
    assert len(upstream.seen) == (1 if expected == 200 else 0)
    for headers_seen in upstream.seen:
        # The office password stays at nginx; gate and pploy never see it.
        assert "Authorization" not in headers_seen
        assert headers_seen["X-Forwarded-Proto"] == "https"


def test_stream_tests_need_authentication_at_pploy_too(chain: Chain) -> None:
    """pploy's stream test sits behind its auth like every route: straight to pploy, without
    gate's signed assertion (a plain identity header is not enough), it is refused."""
    for headers in ({}, {"X-Forwarded-User": "mallory"}, {"X-Gate-Assertion": "x.y.z"}):
        connection = http.client.HTTPConnection("127.0.0.1", chain.pploy_port, timeout=10)
        connection.request("GET", "/api/stream-test?duration=0.1", headers=headers)
        response = connection.getresponse()
        assert response.status == 401, (headers, response.status)
        assert response.getheader("X-Accel-Buffering") is None  # no stream was started
        connection.close()
