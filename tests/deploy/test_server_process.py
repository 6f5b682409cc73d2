"""pploy as a real process: crash (SIGKILL) and graceful stop (SIGTERM) keep logs and history."""

from __future__ import annotations

import asyncio
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.deploy.support import Fifo, make_remote
from tests.helpers import free_port


class Server:
    def __init__(self, workdir: Path, config: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pploy", "serve", "--config", str(config), "--workdir",
             str(workdir), "--port", str(self.port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip

    async def ready(self, session: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + 20
        while True:
            try:
                async with session.get(self.base + "/ping") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(self.proc.stdout.read().decode())
            await asyncio.sleep(0.05)

    async def start_deploy(self, http: aiohttp.ClientSession, remote: Path) -> int:
        """Wait for the server, add ``remote``, gain its lock and start a deploy."""
        await self.ready(http)
        async with http.post(self.base + "/api/projects", json={"url": str(remote)}) as resp:
            assert resp.status == 201
        async with http.post(
            self.base + "/api/projects/testploy/lock", json={"operation": "gain"}
        ) as resp:
            assert resp.status == 200
        async with http.post(
            self.base + "/api/projects/testploy/deploy", json={"env": "staging"}
        ) as resp:
            return (await resp.json())["job"]["id"]

    def stop(self, sig: int | None = signal.SIGKILL) -> str:
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        out, _ = self.proc.communicate(timeout=30)
        return out.decode()


def alive(pid: int) -> bool:
    """True for a live process; a zombie (killed, not yet reaped by init) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def write_config(path: Path) -> Path:
    path.write_text(
        "users: [alice, bob]\njob:\n  shutdown_grace_seconds: 1\n  cancel_grace_seconds: [1, 1]\n"
    )
    return path


async def test_sigkill_then_restart_marks_job_interrupted_and_keeps_everything(tmp_path):
    fifo = Fifo(tmp_path / "go")
    pidfile = tmp_path / "pid"
    script = (
        f"#!/bin/sh\necho $$ > {pidfile}\necho line one\n"
        f"{fifo.script_open()}\n{fifo.wait_cmd}\necho never\n"
    )
    remote = make_remote(tmp_path, deploy_script=script)
    config = write_config(tmp_path / "pploy.yml")
    workdir = tmp_path / "work"
    server = Server(workdir, config)
    async with aiohttp.ClientSession(cookies={"user": "alice"}) as http:
        try:
            job = await server.start_deploy(http, remote)
            async with http.get(server.base + f"/api/jobs/{job}/log?follow=1") as resp:
                seen = bytearray()
                while b"line one" not in seen:
                    seen.extend(await asyncio.wait_for(resp.content.readany(), 10))
                server.stop(signal.SIGKILL)
        finally:
            server.stop()
        script_pid = int(pidfile.read_text())
        assert alive(script_pid)  # the orphaned deploy is still there after the crash...
        server = Server(workdir, config)
        try:
            await server.ready(http)
            async with http.get(server.base + f"/api/jobs/{job}") as resp:
                record = (await resp.json())["job"]
            assert record["status"] == "interrupted" and record["ended_at"]
            async with http.get(server.base + f"/api/jobs/{job}/log") as resp:
                log = await resp.read()
            assert b"line one\n" in log and b"interrupted" in log
            assert not alive(script_pid), "the old deploy process survived the restart"
            async with http.get(server.base + "/api/projects/testploy") as resp:
                project = (await resp.json())["project"]
            assert project["lock"]["user"] == "alice"  # the lock survived the crash
            assert project["running_job"] is None
            # the project is usable again
            async with http.post(
                server.base + "/api/projects/testploy/checkout", json={"ref": "main"}
            ) as resp:
                assert resp.status == 202
                job2 = (await resp.json())["job"]["id"]
            async with http.get(server.base + f"/api/jobs/{job2}/log?follow=1") as resp:
                assert b"checkout succeeded" in await resp.read()
        finally:
            out = server.stop(signal.SIGTERM)
        assert "event=job.interrupted" in out  # structured log line
        fifo.close()


async def test_sigterm_waits_then_cancels_and_viewers_get_a_final_status(tmp_path):
    fifo = Fifo(tmp_path / "go")
    script = f"#!/bin/sh\necho working\n{fifo.script_open()}\n{fifo.wait_cmd}\n"
    remote = make_remote(tmp_path, deploy_script=script)
    config = write_config(tmp_path / "pploy.yml")
    workdir = tmp_path / "work"
    server = Server(workdir, config)
    async with aiohttp.ClientSession(cookies={"user": "alice"}) as http:
        try:
            job = await server.start_deploy(http, remote)
            text = ""
            async with http.get(server.base + f"/api/jobs/{job}/events") as resp:
                async for raw in resp.content:
                    line = raw.decode()
                    text += line
                    if "working" in line and server.proc.poll() is None:
                        server.proc.send_signal(signal.SIGTERM)
                    if line.startswith("event: status"):
                        final = await resp.content.readline()
                        break
            assert '"status": "cancelled"' in final.decode()
            assert "pploy (shutdown)" in final.decode()
        finally:
            out = server.stop(
                None if server.proc.poll() is None and "final" in locals() else signal.SIGKILL
            )
    assert server.proc.returncode == 0, out
    db = sqlite3.connect(workdir / "pploy.db")
    status, cancelled_by = db.execute(
        "SELECT status, cancelled_by FROM jobs WHERE id = ?", (job,)
    ).fetchone()
    assert (status, cancelled_by) == ("cancelled", "pploy (shutdown)")
    fifo.close()


async def test_during_the_shutdown_grace_pploy_answers_503_and_streams_keep_flowing(tmp_path):
    """SIGTERM with a deploy running: for job.shutdown_grace_seconds pploy keeps its port,
    answers work-starting requests 503 "shutting down" (JSON for the API, a page for a
    browser), serves reads and the running job's stream, then cancels the job and exits 0."""
    fifo = Fifo(tmp_path / "go")
    script = (
        f"#!/bin/sh\necho working\n{fifo.script_open()}\n{fifo.wait_cmd}\n"
        f"echo during the grace\n{fifo.wait_cmd}\necho never\n"
    )
    remote = make_remote(tmp_path, deploy_script=script)
    grace = 4
    config = tmp_path / "pploy.yml"
    config.write_text(
        f"users: [alice, bob]\njob:\n  shutdown_grace_seconds: {grace}\n"
        "  cancel_grace_seconds: [1, 1]\n"
    )
    server = Server(tmp_path / "work", config)
    async with aiohttp.ClientSession(cookies={"user": "alice"}) as http:
        try:
            job = await server.start_deploy(http, remote)
            async with http.get(server.base + "/") as resp:
                token = re.search(r'name="csrf_token" value="([^"]+)"', await resp.text())[1]
            async with http.get(server.base + f"/api/jobs/{job}/log?follow=1") as stream:
                seen = bytearray()
                while b"working" not in seen:
                    seen.extend(await asyncio.wait_for(stream.content.readany(), 10))
                server.proc.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
                deploy = server.base + "/api/projects/testploy/deploy"
                while True:  # until the signal is handled: 409 (a job runs) before, 503 after
                    async with http.post(deploy, json={"env": "staging"}) as resp:
                        if resp.status == 503:
                            answer = await resp.json()
                            break
                        assert resp.status == 409 and time.monotonic() - signalled < 2
                    await asyncio.sleep(0.05)
                assert set(answer) == {"error"} and "shutting down" in answer["error"]
                async with http.post(
                    server.base + "/api/projects", json={"url": str(remote)}
                ) as resp:
                    assert resp.status == 503  # a clone is work too
                async with http.post(
                    server.base + "/projects/testploy/deploy",
                    data={"env": "staging", "csrf_token": token},
                    headers={"Accept": "text/html"},
                    allow_redirects=False,
                ) as resp:
                    assert resp.status == 503 and resp.content_type == "text/html"
                    assert "shutting down" in await resp.text()
                async with http.post(
                    server.base + "/testploy/checkout", params={"ref": "main"}
                ) as resp:
                    assert resp.status == 503
                async with http.get(server.base + f"/api/jobs/{job}") as resp:
                    assert (await resp.json())["job"]["status"] == "running"  # reads still work
                await fifo.release()  # the job goes on during the grace...
                while b"during the grace" not in seen:
                    seen.extend(await asyncio.wait_for(stream.content.readany(), 10))
                assert time.monotonic() - signalled < grace
                seen.extend(await asyncio.wait_for(stream.content.read(), grace + 10))
            assert b"cancelled: pploy is shutting down" in seen and b"never" not in seen
            out = server.stop(None)
            stopped = time.monotonic() - signalled
        finally:
            if server.proc.poll() is None:
                server.stop(signal.SIGKILL)
            fifo.close()
    assert server.proc.returncode == 0, out
    assert grace <= stopped < grace + 8, stopped  # the grace, then the cancel (1 s + 1 s)
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as http, http.get(server.base + "/ping"):
            pass
