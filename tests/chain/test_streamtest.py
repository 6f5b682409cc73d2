"""The stream-test endpoints on their own (a real aiohttp server on loopback), and the doctor's
reading of arrival times."""

from __future__ import annotations

import json

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from pploy import streamtest
from pploy.chain.doctor import Batch, Options, Probe, Tick, front_hop, judge


@pytest.fixture
async def server():
    app = web.Application()
    streamtest.add_routes(app, "/api/stream-test")

    async def gate_like(request: web.Request) -> web.StreamResponse:
        answer = await streamtest.serve_gate(request, request.path)
        return answer if answer is not None else web.Response(status=404, text="not mine")

    app.router.add_route("*", "/{tail:.*}", gate_like)
    test_server = TestServer(app, host="127.0.0.1")
    await test_server.start_server()
    yield test_server
    await test_server.close()


async def read_lines(url: str) -> tuple[list[str], dict[str, str]]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.text()).splitlines(), dict(resp.headers)


async def test_chunked_ticks_then_done_with_stream_headers(server: TestServer) -> None:
    lines, headers = await read_lines(
        str(server.make_url("/api/stream-test?interval=0.01&duration=0.1"))
    )
    ticks = [json.loads(line[5:]) for line in lines if line.startswith("tick ")]
    assert [t["n"] for t in ticks] == list(range(1, 11))
    assert all(b["e"] > a["e"] for a, b in zip(ticks, ticks[1:], strict=False))
    assert lines[-1] == "done"
    assert headers["X-Accel-Buffering"] == "no"
    assert headers["Cache-Control"] == "no-cache, no-transform"
    assert headers["X-Stream-Test-Origin"] == "pploy"
    assert headers["Transfer-Encoding"] == "chunked"


async def test_parameters_are_clamped_and_checked(server: TestServer) -> None:
    async with aiohttp.ClientSession() as session:
        url = server.make_url("/api/stream-test?interval=0.00001&duration=9999&heartbeat=-1")
        async with session.get(url) as resp:
            params = json.loads(resp.headers["X-Stream-Test-Params"])
        assert params["interval"] == 0.01 and params["duration"] == 60.0
        assert params["heartbeat"] is None
        async with session.get(server.make_url("/api/stream-test?interval=soon")) as resp:
            assert resp.status == 400
            assert "interval" in await resp.text()
        async with session.get(server.make_url("/api/stream-test?duration=nan")) as resp:
            assert resp.status == 400


async def test_heartbeats_fill_silences_unless_turned_off(server: TestServer) -> None:
    base = "/api/stream-test/events?interval=0.5&duration=0.5"
    with_beats, _ = await read_lines(str(server.make_url(base + "&heartbeat=0.2")))
    assert with_beats.count(": heartbeat") == 2
    assert with_beats.index(": heartbeat") < with_beats.index("event: tick")
    silent, _ = await read_lines(str(server.make_url(base + "&heartbeat=0")))
    assert ": heartbeat" not in silent
    assert silent[-3:] == ["event: done", "data: {}", ""]
    assert "id: 1" in silent


async def test_websocket_ticks_pings_and_closes_normally(server: TestServer) -> None:
    url = server.make_url("/.gate/stream-test/ws?interval=0.3&duration=0.3&heartbeat=0.2")
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, autoping=False) as ws:
            assert ws._response.headers["X-Stream-Test-Origin"] == "gate"
            kinds = []
            while True:
                msg = await ws.receive(timeout=5)
                kinds.append(msg.type)
                if msg.type == aiohttp.WSMsgType.PING:
                    await ws.pong(msg.data)
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    payload = json.loads(msg.data)
                    assert payload.get("n") == 1 or payload == {"done": True}
                elif msg.type == aiohttp.WSMsgType.CLOSE:
                    assert msg.data == 1000
                    break
    assert kinds[0] == aiohttp.WSMsgType.PING
    assert kinds.count(aiohttp.WSMsgType.TEXT) == 2


async def test_gate_answers_only_its_own_paths(server: TestServer) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(server.make_url("/.gate/stream-test/other")) as resp:
            assert resp.status == 404 and await resp.text() == "not mine"
        async with session.post(server.make_url("/.gate/stream-test")) as resp:
            assert resp.status == 405


def probe_with(arrivals: list[tuple[float, float]], done: bool = True, **kw) -> Probe:
    probe = Probe(endpoint="pploy", transport="sse", url="https://x/", status=200, **kw)
    probe.headers = {"Server": "nginx/1.22.1"}
    for n, (at, sent) in enumerate(arrivals, 1):
        probe.ticks.append(Tick(n=n, at=at, sent=sent))
        probe.batches.append(Batch(at=at, ticks=1, bytes=50))
    probe.done = done
    probe.ended_at = arrivals[-1][0] if arrivals else 1.0
    return probe


def test_judge_tells_streaming_from_buffered_from_cut() -> None:
    options = Options(url="https://x/", interval=0.1, duration=1.0)
    steady = probe_with([(0.05 + 0.1 * i, 0.1 * i) for i in range(10)])
    judge(steady, options)
    assert steady.verdict == "streaming"

    # One hiccup (three ticks delayed together by 0.3 s) is not buffering.
    hiccup = [(0.05 + 0.1 * i, 0.1 * i) for i in range(10)]
    hiccup[3:6] = [(0.65, 0.3), (0.65, 0.4), (0.65, 0.5)]
    bumpy = probe_with(hiccup)
    judge(bumpy, options)
    assert bumpy.verdict == "streaming", bumpy.detail

    lumped = probe_with([(1.02, 0.1 * i) for i in range(10)])
    judge(lumped, options)
    assert lumped.verdict == "buffered" and lumped.hop == "nginx"
    assert "held up to 0.90 s" in lumped.detail

    cut = probe_with([(0.1, 0.1), (0.2, 0.2)], done=False)
    cut.ended_at = 1.0
    judge(cut, options)
    assert cut.verdict == "broken" and "cut at 1.0 s after 2 of 10" in cut.detail


def test_front_hop_from_headers() -> None:
    assert front_hop({"Server": "nginx/1.22.1"}) == "nginx"
    assert front_hop({"Server": "Python/3.11 aiohttp/3.14.5", "X-Stream-Test-Origin": "gate",
                      "X-Accel-Buffering": "no"}) == "gate"  # fmt: skip
    assert front_hop({"Server": "cloudflare"}).startswith("another proxy")
