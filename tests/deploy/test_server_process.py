"""pploy as a real process: crash (SIGKILL) and graceful stop (SIGTERM) keep logs and history."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from tests.deploy.support import Fifo, make_remote
from tests.helpers import free_port


class Server:
    """``pploy serve`` as a subprocess: with a config and workdir, or ``argv`` exactly as given
    (run in ``cwd``, listening on ``port``)."""

    def __init__(
        self,
        workdir: Path | None = None,
        config: Path | None = None,
        *,
        argv: list[str] | None = None,
        cwd: Path | None = None,
        port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        if argv is None:
            argv = [sys.executable, "-m", "pploy", "serve", "--config", str(config), "--workdir",
                    str(workdir), "--port", str(self.port)]  # fmt: skip
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )

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


def pploy_command() -> list[str]:
    """The installed ``pploy`` entry point (the one next to this Python), as a user runs it."""
    script = Path(sys.executable).parent / "pploy"
    return [str(script)] if script.exists() else [sys.executable, "-m", "pploy"]


def port_is_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def test_the_documented_command_deploys_from_an_empty_directory(tmp_path):
    """`pploy serve --users alice` exactly as the issue and README give it, started in an empty
    directory with no config and no PPLOY_* variables: the default workdir (./pploy-work,
    relative) holds a project whose .deploy/bin/deploy and checkout_overwrite both run.
    Only when the default port 9000 is taken is `--port` (a documented flag) added."""
    remote = make_remote(
        tmp_path,
        deploy_script="#!/bin/sh\necho deployed $DEPLOY_ENV from $(pwd)\n",
        files={".deploy/bin/checkout_overwrite": "#!/bin/sh\necho overwrite $DEPLOY_COMMIT\n"},
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PPLOY_")}
    argv = [*pploy_command(), "serve", "--users", "alice"]
    port = 9000
    if not port_is_free(port):
        port = free_port()
        argv += ["--port", str(port)]
    server = Server(argv=argv, cwd=empty, port=port, env=env)
    async with aiohttp.ClientSession(cookies={"user": "alice"}) as http:
        try:
            job = await server.start_deploy(http, remote)
            async with http.get(server.base + f"/api/jobs/{job}/log?follow=1") as resp:
                log = await resp.read()
            async with http.get(server.base + f"/api/jobs/{job}") as resp:
                record = (await resp.json())["job"]
            assert record["status"] == "succeeded", log.decode(errors="replace")
            project_dir = empty / "pploy-work" / "projects" / "testploy"
            assert f"deployed staging from {project_dir}".encode() in log
            async with http.post(
                server.base + "/api/projects/testploy/checkout", json={"ref": "main"}
            ) as resp:
                assert resp.status == 202
                job2 = (await resp.json())["job"]["id"]
            async with http.get(server.base + f"/api/jobs/{job2}/log?follow=1") as resp:
                log2 = await resp.read()
            assert b"overwrite main" in log2 and b"checkout succeeded" in log2, log2
        finally:
            out = server.stop(signal.SIGTERM)
    assert f"workdir {empty / 'pploy-work'}" in out  # the absolute path, said at start
