"""Jobs outlive ``pploy serve`` (issue 23): each runs under a runner process of its own.

Real processes throughout: ``pploy serve`` as a subprocess on SQLite with default settings, a
real git remote, a deploy script that appends a ledger (``START/TICK/END <PPLOY_JOB_ID>
<time>``) — the ground truth of what ran, whatever pploy records — and waits on a fifo for
each step, so the test decides when the script moves on.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import pytest

from tests.deploy.support import Fifo, make_remote
from tests.deploy.test_server_process import Server, kill_runner, marked
from tests.helpers import free_port, skip_or_fail

pytestmark = pytest.mark.slow


def ledger_script(ledger: Path, fifo: Fifo, ticks: int, marker: str = "") -> str:
    """Writes START, then a line and a TICK per go from the fifo, then END, and exits 0.
    With ``marker``, it first starts a child that left its process group (``setsid``)."""
    child = f"setsid sleep {marker} &\n" if marker else ""
    return (
        "#!/bin/sh\n"
        f'L="{ledger}"\n'
        'echo "START $PPLOY_JOB_ID $(date +%s.%N)" >> "$L"\n'
        f"{child}echo line one\n{fifo.script_open()}\n"
        f"i=0\nwhile [ $i -lt {ticks} ]; do\n  {fifo.wait_cmd}\n"
        '  echo "tick $i"\n  echo "TICK $PPLOY_JOB_ID $(date +%s.%N)" >> "$L"\n'
        "  i=$((i + 1))\ndone\n"
        'echo "END $PPLOY_JOB_ID $(date +%s.%N)" >> "$L"\n'
    )


def entries(ledger: Path, kind: str) -> list[str]:
    try:
        return [line for line in ledger.read_text().splitlines() if line.startswith(kind)]
    except FileNotFoundError:
        return []


async def until(check, timeout: float = 20, what: str = "") -> None:  # noqa: ANN001
    """Wait for ``check()`` to hold: for what another process does (a file it writes)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.02)


def stop_within(server: Server, sig: int, seconds: float) -> float:
    """Signal ``pploy serve`` and wait for its exit; returns how long it took."""
    began = time.monotonic()
    server.proc.send_signal(sig)
    server.proc.wait(timeout=seconds)
    return time.monotonic() - began


async def deploy_with_a_hidden_child(
    http: aiohttp.ClientSession, server: Server, tmp_path: Path, fifo: Fifo, marker: str
) -> int:
    """Start a deploy whose script (ledger ``tmp_path/ledger``) started a ``setsid`` child
    carrying ``marker``; returns the job once both run."""
    ledger = tmp_path / "ledger"
    remote = make_remote(tmp_path, deploy_script=ledger_script(ledger, fifo, 1, marker))
    job = await server.start_deploy(http, remote)
    await until(lambda: entries(ledger, "START") and marked(marker), what="the start")
    return job


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_a_deploy_outlives_pploy_and_the_restarted_pploy_takes_it_up(tmp_path, sig):
    fifo, ledger = Fifo(tmp_path / "go"), tmp_path / "ledger"
    remote = make_remote(tmp_path, deploy_script=ledger_script(ledger, fifo, ticks=3))
    config = tmp_path / "pploy.yml"
    config.write_text("users: [alice, bob]\n")  # default settings
    workdir = tmp_path / "work"
    server = Server(workdir, config)
    try:
        async with aiohttp.ClientSession(cookies={"user": "alice"}) as http:
            job = await server.start_deploy(http, remote)
            seen = bytearray()
            async with http.get(server.base + f"/api/jobs/{job}/log?follow=1") as resp:
                while b"line one\n" not in seen:
                    seen += await asyncio.wait_for(resp.content.readany(), 20)
                took = stop_within(server, sig, 10)
            assert took < 10
            out = server.stop(None)
            # pploy is gone; the deploy goes on.
            await fifo.release()
            await until(lambda: len(entries(ledger, "TICK")) == 1, what="a TICK while down")
            server = Server(workdir, config)
            await server.ready(http)
            async with http.get(server.base + f"/api/jobs/{job}") as resp:
                assert (await resp.json())["job"]["status"] == "running"
            # A raw viewer resumes where it was: every byte once, the rest live.
            url = server.base + f"/api/jobs/{job}/log?follow=1&offset={len(seen)}"
            async with http.get(url) as resp:
                while b"tick 0\n" not in seen:
                    seen += await asyncio.wait_for(resp.content.readany(), 20)
                for tick in (1, 2):
                    await fifo.release()
                    while f"tick {tick}\n".encode() not in seen:
                        seen += await asyncio.wait_for(resp.content.readany(), 20)
                seen += await asyncio.wait_for(resp.read(), 20)
            async with http.get(server.base + f"/api/jobs/{job}") as resp:
                record = (await resp.json())["job"]
            async with http.get(server.base + f"/api/jobs/{job}/log") as resp:
                stored = await resp.read()
        assert bytes(seen) == stored
        for line in (b"line one\n", b"tick 0\n", b"tick 1\n", b"tick 2\n"):
            assert stored.count(line) == 1
        assert (record["status"], record["exit_code"]) == ("succeeded", 0), record
        assert len(entries(ledger, "START")) == len(entries(ledger, "END")) == 1
    finally:
        fifo.close()
        out = server.stop(signal.SIGTERM)
    assert "event=job.reattached" in out


