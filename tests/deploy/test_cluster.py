"""Two pploy instances (each its own workdir, as on two hosts) on one real PostgreSQL server:
what one does, the other sees; a job's log reaches viewers on both, line by line."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.deploy.support import Fifo, Pploy, make_remote, push_commit, read_until, start_pploy
from tests.deploy.test_server_process import Server, alive, kill_runner
from tests.deploy.test_server_streams import LINES, gated_script, sse_events
from tests.postgres import pg_database, pg_server  # noqa: F401

pytestmark = pytest.mark.slow


@pytest.fixture
async def pair(tmp_path: Path, pg_database: str) -> AsyncIterator[tuple[Pploy, Pploy]]:  # noqa: F811
    a = await start_pploy(tmp_path / "a", database=pg_database)
    b = await start_pploy(tmp_path / "b", database=pg_database)
    yield a, b
    await a.close()
    await b.close()


async def served(pploy: Pploy, name: str, timeout: float = 15) -> dict:
    """The project as ``pploy`` shows it, once it has its clone (503 until then)."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = await pploy.api("GET", f"/api/projects/{name}")
        if status == 200:
            return body["project"]
        assert status == 503, (status, body)
        assert "being cloned" in body["error"]
        assert time.monotonic() < deadline, "the project never reached the other instance"
        await asyncio.sleep(0.05)


async def test_a_project_added_on_a_is_served_by_b_and_removed_from_both(pair, tmp_path):
    a, b = pair
    name = await a.add_project(make_remote(tmp_path))
    project = await served(b, name)
    assert project["name"] == name and "staging" in project["envs"]
    assert (tmp_path / "b/projects" / name / ".deploy/bin/deploy").exists()  # B's own clone
    status, listing = await b.api("GET", "/api/status")
    assert [p["name"] for p in listing["projects"]] == [name]
    # Adding it again on B is a conflict: the database knows it.
    status, body = await b.api(
        "POST", "/api/projects", json={"url": str(tmp_path / "testploy.git")}
    )
    assert status == 409, body
    # Removed on B: gone from A too, clone and all.
    await b.gain(name)
    status, body = await b.api("DELETE", f"/api/projects/{name}")
    assert status in (200, 204), body
    deadline = time.monotonic() + 10
    while (tmp_path / "a/projects" / name).exists():
        assert time.monotonic() < deadline, "A kept the removed project's clone"
        await asyncio.sleep(0.05)
    status, body = await a.api("GET", f"/api/projects/{name}")
    assert status == 404, body


async def test_a_lock_gained_on_a_holds_on_b(pair, tmp_path):
    a, b = pair
    name = await a.add_project(make_remote(tmp_path))
    await served(b, name)
    await a.gain(name, "alice")
    status, body = await b.api("POST", f"/api/projects/{name}/lock", "bob", {"operation": "gain"})
    assert status == 409 and "locked by alice" in body["error"], body
    status, body = await b.api("POST", f"/api/projects/{name}/deploy", "bob", {"env": "staging"})
    assert status == 403, body
    project = await served(b, name)
    assert project["lock"]["user"] == "alice"
    status, body = await b.api(
        "POST", f"/api/projects/{name}/lock", "alice", {"operation": "release"}
    )
    assert status == 200, body
    status, body = await a.api("GET", f"/api/projects/{name}")
    assert body["project"]["lock"] is None


async def test_one_job_per_project_across_both_and_a_deploy_on_b_works(pair, tmp_path):
    a, b = pair
    fifo = Fifo(tmp_path / "go")
    script = (
        f"#!/bin/sh\necho started $DEPLOY_ENV\n{fifo.script_open()}\n{fifo.wait_cmd}\necho end\n"
    )
    name = await a.add_project(make_remote(tmp_path, deploy_script=script))
    await served(b, name)
    await a.gain(name)
    job = await b.deploy(name)  # started on B
    seen = bytearray()
    async with a.client().get(a.url(f"/api/jobs/{job}/log?follow=1")) as resp:  # followed on A
        await read_until(resp, b"started staging", seen)
        # While it runs on B, neither instance starts another job on the project.
        for pploy in (a, b):
            status, body = await pploy.api(
                "POST", f"/api/projects/{name}/deploy", json={"env": "production"}
            )
            assert status == 409 and "running" in body["error"], body
        await fifo.release()
        seen.extend(await asyncio.wait_for(resp.content.read(), 10))
    fifo.close()
    assert b"end\n" in seen and b"[pploy] deploy succeeded" in seen
    for pploy in (a, b):
        status, body = await pploy.api("GET", f"/api/jobs/{job}")
        assert body["job"]["status"] == "succeeded", body
        assert body["job"]["instance"] == b.services.jobs.instance
        assert await pploy.log(job) == bytes(seen)  # B's file, A's copy from the database


