"""`pploy client` as a CI step runs it: a subprocess with PPLOY_URL and PPLOY_TOKEN against a
real pploy on loopback (and, for dropped connections, a real TCP relay that cuts one)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.deploy.support import Fifo, make_remote, start_pploy

COLOUR_SCRIPT = (
    "#!/bin/sh\n"
    "i=0\n"
    "while [ $i -lt 300 ]; do i=$((i+1)); printf '\\033[32mline %04d\\033[0m é\\n' $i; "
    "[ $((i % 20)) -eq 0 ] && sleep 0.02; done\n"
    'echo "deployed $DEPLOY_ENV"\n'
)


async def client(url: str, token: str, *args: str) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PPLOY_")}
    env.update(PPLOY_URL=url, PPLOY_TOKEN=token)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pploy", "client", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def run_client(url: str, token: str, *args: str) -> tuple[int, bytes, str]:
    proc = await client(url, token, *args)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out, err.decode()


async def token_for(pploy, user: str = "alice", name: str = "ci") -> str:  # type: ignore[no-untyped-def]
    status, body = await pploy.api("POST", "/api/tokens", user, {"name": name})
    assert status == 201, body
    return str(body["token"])


class CuttingRelay:
    """A TCP relay in front of pploy that cuts the first log-following response after
    ``cut_after`` bytes (an abortive close, as a dying proxy or network would)."""

    def __init__(self, target_port: int, cut_after: int) -> None:
        self.target_port = target_port
        self.cut_after = cut_after
        self.cuts = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        head = await reader.readuntil(b"\r\n\r\n")
        cut = b"/log?follow=1" in head.split(b"\r\n", 1)[0] and self.cuts == 0
        if cut:
            self.cuts += 1
        up_writer.write(head)

        async def to_upstream() -> None:
            while data := await reader.read(65536):
                up_writer.write(data)

        forward = asyncio.create_task(to_upstream())
        sent = 0
        try:
            while data := await up_reader.read(65536):
                if cut and sent + len(data) > self.cut_after:
                    writer.write(data[: self.cut_after - sent])
                    await writer.drain()
                    writer.transport.abort()
                    return
                writer.write(data)
                await writer.drain()
                sent += len(data)
        finally:
            forward.cancel()
            up_writer.close()
            if not writer.transport.is_closing():
                writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.mark.slow  # `pploy client` processes
async def test_deploy_follows_the_log_raw_and_exits_with_the_jobs_result(tmp_path: Path) -> None:
    pploy = await start_pploy(tmp_path / "work")
    try:
        token = await token_for(pploy)
        remote = make_remote(tmp_path, deploy_script=COLOUR_SCRIPT)
        code, out, err = await run_client(pploy.base, token, "add", str(remote))
        assert code == 0 and out == b"added testploy\n", err
        code, out, err = await run_client(pploy.base, token, "lock", "testploy", "gain")
        assert code == 0 and b"locked by alice" in out, err
        code, out, err = await run_client(pploy.base, token, "checkout", "testploy", "main")
        assert code == 0 and b"git checkout" in out, err
        code, out, err = await run_client(pploy.base, token, "deploy", "testploy", "staging")
        assert code == 0, err
        job = pploy.services.store.list_jobs("testploy", 1)[0]
        assert (job.kind, job.user, job.token, job.status) == ("deploy", "alice", "ci", "succeeded")
        log = await pploy.log(job.id)
        assert out == log  # byte for byte: colour escapes and UTF-8 intact
        assert b"\x1b[32mline 0300\x1b[0m \xc3\xa9\n" in out
        assert f"job #{job.id} succeeded" in err
        code, out, err = await run_client(pploy.base, token, "status")
        assert code == 0 and b"signed in as alice" in out and b"testploy: locked by alice" in out
        # A refusal is exit 3 with pploy's reason; bob cannot use alice's lock.
        bob = await token_for(pploy, "bob", "bob-ci")
        code, out, err = await run_client(pploy.base, bob, "deploy", "testploy", "staging")
        assert code == 3 and "HTTP 403" in err and "alice" in err, err
        # A garbage token is refused the same way, never a login page.
        code, out, err = await run_client(pploy.base, "pploy_garbage", "status")
        assert code == 3 and "HTTP 401" in err and "unknown API token" in err, err
    finally:
        await pploy.close()


async def test_a_failing_deploy_gives_a_non_zero_exit(tmp_path: Path) -> None:
    pploy = await start_pploy(tmp_path / "work")
    try:
        token = await token_for(pploy)
        name = await pploy.add_project(
            make_remote(tmp_path, deploy_script="#!/bin/sh\necho about to fail\nexit 3\n")
        )
        await pploy.gain(name)
        code, out, err = await run_client(pploy.base, token, "deploy", name, "staging")
        assert code == 1, err
        assert out.endswith(b"about to fail\r\n") or b"about to fail" in out
        assert "failed (exit 3)" in err
    finally:
        await pploy.close()


@pytest.mark.slow  # `pploy client` through a relay
async def test_a_dropped_connection_resumes_with_no_byte_lost_or_doubled(tmp_path: Path) -> None:
    pploy = await start_pploy(tmp_path / "work")
    relay = CuttingRelay(pploy.server.port, cut_after=2500)  # type: ignore[arg-type]
    try:
        token = await token_for(pploy)
        name = await pploy.add_project(make_remote(tmp_path, deploy_script=COLOUR_SCRIPT))
        await pploy.gain(name)
        url = await relay.start()
        code, out, err = await run_client(url, token, "deploy", name, "production")
        assert code == 0, err
        assert relay.cuts == 1 and "connection lost at byte" in err and "resuming" in err
        job = pploy.services.store.list_jobs(name, 1)[0]
        log = await pploy.log(job.id)
        assert len(log) > 2500 * 2
        assert out == log  # nothing lost, nothing printed twice
    finally:
        await relay.close()
        await pploy.close()


async def test_ctrl_c_cancels_the_job_when_asked(tmp_path: Path) -> None:
    fifo = Fifo(tmp_path / "go")
    script = f"#!/bin/sh\necho waiting\n{fifo.script_open()}\n{fifo.wait_cmd}\necho never\n"
    pploy = await start_pploy(tmp_path / "work")
    try:
        token = await token_for(pploy)
        name = await pploy.add_project(make_remote(tmp_path, deploy_script=script))
        await pploy.gain(name)
        proc = await client(pploy.base, token, "deploy", name, "staging", "--cancel-on-interrupt")
        assert proc.stdout is not None
        seen = b""
        while b"waiting" not in seen:  # the script runs: its first line came through
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line, seen
            seen += line
        proc.send_signal(signal.SIGINT)
        rest, err = await asyncio.wait_for(proc.communicate(), 60)
        out = seen + rest
        assert proc.returncode == 1, err
        job = pploy.services.store.list_jobs(name, 1)[0]
        assert job.status == "cancelled" and job.cancelled_by == "alice"
        assert b"never" not in out and b"cancelled by alice" in out
        assert f"job #{job.id} cancelled" in err.decode()
    finally:
        fifo.close()
        await pploy.close()


@pytest.mark.slow  # a `pploy client` process per usage error
async def test_usage_errors_exit_2_not_a_failed_jobs_1(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PPLOY_")}
    for extra, message in (
        ({}, "set PPLOY_TOKEN"),
        ({"PPLOY_TOKEN": "  "}, "set PPLOY_TOKEN"),
        ({"PPLOY_TOKEN": "pploy_x", "PPLOY_URL": "ftp://example.com"}, "http:// or https://"),
    ):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pploy", "client", "status", env={**env, **extra},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 2, (extra, err)
        assert err.decode().startswith("pploy client: ") and message in err.decode(), err
        assert out == b""


async def test_ctrl_c_cancels_when_started_as_a_scripts_background_job(tmp_path: Path) -> None:
    """`sh -c 'pploy client … &'` starts the client with SIGINT ignored (POSIX, for a
    background job of a non-interactive shell); SIGINT must still cancel the job."""
    fifo = Fifo(tmp_path / "go")
    script = f"#!/bin/sh\necho waiting\n{fifo.script_open()}\n{fifo.wait_cmd}\necho never\n"
    pploy = await start_pploy(tmp_path / "work")
    pidfile = tmp_path / "client.pid"
    try:
        token = await token_for(pploy)
        name = await pploy.add_project(make_remote(tmp_path, deploy_script=script))
        await pploy.gain(name)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PPLOY_")}
        env.update(PPLOY_URL=pploy.base, PPLOY_TOKEN=token)
        line = (
            f"'{sys.executable}' -m pploy client deploy {name} staging --cancel-on-interrupt & "
            f"echo $! > '{pidfile}'; wait $!"
        )
        shell = await asyncio.create_subprocess_exec(
            "sh", "-c", line, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert shell.stdout is not None
        seen = b""
        while b"waiting" not in seen:  # the deploy runs and the client follows it
            chunk = await asyncio.wait_for(shell.stdout.readline(), 30)
            assert chunk, seen
            seen += chunk
        # The shell wrote the pid right after starting the client, long before its output.
        pid = int(pidfile.read_text())
        os.kill(pid, signal.SIGINT)
        rest, err = await asyncio.wait_for(shell.communicate(), 60)
        assert shell.returncode == 1, err  # the job's result: cancelled
        job = pploy.services.store.list_jobs(name, 1)[0]
        assert job.status == "cancelled" and job.cancelled_by == "alice"
        assert b"never" not in seen + rest
        assert f"job #{job.id} cancelled" in err.decode()
    finally:
        if pidfile.exists():  # a client that ignored the signal must not outlive the test
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
        fifo.close()
        await pploy.close()
