"""Misbehaving deploy scripts: each job ends correctly, its log is byte-exact, viewers finish.

Each test runs a real pploy on loopback with a real git remote and real ptys; the scripts are
synchronised with the test through fifos, never by sleeping.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import time

import aiohttp
import pytest
from aiohttp import web

from pploy.deploy.web import streams
from tests.deploy.support import Fifo, git, make_remote, start_pploy
from tests.helpers import require_binary
from tests.reliability.common import FULL_LOAD, read_sse_log, scaled, sse_events


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


async def project_with(tmp_path, script: str, **settings):
    remote = make_remote(tmp_path, deploy_script=script)
    pploy = await start_pploy(tmp_path / "work", **settings)
    name = await pploy.add_project(remote)
    await pploy.gain(name)
    return pploy, name


@pytest.mark.slow  # waits for the pty to be let go
async def test_a_daemon_that_keeps_the_pty_open_does_not_hold_the_job(tmp_path):
    """The script starts a background process (still writing to the pty) and exits 0: the job
    ends as succeeded shortly after the script, every viewer gets the final status."""
    pidfile = tmp_path / "daemon.pid"
    script = (
        "#!/bin/sh\necho before\n"
        # setsid: the daemon leaves the job's process group but keeps the pty as stdout.
        f"setsid sh -c 'echo $$ > {pidfile}; while :; do echo tick; sleep 0.2; done' &\n"
        f"while [ ! -s {pidfile} ]; do sleep 0.01; done\necho after\nexit 0\n"
    )
    pploy, name = await project_with(tmp_path, script)
    try:
        started = time.monotonic()
        job = await pploy.deploy(name)
        async with pploy.client().get(pploy.url(f"/api/jobs/{job}/events")) as resp:
            text, _, status = await read_sse_log(resp.content, timeout=20)
        elapsed = time.monotonic() - started
        record = await pploy.wait_job(job)
        assert record["status"] == "succeeded" and record["exit_code"] == 0
        assert status["status"] == "succeeded"
        assert "before" in text and "after" in text
        # The script exited at once; pploy stops reading ~1 s (drain) after it, not never.
        assert elapsed < 10
        log = await pploy.log(job)
        assert log.rstrip().endswith(b"deploy succeeded, exit code 0\x1b[0m")
        # The daemon was started on purpose by the deploy and is not the job any more.
        daemon = int(pidfile.read_text())
        assert alive(daemon)
        # The project is free for the next job at once (which starts a daemon of its own).
        pidfile.unlink()
        job2 = await pploy.deploy(name)
        assert (await pploy.wait_job(job2))["status"] == "succeeded"
        os.kill(daemon, 9)
        os.kill(int(pidfile.read_text()), 9)  # the second deploy's daemon: not left behind
    finally:
        await pploy.close()


@pytest.mark.slow  # waits out the signal escalation
async def test_a_script_that_ignores_sigint_and_sigterm_is_still_cancelled(tmp_path):
    pidfile = tmp_path / "pid"
    script = (
        "#!/bin/sh\ntrap '' INT TERM\n"
        f"echo $$ > {pidfile}\necho stubborn\nwhile :; do sleep 0.05; done\n"
    )
    pploy, name = await project_with(tmp_path, script)
    try:
        job = await pploy.deploy(name)
        async with pploy.client().get(pploy.url(f"/api/jobs/{job}/log?follow=1")) as resp:
            seen = b""
            while b"stubborn" not in seen:
                seen += await asyncio.wait_for(resp.content.readany(), 10)
            started = time.monotonic()
            status, _ = await pploy.api("POST", f"/api/jobs/{job}/cancel", json={})
            assert status == 202
            seen += await asyncio.wait_for(resp.content.read(), 20)
        elapsed = time.monotonic() - started
        record = await pploy.wait_job(job)
        assert record["status"] == "cancelled" and record["cancelled_by"] == "alice"
        assert record["signal"] == 9  # INT and TERM ignored: KILL ended it
        assert elapsed < 8  # grace [1, 1] s, then SIGKILL
        assert not alive(int(pidfile.read_text()))
        assert seen == await pploy.log(job)
        assert b"cancelled by alice" in seen and b"killed by SIGKILL" in seen
    finally:
        await pploy.close()


@pytest.mark.slow  # big log
async def test_a_huge_output_is_kept_byte_exact_and_followed_live(tmp_path):
    """50 MB in CI (1 GB with PPLOY_FULL_LOAD=1) of pseudo-random bytes as fast as the script
    can write them: the log file and a live follower both hold exactly those bytes."""
    openssl = require_binary("openssl")
    size = scaled(50 * 1000 * 1000, 1000 * 1000 * 1000)
    gen = (
        f"{openssl} enc -aes-128-ctr -nosalt -K 00112233445566778899aabbccddeeff "
        f"-iv 0102030405060708090a0b0c0d0e0f10 < /dev/zero 2>/dev/null | head -c {size}"
    )
    expected = hashlib.sha256()
    proc = subprocess.Popen(["sh", "-c", gen], stdout=subprocess.PIPE)
    while chunk := proc.stdout.read(1 << 20):
        expected.update(chunk)
    proc.wait()
    pploy, name = await project_with(
        tmp_path, f"#!/bin/sh\necho START\n{gen}\necho\necho END\n",
        **{"job.max_log_bytes": size + (1 << 20)},
    )  # fmt: skip
    try:
        job = await pploy.deploy(name)
        followed = hashlib.sha256()
        total = 0
        async with pploy.client().get(pploy.url(f"/api/jobs/{job}/log?follow=1")) as resp:
            async for chunk in resp.content.iter_any():
                followed.update(chunk)
                total += len(chunk)
        record = await pploy.wait_job(job, timeout=600 if FULL_LOAD else 60)
        assert record["status"] == "succeeded", record
        path = pploy.services.jobs.log_path(pploy.services.jobs.get(job))
        assert path.stat().st_size == total == record["log_bytes"]
        with open(path, "rb") as fh:
            head = fh.read(4096)
            start = head.index(b"START\n") + len(b"START\n")
            fh.seek(start)
            got = hashlib.sha256()
            left = size
            while left:
                chunk = fh.read(min(left, 1 << 20))
                assert chunk, "log shorter than the output"
                got.update(chunk)
                left -= len(chunk)
            assert fh.read(5) == b"\nEND\n"
        assert got.hexdigest() == expected.hexdigest()
        with open(path, "rb") as fh:
            whole = hashlib.sha256()
            while chunk := fh.read(1 << 20):
                whole.update(chunk)
        assert followed.hexdigest() == whole.hexdigest()
    finally:
        await pploy.close()


NASTY = (
    b"nul:\x00| ff:\xff fe:\xfe| bad:\xc3\x28| cut:\xe2\x82| ok:\xe6\x97\xa5 \x1b[31mred\x1b[0m\n"
)


async def test_invalid_utf8_and_nul_bytes(tmp_path):
    """The raw log keeps the bytes; SSE replaces what is not UTF-8 and carries on; WebSocket
    frames carry the bytes; the job page renders."""
    script = "#!/bin/sh\nprintf '" + "".join(f"\\{b:03o}" for b in NASTY) + "'\necho tail\n"
    pploy, name = await project_with(tmp_path, script)
    try:
        job = await pploy.deploy(name)
        record = await pploy.wait_job(job)
        assert record["status"] == "succeeded"
        raw = await pploy.log(job)
        assert NASTY + b"tail\n" in raw
        async with pploy.client().get(pploy.url(f"/api/jobs/{job}/events")) as resp:
            text, ids, status = await read_sse_log(resp.content)
        assert status["status"] == "succeeded"
        assert ids[-1] == len(raw)
        assert text == raw.decode(errors="replace")
        assert "nul:\x00|" in text and "ok:日" in text and "tail" in text
        async with pploy.client().ws_connect(pploy.url(f"/api/jobs/{job}/ws")) as ws:
            got = b""
            final = None
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    got += msg.data
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    final = json.loads(msg.data)
        assert got == raw and final["status"] == "succeeded"
        assert ws.close_code == 1000
        async with pploy.client().get(pploy.url(f"/jobs/{job}")) as resp:
            assert resp.status == 200
            page = await resp.text()
        assert "succeeded" in page
    finally:
        await pploy.close()


@pytest.mark.slow  # seconds of silence
async def test_a_silent_script_gets_heartbeats_past_the_interval(tmp_path, monkeypatch):
    """A script that prints nothing for longer than the heartbeat: SSE viewers get `: ping`
    comments and WebSocket viewers pings, then the output and the status when it resumes."""
    monkeypatch.setattr(streams, "HEARTBEAT_SECONDS", 1.0)
    fifo = Fifo(tmp_path / "go")
    script = f"#!/bin/sh\n{fifo.script_open()}\n{fifo.wait_cmd}\necho woke\n"
    pploy, name = await project_with(tmp_path, script)
    try:
        job = await pploy.deploy(name)
        # The WebSocket viewer answers the server's pings (as browsers do) and must stay open
        # through the silence; the SSE viewer must see the `: ping` comments.
        async with pploy.client().ws_connect(pploy.url(f"/api/jobs/{job}/ws")) as ws:

            async def read_ws() -> bytes:  # reading all along answers pings at once
                got = b""
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        got += msg.data
                return got

            reader = asyncio.create_task(read_ws())
            async with pploy.client().get(pploy.url(f"/api/jobs/{job}/events")) as resp:
                events = sse_events(resp.content)
                pings = 0
                while pings < 2:  # more than one: the stream stays alive, not just one comment
                    event = await asyncio.wait_for(anext(events), 10)
                    # Only pploy's own "$ DEPLOY_ENV=… .deploy/bin/deploy" line: the script
                    # is silent.
                    assert "woke" not in event.get("data", ""), event
                    pings += event.get("comment") == "ping"
                assert not ws.closed
                await fifo.release()
                text, _, status = await read_sse_log(resp.content)
            assert "woke" in text and status["status"] == "succeeded"
            got = await asyncio.wait_for(reader, 10)
            assert b"woke" in got and ws.close_code == 1000
        assert (await pploy.wait_job(job))["status"] == "succeeded"
    finally:
        fifo.close()
        await pploy.close()


async def test_checkout_of_a_missing_ref_fails_clearly_and_changes_nothing(tmp_path):
    pploy, name = await project_with(tmp_path, "#!/bin/sh\necho deployed\n")
    try:
        clone = pploy.services.projects.get(name).path
        head = git("rev-parse", "HEAD", cwd=clone).strip()
        job = await pploy.checkout(name, "no-such-branch")
        record = await pploy.wait_job(job)
        assert record["status"] == "failed"
        assert record["message"] == "'no-such-branch' is not a branch, tag or commit of origin"
        log = await pploy.log(job)
        assert b"git fetch" in log and b"not a branch, tag or commit" in log
        assert b"git checkout" not in log  # nothing ran after the ref failed to resolve
        assert git("rev-parse", "HEAD", cwd=clone).strip() == head
        job2 = await pploy.deploy(name)  # the project is usable again
        assert (await pploy.wait_job(job2))["status"] == "succeeded"
    finally:
        await pploy.close()


@pytest.mark.slow  # waits out webhook timeouts
@pytest.mark.parametrize("failure", ["hang", "500"])
async def test_a_failing_webhook_receiver_neither_fails_nor_delays_deploys(
    tmp_path, caplog, failure
):
    hanging: list[asyncio.Event] = []
    released = asyncio.Event()
    calls: list[str] = []

    async def receive(request: web.Request) -> web.Response:
        calls.append((await request.json())["event"])
        if failure == "hang":
            event = asyncio.Event()
            hanging.append(event)
            event.set()
            await released.wait()  # hangs for as long as the test wants
        return web.Response(status=500, text="receiver broken")

    receiver = web.Application()
    receiver.router.add_post("/hook", receive)
    runner = web.AppRunner(receiver, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    hook = {"url": f"http://127.0.0.1:{port}/hook", "timeout_seconds": 0.5, "retries": 1}
    caplog.set_level("INFO", logger="pploy")
    pploy, name = await project_with(tmp_path, "#!/bin/sh\necho deployed\n", webhooks=[hook])
    try:
        started = time.monotonic()
        job = await pploy.deploy(name)
        record = await pploy.wait_job(job)
        assert record["status"] == "succeeded"
        assert time.monotonic() - started < 5
        assert "lock.gained" in calls  # the receiver was reached, and failed
        # Every send is abandoned after its timeout, retried once, and logged as failed.
        notifier = pploy.services.notifier
        if notifier._tasks:
            await asyncio.wait(set(notifier._tasks), timeout=15)
        failures = [r.getMessage() for r in caplog.records if "webhook.failed" in r.getMessage()]
        assert any("lock.gained" in f and "attempt=2" in f for f in failures), failures
        assert any("job.finished" in f for f in failures), failures
        expected = "TimeoutError" if failure == "hang" else "HTTP 500"
        assert all(expected in f for f in failures), failures
    finally:
        released.set()
        await pploy.close()
        await runner.cleanup()