async def test_a_deploy_on_a_streams_line_by_line_to_sse_on_b_and_websocket_on_a(pair, tmp_path):
    a, b = pair
    fifo = Fifo(tmp_path / "go")
    name = await a.add_project(make_remote(tmp_path, deploy_script=gated_script(fifo)))
    await served(b, name)
    await a.gain(name)
    job = await a.deploy(name)
    text = ""
    received = bytearray()
    async with (
        b.client().get(b.url(f"/api/jobs/{job}/events")) as sse,
        a.client().ws_connect(a.url(f"/api/jobs/{job}/ws")) as ws,
    ):
        events = sse_events(sse.content)
        for i in range(1, LINES + 1):
            line = f"line {i}"
            while line not in text:
                event = await asyncio.wait_for(anext(events), 10)
                assert event["event"] == "log", event
                text += json.loads(event["data"])
            while line.encode() not in received:
                msg = await asyncio.wait_for(ws.receive(), 10)
                assert msg.type == aiohttp.WSMsgType.BINARY, msg
                received.extend(msg.data)
            assert f"line {i + 1}" not in text  # it cannot exist yet: the script waits
            await fifo.release()
        final = None
        async for event in events:
            if event["event"] == "log":
                text += json.loads(event["data"])
            elif event["event"] == "status":
                final = json.loads(event["data"])
                break
        while (msg := await asyncio.wait_for(ws.receive(), 10)).type == aiohttp.WSMsgType.BINARY:
            received.extend(msg.data)
    fifo.close()
    assert final is not None and final["status"] == "succeeded", final
    log = await a.log(job)
    assert text.encode() == log == bytes(received)
    assert await b.log(job) == log  # a finished log, read on B from the database
    # SSE ids are byte offsets on every instance: resuming on B from A's offset loses nothing.
    half = len(log) // 2
    async with b.client().get(b.url(f"/api/jobs/{job}/log?offset={half}")) as resp:
        assert await resp.read() == log[half:]


async def test_a_sigkilled_instance_s_job_runs_on_and_a_dead_runner_s_lease_expires(
    tmp_path: Path,
    pg_database: str,  # noqa: F811
) -> None:
    """SIGKILL of instance A leaves its deploy to the runner (B shows it running past the
    lease); once the runner dies too, B declares the job interrupted, but only after its lease
    (4 s here) has expired."""
    fifo = Fifo(tmp_path / "go")
    pidfile = tmp_path / "pid"
    script = (
        f"#!/bin/sh\necho $$ > {pidfile}\necho line one\n{fifo.script_open()}\n"
        f"{fifo.wait_cmd}\necho never\n"
    )
    remote = make_remote(tmp_path, deploy_script=script)
    config = tmp_path / "pploy.yml"
    config.write_text(
        f"users: [alice, bob]\ndatabase: {pg_database}\n"
        "job:\n  lease_seconds: 4\n  fence_seconds: 3\n"
    )
    a = Server(tmp_path / "a", config)
    b = await start_pploy(tmp_path / "b", database=pg_database)
    try:
        async with aiohttp.ClientSession(cookies={"user": "alice"}) as http:
            job = await a.start_deploy(http, remote)
            async with http.get(a.base + f"/api/jobs/{job}/log?follow=1") as resp:
                seen = bytearray()
                await read_until(resp, b"line one", seen)
                a.stop(signal.SIGKILL)
        await asyncio.sleep(8)  # twice the lease: its runner renews it
        status, body = await b.api("GET", f"/api/jobs/{job}")
        assert body["job"]["status"] == "running", body
        kill_runner(tmp_path / "a", job)
        killed_at = time.monotonic()
        script_pid = int(pidfile.read_text())
        while True:
            status, body = await b.api("GET", f"/api/jobs/{job}")
            if body["job"]["status"] != "running":
                break
            assert time.monotonic() - killed_at < 20, "still running 20 s after the runner died"
            await asyncio.sleep(0.2)
        assert time.monotonic() - killed_at > 3  # not before the lease can have expired
        assert body["job"]["status"] == "interrupted", body
        assert "lease expired" in body["job"]["message"]
        project = await served(b, "testploy")
        assert project["lock"]["user"] == "alice"  # the lock stays
        log = await b.log(job)
        # So does the log, as its runner left it: B writes nothing into it (a runner only cut
        # off would still ship its rest there); the reason is the record's message.
        assert log.endswith(b"line one\n"), log
        assert not alive(script_pid)  # the script died with its runner (PDEATHSIG)
        a = Server(tmp_path / "a", config)
        async with aiohttp.ClientSession(cookies={"user": "alice"}) as http:
            await a.ready(http)
        status, body = await b.api("GET", f"/api/jobs/{job}")
        assert body["job"]["status"] == "interrupted"
    finally:
        fifo.close()
        a.stop()
        await b.close()


