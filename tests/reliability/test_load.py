"""Load, bounded and on loopback: many projects deploying at once with viewers on each, many
viewers on one deploy, mixed requests through gate. Everything completes, every viewer gets the
log byte for byte, and afterwards nothing is left: no tasks, no log or pty file descriptors, no
processes. Reduced in CI; PPLOY_FULL_LOAD=1 runs the sizes of the issue (50 projects x 20
viewers, 1,000 viewers on one deploy, 10,000 requests through gate)."""

from __future__ import annotations

import asyncio
import json
import os
import random

import aiohttp
import pytest

from tests.deploy.support import Fifo, make_remote, start_pploy
from tests.gate.conftest import client_session, dev_config, dev_login, start_gate
from tests.reliability.common import child_pids, read_sse_log, scaled

pytestmark = pytest.mark.slow  # load

LINES = 200


def load_script(fifo: Fifo) -> str:
    return (
        f"#!/bin/sh\necho start\n{fifo.script_open()}\n{fifo.wait_cmd}\n"
        f'i=0; while [ $i -lt {LINES} ]; do i=$((i+1)); echo "$DEPLOY_PROJECT line $i"; done\n'
    )


def _open_fds() -> dict[str, str]:
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            found[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
    return found


# What the process had open before any job ran (its stdout may itself be a *.log file, or a
# terminal): only descriptors opened since count as a job's.
_BEFORE = _open_fds()


def job_fds() -> list[str]:
    """This process's descriptors that belong to jobs: log files and ptys."""
    return [
        target
        for fd, target in _open_fds().items()
        if _BEFORE.get(fd) != target
        and (target.endswith(".log") or target.startswith(("/dev/ptmx", "/dev/pts")))
    ]


async def settle(baseline: int) -> int:
    """Tasks left once handlers have wound down (waits for up to a few seconds)."""
    for _ in range(100):
        count = len(asyncio.all_tasks())
        if count <= baseline:
            return count
        await asyncio.sleep(0.05)
    return len(asyncio.all_tasks())


async def close_test_clients(pploy) -> None:
    """The test's own keep-alive connections hold a server task each: close them first."""
    for session in pploy.sessions.values():
        await session.close()
    pploy.sessions.clear()


async def view(client: aiohttp.ClientSession, base: str, job: int, kind: str,
               started: asyncio.Event | None = None) -> bytes:  # fmt: skip
    """Follow job ``job`` to its end with one transport; return the bytes seen."""
    if kind == "raw":
        async with client.get(f"{base}/api/jobs/{job}/log?follow=1") as resp:
            assert resp.status == 200
            if started:
                started.set()
            return await resp.read()
    if kind == "sse":
        async with client.get(f"{base}/api/jobs/{job}/events") as resp:
            assert resp.status == 200
            if started:
                started.set()
            text, _, status = await read_sse_log(resp.content, timeout=120)
            assert status and status["status"] == "succeeded"
            return text.encode()
    async with client.ws_connect(f"{base}/api/jobs/{job}/ws") as ws:
        if started:
            started.set()
        got = bytearray()
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                got += msg.data
            elif msg.type == aiohttp.WSMsgType.TEXT:
                assert json.loads(msg.data)["status"] == "succeeded"
        assert ws.close_code == 1000
        return bytes(got)


async def test_many_projects_deploying_at_once_with_viewers_each(tmp_path):
    projects = scaled(8, 50)
    viewers = scaled(6, 20)
    children_before = child_pids()  # servers other tests of this worker keep (browsers…)
    pploy = await start_pploy(tmp_path / "work")
    fifos = []
    tasks_before = len(asyncio.all_tasks())
    try:
        for i in range(projects):
            fifo = Fifo(tmp_path / f"go{i}")
            fifos.append(fifo)
            name = await pploy.add_project(
                make_remote(tmp_path, f"p{i}", deploy_script=load_script(fifo))
            )
            await pploy.gain(name)
        await close_test_clients(pploy)
        tasks_before = len(asyncio.all_tasks())
        jobs = await asyncio.gather(*(pploy.deploy(f"p{i}") for i in range(projects)))
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, cookies={"user": "alice"}) as client:
            started = []
            followers = []
            for job in jobs:
                for v in range(viewers):
                    event = asyncio.Event()
                    started.append(event)
                    kind = ("raw", "sse", "ws")[v % 3]
                    followers.append(
                        asyncio.create_task(view(client, pploy.base, job, kind, event))
                    )
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 60)
            for fifo in fifos:  # every viewer is attached: now all deploys print at once
                await fifo.release()
            results = await asyncio.wait_for(asyncio.gather(*followers), 120)
        for index, job in enumerate(jobs):
            record = await pploy.wait_job(job)
            assert record["status"] == "succeeded", record
            raw = await pploy.log(job)
            assert raw.count(b" line ") == LINES
            for got in results[index * viewers : (index + 1) * viewers]:
                assert got == raw  # every viewer, every transport: byte for byte
        assert not pploy.services.jobs.running
        assert job_fds() == []
        assert child_pids() - children_before == set()
        await close_test_clients(pploy)
        assert await settle(tasks_before) <= tasks_before
    finally:
        for fifo in fifos:
            fifo.close()
        await pploy.close()


