"""The fast path and aiohttp's server give the same answer to the same bytes.

Each request below — ordinary, unusual or hostile — is written by hand to two gates that differ
only in ``fast_path`` (on, the default; off: aiohttp's server answers everything): the status
each answers, and whether the upstream was reached, must be the same. A fast path that took a
request aiohttp refuses (or the reverse) would show here first.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from tests.gate.conftest import client_session, dev_config, dev_login, pploy_log, start_gate
from tests.gate.upstream import Upstream

pytestmark = pytest.mark.asyncio(loop_scope="module")
WAIT = 5.0

# {host} is the gate's own host:port, {cookie} a valid session; each ends where the request ends.
CASES = {
    "plain": "GET /app/a HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n",
    "no session": "GET /app/a HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\n\r\n",
    "forged session": "GET /app/a HTTP/1.1\r\nHost: {host}\r\nCookie: _gate_session=AAAA\r\n\r\n",
    "browser, no session": "GET /app/a HTTP/1.1\r\nHost: {host}\r\nAccept: text/html\r\n\r\n",
    "other host": "GET /app/a HTTP/1.1\r\nHost: evil.test\r\nCookie: {cookie}\r\n\r\n",
    "no host": "GET /app/a HTTP/1.1\r\nCookie: {cookie}\r\n\r\n",
    "two hosts": "GET /app/a HTTP/1.1\r\nHost: {host}\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n",
    "host with space": "GET /app/a HTTP/1.1\r\nHost : {host}\r\nCookie: {cookie}\r\n\r\n",
    "dot segments": "GET /app/../_gate/metrics HTTP/1.1\r\nHost: {host}\r\n"
    "Cookie: {cookie}\r\n\r\n",
    "encoded dots": "GET /app/%2e%2e/x HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n",
    "absolute form": "GET http://{host}/app/a HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n",
    "asterisk": "OPTIONS * HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n",
    "nul in path": "GET /app/a%00b HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n",
    "http/1.0": "GET /app/a HTTP/1.0\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n",
    "http/2.0 line": "GET /app/a HTTP/2.0\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n",
    "bad method": "G(T /app/a HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n",
    "lower-case method": "get /app/a HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n",
    "bare lf": "GET /app/a HTTP/1.1\nHost: {host}\nCookie: {cookie}\n\n",
    "bare cr": "GET /app/a HTTP/1.1\rHost: {host}\r\nCookie: {cookie}\r\n\r\n",
    "folded header": "GET /app/a HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
    "X-A: 1\r\n 2\r\n\r\n",
    "nul in header": "GET /app/a HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
    "X-A: a\x00b\r\n\r\n",
    "te and cl": "POST /app/a HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
    "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two lengths": "POST /app/a HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
    "Content-Length: 0\r\nContent-Length: 0\r\n\r\n",
    "negative length": "POST /app/a HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
    "Content-Length: -1\r\n\r\n",
    "te gzip": "POST /app/a HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
    "Transfer-Encoding: gzip\r\n\r\n",
    "empty post": "POST /app/a HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
    "Content-Length: 0\r\n\r\n",
    "post with body": "POST /app/a HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
    "Content-Length: 3\r\n\r\nabc",
    "chunked body": "POST /app/a HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
    "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "expect": "GET /app/a HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
    "Expect: 100-continue\r\n\r\n",
    "h2c upgrade": "GET /app/a HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
    "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    "HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    "gate endpoint": "GET /ping HTTP/1.1\r\nHost: {host}\r\n\r\n",
    "prefix redirect": "GET /app HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n",
    "no route": "GET /nowhere HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n",
    "long header": "GET /app/a HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
    "X-Long: " + "a" * 9000 + "\r\n\r\n",
    "spoofed identity": "GET /app/a HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
    "X-Forwarded-User: mallory\r\nX_Forwarded_User: mallory\r\n\r\n",
    "leading crlf": "\r\nGET /app/a HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n",
}


class Target:
    def __init__(self, running, upstream: Upstream, cookie: str) -> None:  # noqa: ANN001
        self.running, self.upstream, self.cookie = running, upstream, cookie


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def targets() -> AsyncIterator[dict[bool, Target]]:
    made: dict[bool, Target] = {}
    try:
        for fast in (True, False):
            upstream = Upstream()
            await upstream.start()
            running = await start_gate(
                dev_config(
                    fast_path=fast,
                    proxy=[{"path": "/app", "dest": upstream.url, "strip_path": True}],
                )
            )
            async with client_session() as session:
                await dev_login(session, running.url)
                cookie = "; ".join(f"{c.key}={c.value}" for c in session.cookie_jar)
            made[fast] = Target(running, upstream, cookie)
        yield made
    finally:
        for target in made.values():
            await target.running.server.stop()
            await target.upstream.stop()


async def answer(target: Target, text: str) -> tuple[int | None, int]:
    """The status gate answered (None: it closed without one) and upstream requests seen."""
    target.upstream.requests.clear()
    port = target.running.port
    data = text.format(host=f"127.0.0.1:{port}", cookie=target.cookie).encode("latin-1")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        try:
            line = await asyncio.wait_for(reader.readline(), WAIT)
        except (ConnectionError, TimeoutError):
            line = b""
        status = int(line.split()[1]) if line.startswith(b"HTTP/") else None
        while status is not None and status < 200:  # 100 Continue: the final answer follows
            while (await asyncio.wait_for(reader.readline(), WAIT)) not in (b"\r\n", b""):
                pass  # the interim response's headers
            line = await asyncio.wait_for(reader.readline(), WAIT)
            status = int(line.split()[1])
    finally:
        writer.close()
    return status, len(target.upstream.requests)


@pytest.mark.parametrize("case", list(CASES))
async def test_both_front_ends_answer_alike(targets, case):
    fast = await answer(targets[True], CASES[case])
    full = await answer(targets[False], CASES[case])
    assert fast == full, f"fast path {fast} != aiohttp {full}"


async def test_the_fast_path_serves_the_ordinary_cases(targets):
    """The comparison above means something only if the fast path answered the ordinary
    requests itself (and not aiohttp's server after a hand-over)."""

    def served() -> float:
        text = targets[True].running.gate.metrics.render()
        return next(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith("gate_fast_path_requests_total ")
        )

    before = served()
    for case in ("plain", "no session", "other host", "spoofed identity", "empty post"):
        await answer(targets[True], CASES[case])
    assert served() - before == 5


async def test_both_front_ends_log_the_same_line(targets):
    """One access-log line per request, with the same fields (body bytes, not bytes on the
    wire, for a streamed response too) whichever front end served it."""
    seen: dict[bool, list[dict[str, str]]] = {}
    with pploy_log() as (lines, _arrived):
        for fast, target in targets.items():
            base = target.running.url
            target.upstream.reset()
            target.upstream.acks.put_nowait(0)  # the drip's one line is acknowledged at once
            async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:
                for path, cookie in (
                    ("/app/drip?n=1", target.cookie),  # streamed: chunked, 7 body bytes
                    ("/app/fixed", target.cookie),  # sized: 1000 bytes
                    ("/app/fixed", None),  # refused: 401
                ):
                    headers = {"Accept": "application/json"}
                    if cookie:
                        headers["Cookie"] = cookie
                    async with client.get(base + path, headers=headers) as resp:
                        await resp.read()
            target.running.gate.access_log.flush()
            found = [
                {k: v.strip('"') for k, v in re.findall(r'(\w+)=("[^"]*"|\S+)', line)}
                for line in lines
            ]
            seen[fast] = [
                {k: v for k, v in f.items() if k not in ("ts", "rid", "ms", "client")}
                for f in found
                if f.get("event") == "gate.access" and f.get("path", "").startswith("/app/")
            ]
            lines.clear()
    assert len(seen[True]) == 3, seen
    assert [f["bytes"] for f in seen[True]] == ["7", "1000", seen[True][2]["bytes"]]
    assert seen[True] == seen[False]