async def test_a_job_running_on_b_is_shown_kept_and_cancelled_through_a(pair, tmp_path):
    a, b = pair
    fifo = Fifo(tmp_path / "go")
    script = f"#!/bin/sh\necho started\n{fifo.script_open()}\n{fifo.wait_cmd}\necho never\n"
    name = await a.add_project(make_remote(tmp_path, deploy_script=script))
    await served(b, name)
    await a.gain(name)
    job = await b.deploy(name)
    try:
        project = await served(a, name)
        assert project["running_job"]["id"] == job  # A shows B's job
        status, body = await a.api("DELETE", f"/api/projects/{name}")
        assert status == 409 and f"job #{job} is running" in body["error"], body
        status, body = await a.api("POST", f"/api/jobs/{job}/cancel", "bob", {})
        assert status == 403, body  # only the lock holder, wherever the job runs
        seen = bytearray()
        async with a.client().get(a.url(f"/api/jobs/{job}/log?follow=1")) as resp:
            await read_until(resp, b"started", seen)  # the script runs on B, waiting
            status, body = await a.api("POST", f"/api/jobs/{job}/cancel", "alice", {})
            assert status == 202, body
            seen.extend(await asyncio.wait_for(resp.content.read(), 20))
        record = await a.wait_job(job)
        assert (record["status"], record["cancelled_by"]) == ("cancelled", "alice")
        # The cancel met the script where it waited: its note follows the script's line.
        assert re.search(rb"started\r?\n\x1b\[1;36m\[pploy\] cancelled by alice", seen), seen
        assert b"never" not in seen and await a.log(job) == bytes(seen)
    finally:
        fifo.close()


async def test_a_deploy_on_b_runs_the_commit_a_checked_out(pair, tmp_path):
    a, b = pair
    remote = make_remote(tmp_path, deploy_script="#!/bin/sh\ncat VERSION 2>/dev/null || echo v0\n")
    name = await a.add_project(remote)
    await served(b, name)
    await a.gain(name)
    sha = push_commit(remote, "v1", {"VERSION": "v1\n"})
    checkout = await a.wait_job(await a.checkout(name, "main"))  # on A only
    assert (checkout["status"], checkout["sha"]) == ("succeeded", sha)
    job = await b.wait_job(await b.deploy(name))
    assert (job["status"], job["sha"]) == ("succeeded", sha), job
    log = await b.log(job["id"])
    assert f"git checkout -f --detach {sha}".encode() in log
    assert b"v1\r\n" in log or b"v1\n" in log  # B's clone followed A's checkout


async def test_a_project_removed_and_added_again_while_b_was_away_is_cloned_afresh(
    pair,
    tmp_path,
    pg_database: str,  # noqa: F811
):
    a, b = pair
    name = await a.add_project(make_remote(tmp_path))
    assert (await served(b, name))["envs"] == ["staging", "production"]
    await b.close()  # B goes away, its clone of the first repository stays in its workdir
    await a.gain(name)
    status, body = await a.api("DELETE", f"/api/projects/{name}")
    assert status == 200, body
    other = make_remote(tmp_path / "other", files={".deploy/config/deploy_envs": "qa\n"})
    assert await a.add_project(other) == name
    b = await start_pploy(tmp_path / "b", database=pg_database)
    try:
        project = await served(b, name)
        assert project["envs"] == ["qa"], project  # the new repository, not B's old clone
        assert project["repository"]["url"] == str(other)
    finally:
        await b.close()