async def test_many_viewers_on_one_deploy(tmp_path):
    viewers = scaled(200, 1000)
    fifo = Fifo(tmp_path / "go")
    children_before = child_pids()
    pploy = await start_pploy(tmp_path / "work")
    try:
        name = await pploy.add_project(make_remote(tmp_path, deploy_script=load_script(fifo)))
        await pploy.gain(name)
        await close_test_clients(pploy)
        await settle(0)
        tasks_before = len(asyncio.all_tasks())
        fds_before = len(os.listdir("/proc/self/fd"))
        job = await pploy.deploy(name)
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), cookies={"user": "alice"}
        ) as client:
            started = [asyncio.Event() for _ in range(viewers)]
            followers = [
                asyncio.create_task(
                    view(client, pploy.base, job, ("sse", "raw", "ws")[i % 3], started[i])
                )
                for i in range(viewers)
            ]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 60)
            await fifo.release()
            results = await asyncio.wait_for(asyncio.gather(*followers), 120)
        raw = await pploy.log(job)
        assert all(got == raw for got in results)
        assert job_fds() == [] and child_pids() - children_before == set()
        await close_test_clients(pploy)
        fifo.close()  # the test's own descriptor
        assert await settle(tasks_before) <= tasks_before
        # The viewers' sockets are closed on both sides: descriptors are back where they were.
        for _ in range(100):
            if len(os.listdir("/proc/self/fd")) <= fds_before:
                break
            await asyncio.sleep(0.05)
        assert len(os.listdir("/proc/self/fd")) <= fds_before
    finally:
        fifo.close()
        await pploy.close()


async def test_mixed_requests_through_gate(tmp_path):
    total = scaled(1000, 10_000)
    children_before = child_pids()
    pploy = await start_pploy(tmp_path / "work", **{"auth.mode": "proxy"})
    await settle(0)
    tasks_before = len(asyncio.all_tasks())
    fds_before = len(os.listdir("/proc/self/fd"))
    gate = await start_gate(
        dev_config(proxy=[{"path": "/", "dest": pploy.base, "strip_path": False}])
    )
    try:
        async with client_session(connector=aiohttp.TCPConnector(limit=0)) as client:
            await dev_login(client, gate.url, "alice")
            origin = {"Origin": gate.url}
            remote = make_remote(tmp_path, deploy_script="#!/bin/sh\nseq 1 500\n")
            async with client.post(gate.url + "/api/projects", json={"url": str(remote)},
                                   headers=origin) as resp:  # fmt: skip
                assert resp.status == 201
            async with client.post(gate.url + "/api/projects/testploy/lock",
                                   json={"operation": "gain"}, headers=origin) as resp:  # fmt: skip
                assert resp.status == 200
            async with client.post(gate.url + "/api/projects/testploy/deploy",
                                   json={"env": "staging"}, headers=origin) as resp:  # fmt: skip
                job = (await resp.json())["job"]["id"]
            raw = await view(client, gate.url, job, "raw")

            async def page(path: str) -> None:
                async with client.get(gate.url + path, headers={"Accept": "text/html"}) as r:
                    assert r.status == 200 and "</html>" in await r.text(), path

            async def api(path: str) -> None:
                async with client.get(gate.url + path) as r:
                    assert r.status == 200 and isinstance(await r.json(), dict), path

            async def stream(kind: str) -> None:
                got = await view(client, gate.url, job, kind)
                assert got == (raw if kind != "sse" else raw.decode().encode()), kind

            kinds = [
                lambda: page("/"), lambda: page("/projects/testploy"),
                lambda: page(f"/jobs/{job}"), lambda: api("/api/status"),
                lambda: api(f"/api/jobs/{job}"), lambda: api("/api/projects/testploy/jobs"),
                lambda: stream("raw"), lambda: stream("sse"), lambda: stream("ws"),
            ]  # fmt: skip
            rng = random.Random(6)
            gate_limit = asyncio.Semaphore(50)  # 50 concurrent clients, as in the benchmarks

            async def one() -> None:
                async with gate_limit:
                    await rng.choice(kinds)()

            await asyncio.wait_for(asyncio.gather(*(one() for _ in range(total))), 150)
        async with client_session() as fresh:
            async with fresh.get(gate.url + "/ping") as resp:
                assert resp.status == 200
        assert job_fds() == [] and child_pids() - children_before == set()
        # gate's pool of connections to pploy is the only thing left; stopping gate closes it
        # and then every task and descriptor of the run is gone.
        await gate.server.stop()
        assert await settle(tasks_before) <= tasks_before
        for _ in range(100):
            if len(os.listdir("/proc/self/fd")) <= fds_before:
                break
            await asyncio.sleep(0.05)
        assert len(os.listdir("/proc/self/fd")) <= fds_before
    finally:
        await gate.server.stop()
        await pploy.close()
