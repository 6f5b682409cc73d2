"""Live log streaming through a real pploy: each line reaches a viewer before the next is
written (the script blocks on a fifo the test opens only after it saw the line)."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.deploy.support import Fifo, make_remote, read_until, start_pploy

LINES = 3


def gated_script(fifo: Fifo, lines: int = LINES) -> str:
    # The script opens the fifo after its first line: opening blocks until the test's release.
    body = "".join(
        f'printf "\\033[32mline {i}\\033[0m\\n"\n'
        + (f"{fifo.script_open()}\n" if i == 1 else "")
        + f"{fifo.wait_cmd}\n"
        for i in range(1, lines + 1)
    )
    return "#!/bin/sh\n" + body + "echo done\n"


@pytest.fixture
async def gated(tmp_path):
    fifo = Fifo(tmp_path / "go")
    remote = make_remote(tmp_path, deploy_script=gated_script(fifo))
    pploy = await start_pploy(tmp_path / "work")
    name = await pploy.add_project(remote)
    await pploy.gain(name)
    yield pploy, name, fifo
    fifo.close()
    await pploy.close()


async def test_chunked_follow_gets_each_line_before_the_next(gated):
    pploy, name, fifo = gated
    job = await pploy.deploy(name)
    seen = bytearray()
    async with pploy.client().get(pploy.url(f"/api/jobs/{job}/log?follow=1")) as resp:
        assert resp.headers["X-Accel-Buffering"] == "no"
        assert resp.headers.get("Transfer-Encoding") == "chunked"
        for i in range(1, LINES + 1):
            await read_until(resp, f"line {i}".encode(), seen)
            # Seen here, before the next exists (the script waits for the release below).
            assert f"line {i}".encode() in seen and f"line {i + 1}".encode() not in seen
            await fifo.release()
        seen.extend(await resp.content.read())
    assert b"\x1b[32mline 1\x1b[0m\n" in seen  # colours and bytes kept exactly
    assert b"done\n" in seen
    assert (await pploy.log(job)) == bytes(seen)


async def test_sse_gets_each_line_before_the_next(gated):
    pploy, name, fifo = gated
    job = await pploy.deploy(name)
    text = ""
    async with pploy.client().get(pploy.url(f"/api/jobs/{job}/events")) as resp:
        assert resp.content_type == "text/event-stream"
        assert resp.headers["Cache-Control"] == "no-cache, no-transform"
        assert resp.headers["X-Accel-Buffering"] == "no"
        events = sse_events(resp.content)
        for i in range(1, LINES + 1):
            while f"line {i}" not in text:
                event = await asyncio.wait_for(anext(events), 10)
                assert event["event"] == "log", event
                text += json.loads(event["data"])
            await fifo.release()
        final = None
        async for event in events:
            if event["event"] == "log":
                text += json.loads(event["data"])
            elif event["event"] == "status":
                final = json.loads(event["data"])
                break
    assert final["status"] == "succeeded" and final["exit_code"] == 0
    assert text.encode() == await pploy.log(job)


async def test_websocket_gets_each_line_before_the_next_then_status_and_close(gated):
    pploy, name, fifo = gated
    job = await pploy.deploy(name)
    received = bytearray()
    async with pploy.client().ws_connect(pploy.url(f"/api/jobs/{job}/ws")) as ws:
        for i in range(1, LINES + 1):
            while f"line {i}".encode() not in received:
                msg = await asyncio.wait_for(ws.receive(), 10)
                assert msg.type == aiohttp.WSMsgType.BINARY, msg
                received.extend(msg.data)
            await fifo.release()
        status = None
        while True:
            msg = await asyncio.wait_for(ws.receive(), 10)
            if msg.type == aiohttp.WSMsgType.BINARY:
                received.extend(msg.data)
            elif msg.type == aiohttp.WSMsgType.TEXT:
                status = json.loads(msg.data)
            else:
                break
        assert msg.type == aiohttp.WSMsgType.CLOSE, msg
        assert msg.data == 1000, msg
        assert ws.close_code == 1000
    assert status["status"] == "succeeded"
    assert bytes(received) == await pploy.log(job)


async def sse_events_from(content):
    event: dict[str, str] = {}
    async for raw in content:
        line = raw.decode().rstrip("\n")
        if not line:
            if "data" in event:
                yield event
            event = {}
        elif line.startswith(":"):
            continue
        else:
            key, _, value = line.partition(": ")
            event[key] = event.get(key, "") + value if key != "data" else value
    if event:
        yield event


def sse_events(content):
    return sse_events_from(content).__aiter__()


async def test_late_joiner_and_last_event_id_resume_lose_nothing(tmp_path):
    fifo = Fifo(tmp_path / "go")
    script = (
        "#!/bin/sh\n"
        'i=0; while [ $i -lt 200 ]; do echo "row $i é✓"; i=$((i+1)); done\n'
        f"{fifo.script_open()}\n{fifo.wait_cmd}\n"
        'i=200; while [ $i -lt 400 ]; do echo "row $i"; i=$((i+1)); done\n'
    )
    pploy = await start_pploy(tmp_path / "work")
    try:
        name = await pploy.add_project(make_remote(tmp_path, deploy_script=script))
        await pploy.gain(name)
        job = await pploy.deploy(name)
        # A first SSE viewer reads some events, then drops the connection.
        first_text = ""
        last_id = None
        async with pploy.client().get(pploy.url(f"/api/jobs/{job}/events")) as resp:
            events = sse_events(resp.content)
            while "row 150" not in first_text:
                event = await asyncio.wait_for(anext(events), 10)
                if event["event"] == "log":
                    first_text += json.loads(event["data"])
                    last_id = event["id"]
        await fifo.release()
        # It reconnects with Last-Event-ID while the job is still writing.
        rest = ""
        headers = {"Last-Event-ID": last_id}
        url = pploy.url(f"/api/jobs/{job}/events")
        async with pploy.client().get(url, headers=headers) as resp:
            async for event in sse_events_from(resp.content):
                if event["event"] == "log":
                    rest += json.loads(event["data"])
                elif event["event"] == "status":
                    break
        full = (await pploy.log(job)).decode()
        assert first_text + rest == full
        assert full.count("row 399\n") == 1
        # A late joiner, after the end, gets the whole log on every transport.
        async with pploy.client().get(pploy.url(f"/api/jobs/{job}/log?follow=1")) as resp:
            assert (await resp.read()).decode() == full
        got = bytearray()
        async with pploy.client().ws_connect(pploy.url(f"/api/jobs/{job}/ws")) as ws:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    got.extend(msg.data)
        assert got.decode() == full
        # offset= starts exactly there
        async with pploy.client().get(pploy.url(f"/api/jobs/{job}/log?offset=10")) as resp:
            assert (await resp.read()).decode() == full.encode()[10:].decode()
    finally:
        fifo.close()
        await pploy.close()


async def test_sse_event_ids_never_split_a_character(tmp_path):
    # "é" is two bytes: a chunk boundary inside it must not produce a replacement character.
    fifo = Fifo(tmp_path / "go")
    script = (
        f"#!/bin/sh\nprintf 'caf\\303'\n{fifo.script_open()}\n{fifo.wait_cmd}\nprintf '\\251\\n'\n"
    )
    pploy = await start_pploy(tmp_path / "work")
    try:
        name = await pploy.add_project(make_remote(tmp_path, deploy_script=script))
        await pploy.gain(name)
        job = await pploy.deploy(name)
        text = ""
        async with pploy.client().get(pploy.url(f"/api/jobs/{job}/events")) as resp:
            events = sse_events(resp.content)
            # The first event must not contain the half character; release once 'caf' is out.
            event = await asyncio.wait_for(anext(events), 10)
            while "caf" not in text:
                if event["event"] == "log":
                    text += json.loads(event["data"])
                if "caf" not in text:
                    event = await asyncio.wait_for(anext(events), 10)
            assert "\ufffd" not in text
            await fifo.release()
            async for event in events:
                if event["event"] == "log":
                    text += json.loads(event["data"])
                elif event["event"] == "status":
                    break
        assert "café\n" in text
    finally:
        fifo.close()
        await pploy.close()


async def test_pty_makes_stdio_line_buffered(tmp_path):
    """Python's stdout is block-buffered on a pipe; under pploy's pty it is line-buffered.
    PYTHONUNBUFFERED is removed from the child's environment so the pty alone must do it."""
    fifo = Fifo(tmp_path / "go")
    script = (
        "#!/bin/sh\nunset PYTHONUNBUFFERED\n"
        f'exec python3 -c \'print("first"); open("{fifo.path}").readline(); print("second")\'\n'
    )
    pploy = await start_pploy(tmp_path / "work")
    try:
        name = await pploy.add_project(make_remote(tmp_path, deploy_script=script))
        await pploy.gain(name)
        job = await pploy.deploy(name)
        seen = bytearray()
        async with pploy.client().get(pploy.url(f"/api/jobs/{job}/log?follow=1")) as resp:
            await read_until(resp, b"first\n", seen)  # times out if buffered
            assert b"first\n" in seen and b"second" not in seen  # seen before "second" exists
            await fifo.release()
            seen.extend(await resp.content.read())
        assert b"second\n" in seen
    finally:
        fifo.close()
        await pploy.close()


