"""pploy as a real process: crash (SIGKILL) and graceful stop (SIGTERM) keep logs and history."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.deploy.support import Fifo, make_remote, read_until
from tests.helpers import free_port, skip_or_fail

pytestmark = pytest.mark.slow  # `pploy serve` processes per test: kills, restarts, shutdown grace


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
    """A config whose pploy cancels running jobs on SIGTERM (``job.on_shutdown: cancel``, the
    old behaviour; the default leaves them to their runners: tests/reliability)."""
    path.write_text(
        "users: [alice, bob]\njob:\n  shutdown_grace_seconds: 1\n  cancel_grace_seconds: [1, 1]\n"
        "  on_shutdown: cancel\n"
    )
    return path


def runner_pid(workdir: Path, job: int) -> int:
    """The pid of the job's runner (it writes it into the lock it holds)."""
    return int((workdir / "run" / f"job-{job}.lock").read_text())


def kill_runner(workdir: Path, job: int) -> None:
    pid = runner_pid(workdir, job)
    os.kill(pid, signal.SIGKILL)
    while alive(pid):
        time.sleep(0.01)


async def test_sigkill_of_pploy_and_its_runner_then_restart_marks_job_interrupted(tmp_path):
    """pploy SIGKILLed, then the job's runner too (a SIGKILL of pploy alone leaves the job
    running: tests/reliability/test_runner.py): the restart records it interrupted, keeps its
    log and lock, and ends what is left of it."""
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
                await read_until(resp, b"line one")
                server.stop(signal.SIGKILL)
                kill_runner(workdir, job)
        finally:
            server.stop()
        script_pid = int(pidfile.read_text())
        server = Server(workdir, config)
        try:
            await server.ready(http)
            async with http.get(server.base + f"/api/jobs/{job}") as resp:
                record = (await resp.json())["job"]
            assert record["status"] == "interrupted" and record["ended_at"]
            async with http.get(server.base + f"/api/jobs/{job}/log") as resp:
                log = await resp.read()
            assert b"line one\n" in log and b"interrupted" in log
            assert not alive(script_pid), "the old deploy process survived its runner"
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
        "  cancel_grace_seconds: [1, 1]\n  on_shutdown: cancel\n"
    )
    server = Server(tmp_path / "work", config)
    async with aiohttp.ClientSession(cookies={"user": "alice"}) as http:
        try:
            job = await server.start_deploy(http, remote)
            async with http.get(server.base + "/") as resp:
                token = re.search(r'name="csrf_token" value="([^"]+)"', await resp.text())[1]
            async with http.get(server.base + f"/api/jobs/{job}/log?follow=1") as stream:
                seen = await read_until(stream, b"working")
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
                await read_until(stream, b"during the grace", seen)
                assert b"during the grace" in seen  # live, within the grace:
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