async def test_a_job_started_before_a_restart_is_cancelled_through_the_new_pploy(tmp_path):
    marker = str(630_000_000 + os.getpid())
    fifo, ledger, workdir = Fifo(tmp_path / "go"), tmp_path / "ledger", tmp_path / "work"
    config = tmp_path / "pploy.yml"
    config.write_text("users: [alice, bob]\njob:\n  cancel_grace_seconds: [1, 1]\n")
    server = Server(workdir, config)
    try:
        async with aiohttp.ClientSession(cookies={"user": "alice"}) as http:
            job = await deploy_with_a_hidden_child(http, server, tmp_path, fifo, marker)
            stop_within(server, signal.SIGKILL, 10)
            server.stop(None)
            server = Server(workdir, config)
            await server.ready(http)
            async with http.post(server.base + f"/api/jobs/{job}/cancel", json={}) as resp:
                assert resp.status == 202
            cancelled = time.monotonic()
            async with http.get(server.base + f"/api/jobs/{job}/log?follow=1") as resp:
                log = await asyncio.wait_for(resp.read(), 20)
            async with http.get(server.base + f"/api/jobs/{job}") as resp:
                record = (await resp.json())["job"]
        assert (record["status"], record["cancelled_by"]) == ("cancelled", "alice"), record
        assert b"cancelled by alice" in log
        await until(lambda: not marked(marker), 1, "the whole tree gone")
        assert time.monotonic() - cancelled < 10
        assert entries(ledger, "END") == []
    finally:
        fifo.close()
        server.stop(signal.SIGTERM)
        for pid in marked(marker):
            os.kill(pid, signal.SIGKILL)


async def test_a_killed_runner_ends_its_job_s_tree_and_the_job_is_interrupted(tmp_path):
    marker = str(640_000_000 + os.getpid())
    fifo, workdir = Fifo(tmp_path / "go"), tmp_path / "work"
    config = tmp_path / "pploy.yml"
    config.write_text("users: [alice, bob]\n")
    server = Server(workdir, config)
    try:
        async with aiohttp.ClientSession(cookies={"user": "alice"}) as http:
            job = await deploy_with_a_hidden_child(http, server, tmp_path, fifo, marker)
            kill_runner(workdir, job)
            async with http.get(server.base + f"/api/jobs/{job}/log?follow=1") as resp:
                log = await asyncio.wait_for(resp.read(), 20)
            async with http.get(server.base + f"/api/jobs/{job}") as resp:
                record = (await resp.json())["job"]
            assert record["status"] == "interrupted", record
            assert "runner died" in record["message"]
            assert b"line one\n" in log and b"interrupted" in log
            await until(lambda: not marked(marker), 5, "the whole tree gone")
            # The project is free again.
            async with http.post(
                server.base + "/api/projects/testploy/checkout", json={"ref": "main"}
            ) as resp:
                assert resp.status == 202
    finally:
        fifo.close()
        out = server.stop(signal.SIGTERM)
        for pid in marked(marker):
            os.kill(pid, signal.SIGKILL)
    assert "event=job.interrupted" in out


ATTACK = """
import json, socket, struct, sys
run = sys.argv[1]
try:
    open(run + "/job-1.json").read()
    print("read the spec")
except OSError as exc:
    print("spec refused", exc.errno)
payload = json.dumps({"user": "mallory"}).encode()
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(run + "/job-1.sock")
except OSError as exc:
    print("socket refused", exc.errno)
    sys.exit(0)
s.sendall(b"O" + struct.pack(">I", 1) + b"0" + b"C" + struct.pack(">I", len(payload)) + payload)
print("connected")
"""