async def test_stdout_and_stderr_interleave_in_order(tmp_path):
    script = "#!/bin/sh\nfor i in 1 2 3; do echo out$i; echo err$i >&2; done\n"
    pploy = await start_pploy(tmp_path / "work")
    try:
        name = await pploy.add_project(make_remote(tmp_path, deploy_script=script))
        await pploy.gain(name)
        job = await pploy.deploy(name)
        await pploy.wait_job(job)
        log = await pploy.log(job)
        assert b"out1\nerr1\nout2\nerr2\nout3\nerr3\n" in log
    finally:
        await pploy.close()


async def test_a_viewer_that_never_reads_neither_slows_the_job_nor_grows_memory(tmp_path):
    script = "#!/bin/sh\nyes 'a line of deploy output' | head -c 20000000\necho end\n"
    pploy = await start_pploy(tmp_path / "work")
    try:
        name = await pploy.add_project(make_remote(tmp_path, deploy_script=script))
        await pploy.gain(name)
        job = await pploy.deploy(name)
        # A viewer that asks for the stream and then never reads a byte.
        reader, writer = await asyncio.open_connection("127.0.0.1", pploy.server.port)
        writer.write(
            f"GET /api/jobs/{job}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Cookie: user=alice\r\n\r\n".encode()
        )
        await writer.drain()
        record = await pploy.wait_job(job, timeout=60)
        assert record["status"] == "succeeded"
        assert record["log_bytes"] > 20_000_000
        buffer = pploy.services.jobs.running.get(job)
        assert buffer is None  # finished and released; nothing held for the stuck viewer
        writer.close()
    finally:
        await pploy.close()