def marked(marker: str) -> list[int]:
    """Live processes with ``marker`` as one of their arguments (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if marker.encode() in argv and alive(int(entry)):
            found.append(int(entry))
    return found


def _argv0(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return os.path.basename(fh.read().split(b"\0")[0])
    except OSError:
        return b""


async def hidden(marker: str) -> int:
    """Wait for the one process ``env -i setsid sleep MARKER`` becomes: it carries the marker
    from its first exec, so wait for the last one (sleep), after setsid() and the cleared
    environment have taken effect."""
    for _ in range(200):
        pids = [pid for pid in marked(marker) if _argv0(pid) == b"sleep"]
        if pids:
            (pid,) = pids
            return pid
        await asyncio.sleep(0.05)
    raise AssertionError("the hidden child never started")


async def escaped(marker: str, script_pid_file: Path) -> int:
    """Wait for the job's hidden child (the script wrote its own pid before starting it);
    check it really left: no environment (so no job tag), its own session."""
    pid = await hidden(marker)
    assert Path(f"/proc/{pid}/environ").read_bytes() == b""
    assert os.getsid(pid) != os.getsid(int(script_pid_file.read_text()))
    return pid


async def recorded(pids_file: Path, pid: int) -> None:
    """Wait until the subreaper's list of a job's processes (kept for crash recovery) has
    ``pid``: what a crash before that moment loses is the tag's to find, not the list's."""
    for _ in range(400):
        try:
            if any(line.split()[0] == str(pid) for line in pids_file.read_text().splitlines()):
                return
        except OSError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"{pids_file} never listed {pid}")


def hiding_script(marker: str, pidfile: Path) -> str:
    """A deploy that starts a child as sudo, systemd-run and daemonisers do — cleared
    environment, own session — and then runs until stopped."""
    return (
        f"#!/bin/sh\necho $$ > {pidfile}\nenv -i setsid sleep {marker} &\n"
        "echo ready\nwhile :; do sleep 0.1; done\n"
    )


CONTAINMENTS = pytest.mark.parametrize("containment", ["cgroup", "subreaper"])


def contained_server(tmp_path: Path, containment: str, timeout_minutes: float = 120) -> Server:
    if containment == "cgroup" and not Path("/sys/fs/cgroup").exists():
        skip_or_fail("no cgroup file system")
    config = tmp_path / "pploy.yml"
    config.write_text(
        "users: [alice]\njob:\n  shutdown_grace_seconds: 1\n  cancel_grace_seconds: [1, 1]\n"
        f"  containment: {containment}\n  timeout_minutes: {timeout_minutes}\n"
        "  on_shutdown: cancel\n"
    )
    return Server(tmp_path / "work", config)


@CONTAINMENTS
async def test_cancel_ends_a_child_that_cleared_its_environment_and_left_the_session(
    tmp_path, containment
):
    marker, pidfile = str(600_000_000 + os.getpid()), tmp_path / "script.pid"
    remote = make_remote(tmp_path, deploy_script=hiding_script(marker, pidfile))
    server = contained_server(tmp_path, containment)
    async with aiohttp.ClientSession(cookies={"user": "alice"}) as http:
        try:
            job = await server.start_deploy(http, remote)
            await escaped(marker, pidfile)
            async with http.post(server.base + f"/api/jobs/{job}/cancel") as resp:
                assert resp.status == 202
            async with http.get(server.base + f"/api/jobs/{job}/log?follow=1") as resp:
                log = await asyncio.wait_for(resp.read(), 20)
            assert b"deploy cancelled (cancelled by alice)" in log
            assert marked(marker) == [], "a process of the cancelled job survived"
        finally:
            out = server.stop(signal.SIGTERM)
            for pid in marked(marker):
                os.kill(pid, signal.SIGKILL)
    assert f"event=jobs.containment mode={containment}" in out


@CONTAINMENTS
async def test_timeout_ends_a_child_that_cleared_its_environment_and_left_the_session(
    tmp_path, containment
):
    marker, pidfile = str(610_000_000 + os.getpid()), tmp_path / "script.pid"
    remote = make_remote(tmp_path, deploy_script=hiding_script(marker, pidfile))
    server = contained_server(tmp_path, containment, timeout_minutes=0.05)  # 3 s
    async with aiohttp.ClientSession(cookies={"user": "alice"}) as http:
        try:
            job = await server.start_deploy(http, remote)
            await escaped(marker, pidfile)
            async with http.get(server.base + f"/api/jobs/{job}/log?follow=1") as resp:
                log = await asyncio.wait_for(resp.read(), 30)
            async with http.get(server.base + f"/api/jobs/{job}") as resp:
                assert (await resp.json())["job"]["status"] == "timed_out", log
            assert marked(marker) == [], "a process of the timed-out job survived"
        finally:
            server.stop(signal.SIGTERM)
            for pid in marked(marker):
                os.kill(pid, signal.SIGKILL)


@CONTAINMENTS
async def test_crash_recovery_ends_a_child_that_cleared_its_environment_and_left_the_session(
    tmp_path, containment
):
    marker, pidfile = str(620_000_000 + os.getpid()), tmp_path / "script.pid"
    remote = make_remote(tmp_path, deploy_script=hiding_script(marker, pidfile))
    server = contained_server(tmp_path, containment)
    async with aiohttp.ClientSession(cookies={"user": "alice"}) as http:
        try:
            job = await server.start_deploy(http, remote)
            hidden = await escaped(marker, pidfile)
            if containment == "subreaper":  # until the tracker (every 0.25 s) wrote it down
                await recorded(tmp_path / "work" / "run" / f"job-{job}.pids", hidden)
            server.stop(signal.SIGKILL)
            kill_runner(tmp_path / "work", job)  # the script dies with it (PDEATHSIG)
            assert alive(hidden)  # the crash left it behind...
            server = contained_server(tmp_path, containment)
            await server.ready(http)
            async with http.get(server.base + f"/api/jobs/{job}") as resp:
                assert (await resp.json())["job"]["status"] == "interrupted"
            # ...and the restart ended it, and the script, without any tag to go by.
            assert marked(marker) == [], "a process of the interrupted job survived"
            assert not alive(int(pidfile.read_text()))
        finally:
            out = server.stop(signal.SIGTERM)
            for pid in marked(marker):
                os.kill(pid, signal.SIGKILL)
    assert "event=job.orphans_killed" in out


async def test_a_second_server_on_a_workdir_is_refused_and_the_first_is_unharmed(tmp_path):
    fifo = Fifo(tmp_path / "go")
    script = f"#!/bin/sh\necho first half\n{fifo.script_open()}\n{fifo.wait_cmd}\necho second\n"
    remote = make_remote(tmp_path, deploy_script=script)
    config = write_config(tmp_path / "pploy.yml")
    workdir = tmp_path / "work"
    first = Server(workdir, config)
    async with aiohttp.ClientSession(cookies={"user": "alice"}) as http:
        try:
            job = await first.start_deploy(http, remote)
            async with http.get(first.base + f"/api/jobs/{job}/log?follow=1") as resp:
                seen = await read_until(resp, b"first half")
                second = Server(workdir, config)
                try:
                    second.proc.wait(timeout=15)  # it exits by itself
                except subprocess.TimeoutExpired:
                    second.stop(signal.SIGKILL)
                    raise AssertionError("a second server started on the same workdir") from None
                out = second.stop(None)
                assert second.proc.returncode == 1, out
                assert f"workdir {workdir} is in use by another pploy" in out
                assert f"(PID {first.proc.pid})" in out
                # The first one's deploy was not touched: it goes on and succeeds.
                await fifo.release()
                seen.extend(await asyncio.wait_for(resp.content.read(), 20))
            assert b"second\n" in seen and b"deploy succeeded" in seen
            async with http.get(first.base + f"/api/jobs/{job}") as resp:
                assert (await resp.json())["job"]["status"] == "succeeded"
            # The lock dies with its holder, even by SIGKILL: the next server starts.
            first.stop(signal.SIGKILL)
            third = Server(workdir, config)
            await third.ready(http)
            async with http.get(third.base + f"/api/jobs/{job}") as resp:
                assert (await resp.json())["job"]["status"] == "succeeded"
            third.stop(signal.SIGTERM)
        finally:
            first.stop()
            fifo.close()


async def test_pploy_up_on_the_workdir_of_a_running_server_is_refused(tmp_path):
    workdir = tmp_path / "work"
    server = Server(workdir, write_config(tmp_path / "pploy.yml"))
    async with aiohttp.ClientSession() as http:
        try:
            await server.ready(http)
            up = subprocess.run(
                [*pploy_command(), "up", "--workdir", str(workdir), "--port", str(free_port())],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            assert up.returncode != 0
            assert f"workdir {workdir} is in use by another pploy (PID {server.proc.pid})" in (
                up.stderr
            )
            async with http.get(server.base + "/ping") as resp:
                assert resp.status == 200  # the first one is unharmed
        finally:
            server.stop(signal.SIGTERM)


@CONTAINMENTS
async def test_a_daemon_a_succeeded_deploy_left_survives_the_next_jobs_cancel(
    tmp_path, containment
):
    """A deploy that succeeds may leave a daemon on purpose: it belongs to no later job, so
    cancelling the next one leaves it alone (in subreaper mode pploy adopted it)."""
    marker, pidfile = str(630_000_000 + os.getpid()), tmp_path / "script.pid"
    script = (
        f'#!/bin/sh\necho $$ > {pidfile}\nif [ "$DEPLOY_ENV" = staging ]; then\n'
        f"  env -i setsid sleep {marker} &\n  exit 0\nfi\n"
        "echo ready\nwhile :; do sleep 0.1; done\n"
    )
    remote = make_remote(tmp_path, deploy_script=script)
    server = contained_server(tmp_path, containment)
    async with aiohttp.ClientSession(cookies={"user": "alice"}) as http:
        try:
            first = await server.start_deploy(http, remote)
            async with http.get(server.base + f"/api/jobs/{first}/log?follow=1") as resp:
                assert b"deploy succeeded" in await asyncio.wait_for(resp.read(), 20)
            daemon = await hidden(marker)
            async with http.post(
                server.base + "/api/projects/testploy/deploy", json={"env": "production"}
            ) as resp:
                second = (await resp.json())["job"]["id"]
            async with http.get(server.base + f"/api/jobs/{second}/log?follow=1") as resp:
                seen = await read_until(resp, b"ready")  # (a cancel looks for the processes)
                async with http.post(server.base + f"/api/jobs/{second}/cancel") as cancel:
                    assert cancel.status == 202
                seen.extend(await asyncio.wait_for(resp.content.read(), 20))
            assert b"deploy cancelled" in seen
            assert marked(marker) == [daemon], "the first deploy's daemon was killed"
        finally:
            for pid in marked(marker):
                os.kill(pid, signal.SIGKILL)
            server.stop(signal.SIGTERM)


async def test_the_documented_demo_command_checks_out_and_deploys(tmp_path):
    """`pploy serve --demo` (README's command table), in an empty directory, no config: the
    demo project's checkout (a `git fetch` from its remote under the relative default
    workdir) and deploy both succeed."""
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PPLOY_")}
    argv = [*pploy_command(), "serve", "--demo"]
    port = 9000
    if not port_is_free(port):
        port = free_port()
        argv += ["--port", str(port)]
    server = Server(argv=argv, cwd=empty, port=port, env=env)
    base = server.base + "/api/projects/demo"
    async with aiohttp.ClientSession(cookies={"user": "alice"}) as http:
        try:
            await server.ready(http)
            for _ in range(100):  # the demo project is added as the server starts
                async with http.get(base) as resp:
                    if resp.status == 200:
                        break
                await asyncio.sleep(0.1)
            async with http.post(base + "/lock", json={"operation": "gain"}) as resp:
                assert resp.status == 200
            for path, payload, done in (
                ("/checkout", {"ref": "main"}, b"checkout succeeded"),
                ("/deploy", {"env": "test"}, b"deploy succeeded"),
            ):
                async with http.post(base + path, json=payload) as resp:
                    assert resp.status == 202, await resp.text()
                    job = (await resp.json())["job"]["id"]
                async with http.get(server.base + f"/api/jobs/{job}/log?follow=1") as resp:
                    log = await asyncio.wait_for(resp.read(), 60)
                assert done in log, log.decode(errors="replace")
        finally:
            server.stop(signal.SIGTERM)