async def test_another_local_user_can_neither_cancel_through_a_runner_s_socket_nor_read_its_spec(
    tmp_path,
):
    """The runner's socket takes a cancel from whoever connects, and its spec names the
    database: both live in ``<workdir>/run`` (0700, the socket 0600, the spec 0600). A local
    user ``nobody``, with every directory above the workdir open to it, tries both."""
    python = shutil.which("python3", path="/usr/bin:/bin")  # one that nobody may run
    if os.geteuid() != 0 or python is None or shutil.which("runuser") is None:
        skip_or_fail("needs root, runuser and /usr/bin/python3 to act as another user")
    base = Path(tempfile.mkdtemp(prefix="pploy-runner-"))
    base.chmod(0o755)
    try:
        fifo, ledger = Fifo(base / "go"), base / "ledger"
        remote = make_remote(tmp_path, deploy_script=ledger_script(ledger, fifo, ticks=1))
        config = base / "pploy.yml"
        config.write_text("users: [alice, bob]\njob:\n  on_shutdown: cancel\n")
        workdir = base / "work"
        server = Server(workdir, config)
        try:
            async with aiohttp.ClientSession(cookies={"user": "alice"}) as http:
                job = await server.start_deploy(http, remote)
                assert job == 1
                await until(lambda: entries(ledger, "START"), what="the start")
                await until(lambda: (workdir / "run" / "job-1.sock").exists(), what="the socket")
                attack = subprocess.run(
                    ["runuser", "-u", "nobody", "--", python, "-c", ATTACK, str(workdir / "run")],
                    capture_output=True, text=True, timeout=30,
                )  # fmt: skip
                assert "spec refused 13" in attack.stdout, attack
                assert "socket refused 13" in attack.stdout, attack
                await fifo.release()
                record = await wait_job(http, server, job)
            assert (record["status"], record["cancelled_by"]) == ("succeeded", None), record
        finally:
            fifo.close()
            server.stop(signal.SIGTERM)
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def wait_job(http: aiohttp.ClientSession, server: Server, job: int) -> dict:
    async with http.get(server.base + f"/api/jobs/{job}/log?follow=1") as resp:
        await asyncio.wait_for(resp.read(), 30)
    async with http.get(server.base + f"/api/jobs/{job}") as resp:
        return (await resp.json())["job"]


def ignores(pid: int, sig: int) -> bool:
    """True when process ``pid`` ignores ``sig`` (its SigIgn mask in /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return bool(int(status.split("SigIgn:")[1].split()[0], 16) & (1 << (sig - 1)))


@pytest.mark.parametrize("loop", ["asyncio", "auto"])
async def test_a_pploy_started_with_sigint_ignored_still_cancels_with_sigint(tmp_path, loop):
    """Started in the background (``cmd &`` in a script: SIGINT ignored), pploy's runners and
    their scripts would inherit the ignored SIGINT across exec, and cancel's first signal would
    do nothing. The script gets SIGINT back at its default action: it dies of the SIGINT, long
    before the SIGTERM a 30 s grace would send. On both event loops (uvloop's spawn resets
    signals itself; asyncio's keeps what the parent ignores)."""
    ledger, workdir = tmp_path / "ledger", tmp_path / "work"
    script = (
        f'#!/bin/sh\necho "START $PPLOY_JOB_ID" >> "{ledger}"\n'
        f"grep SigIgn /proc/$$/status\necho line one\nexec sleep 600\n"
    )
    remote = make_remote(tmp_path, deploy_script=script)
    config = tmp_path / "pploy.yml"
    config.write_text("users: [alice, bob]\njob:\n  cancel_grace_seconds: [30, 30]\n")
    port = free_port()
    serve = (f"exec {sys.executable} -m pploy serve --config {config} --workdir {workdir} "
             f"--port {port}")  # fmt: skip
    env = os.environ | {"PPLOY_EVENT_LOOP": loop}
    server = Server(argv=["sh", "-c", f"trap '' INT; {serve}"], port=port, env=env)
    try:
        async with aiohttp.ClientSession(cookies={"user": "alice"}) as http:
            job = await server.start_deploy(http, remote)
            async with http.get(server.base + f"/api/jobs/{job}/log?follow=1") as resp:
                seen = bytearray()
                while b"line one\n" not in seen:
                    seen += await asyncio.wait_for(resp.content.readany(), 20)
                # The script's parent, its runner, does ignore SIGINT (a terminal's ^C is not
                # the job's): what the script must not inherit.
                runner = int((workdir / "run" / f"job-{job}.lock").read_text().split()[0])
                assert ignores(runner, signal.SIGINT)
                async with http.post(server.base + f"/api/jobs/{job}/cancel", json={}) as sent:
                    assert sent.status == 202
                cancelled = time.monotonic()
                seen += await asyncio.wait_for(resp.read(), 20)
            async with http.get(server.base + f"/api/jobs/{job}") as resp:
                record = (await resp.json())["job"]
        assert time.monotonic() - cancelled < 10  # not the SIGTERM 30 s later
        assert (record["status"], record["signal"]) == ("cancelled", signal.SIGINT), record
        script_ignores = int(seen.split(b"SigIgn:")[1].split()[0], 16)
        assert not script_ignores & (1 << (signal.SIGINT - 1)), seen
        assert not script_ignores & (1 << (signal.SIGTERM - 1)), seen
        assert entries(ledger, "START")
    finally:
        server.stop(signal.SIGTERM)