async def test_log_size_limit_says_so_and_the_job_goes_on(tmp_path):
    script = "#!/bin/sh\nyes 0123456789 | head -c 100000\necho after-the-limit >&2\nexit 0\n"
    pploy = await start_pploy(tmp_path / "work", **{"job.max_log_bytes": 4096})
    try:
        name = await pploy.add_project(make_remote(tmp_path, deploy_script=script))
        await pploy.gain(name)
        record = await pploy.wait_job(await pploy.deploy(name))
        assert record["status"] == "succeeded"
        log = await pploy.log(record["id"])
        assert len(log) < 4096 + 300
        assert b"reached its maximum size (4096 bytes)" in log
        assert b"after-the-limit" not in log
    finally:
        await pploy.close()


async def test_memory_tail_stays_bounded():
    import tempfile
    from pathlib import Path

    from pploy.deploy.jobs.following import LogBuffer

    with tempfile.TemporaryDirectory() as tmp:
        buffer = LogBuffer(Path(tmp) / "x.log", memory_bytes=64 * 1024)
        for _ in range(2000):
            buffer.append(b"x" * 1000)
        assert buffer.size == 2_000_000
        assert len(buffer._tail) <= 64 * 1024 * 3 // 2
        # old bytes come from the file, recent ones from memory, identical either way
        assert await buffer.read(0, 10) == b"x" * 10
        assert await buffer.read(buffer.size - 5) == b"x" * 5
        buffer.finish({"status": "succeeded"})
